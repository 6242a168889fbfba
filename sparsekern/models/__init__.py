"""The paper's models in plain torch.nn, by name::

    from sparsekern import models
    model = models.create("resnet18", num_classes=100)          # CIFAR-100
    model = models.create("vgg16", num_classes=200, input_size=64)  # TinyImageNet
    models.available()  # ['mobilenetv2', 'resnet104', 'resnet18', ...]

All are built for small images (CIFAR stems, see each module); their blocks host ghost-skip sites
(ghost_sites.GhostSites), empty by default. ``input_size`` is the side of the square input; only VGG16 needs
it (which max-pools to keep), the others are fully convolutional up to a global average pool and take it for a
uniform interface and its check.
"""
from __future__ import annotations

import operator
from collections.abc import Callable

from torch import nn

from .ghost_sites import GhostSite, GhostSites
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet_6n2 import ResNet6n2, resnet20, resnet32, resnet56, resnet104
from .resnet_cifar import ResNet, resnet18, resnet34, resnet50
from .vgg import VGG, vgg16

# name → builder(num_classes, input_size, in_channels)
_REGISTRY: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet18": lambda classes, size, channels: resnet18(classes, channels),
    "resnet34": lambda classes, size, channels: resnet34(classes, channels),
    "resnet50": lambda classes, size, channels: resnet50(classes, channels),
    "resnet20": lambda classes, size, channels: resnet20(classes, channels),
    "resnet32": lambda classes, size, channels: resnet32(classes, channels),
    "resnet56": lambda classes, size, channels: resnet56(classes, channels),
    "resnet104": lambda classes, size, channels: resnet104(classes, channels),
    "vgg16": lambda classes, size, channels: vgg16(classes, size, channels),
    "mobilenetv2": lambda classes, size, channels: mobilenetv2(classes, channels),
}


def available() -> list[str]:
    """The names ``create`` accepts, sorted."""
    return sorted(_REGISTRY)


def _positive_int(name: str, value) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})") from None
    if number < 1:
        raise ValueError(f"{name}: expected a positive int, got {number}")
    return number


def create(name: str, num_classes: int = 10, input_size: int = 32, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model (draws from torch's global RNG, so seed it for reproducibility).

    Args:
        name: one of ``available()``.
        num_classes: outputs of the classifier.
        input_size: side of the square input images (32 for CIFAR, 64 for TinyImageNet, 8 or 16 for digits).
        in_channels: channels of the input images (3 for RGB, 1 for greyscale).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; available: {', '.join(available())}")
    num_classes = _positive_int("num_classes", num_classes)
    input_size = _positive_int("input_size", input_size)
    in_channels = _positive_int("in_channels", in_channels)
    return _REGISTRY[name](num_classes, input_size, in_channels)


__all__ = ["create", "available", "GhostSites", "GhostSite", "ResNet", "ResNet6n2", "VGG", "MobileNetV2",
           "resnet18", "resnet34", "resnet50", "resnet20", "resnet32", "resnet56", "resnet104", "vgg16",
           "mobilenetv2"]
