"""``load_dataset``: one entry point from a dataset's name to its ``ImageData``."""
from __future__ import annotations

from .cifar import load_cifar
from .digits import load_digits
from .errors import check_root
from .splits import ImageData
from .tinyimagenet import load_tinyimagenet

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")


def load_dataset(name: str, root=None, *, image_size=None, download: bool = False, val_size=None) -> ImageData:
    """Load ``name`` (one of ``DATASETS``) into memory.

    ``root``: the folder holding the data (not needed for the embedded ``digits``). ``image_size``: digits
    only, upscales to ``image_size`` x ``image_size`` (None = native 8); the others accept None or their
    native size. ``download``: fetch CIFAR's archive into ``root`` if absent (never otherwise). ``val_size``:
    images held out of train for validation (None = the dataset's default; digits has a fixed split).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {', '.join(DATASETS)}; got {type(name).__name__}")
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {', '.join(DATASETS)}, got {name!r}")
    root = check_root(root)
    if name == "digits":
        return load_digits(image_size=image_size, val_size=val_size)  # ships with scikit-learn: root unused
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, image_size=image_size, download=download, val_size=val_size)
    return load_tinyimagenet(root, image_size=image_size, download=download, val_size=val_size)
