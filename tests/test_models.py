"""sparsekern.models: the registry, output shapes and final map sizes, exact parameter counts, the ghost-skip
sites (declared for every 3×3 conv + BN of a block, wired to that conv's input and its BN's output, inert when
empty or at α = 0), activations as separate modules, VGG16's pools for small inputs, and initialisation.

Models run in eval mode with batch 2, mostly at 8×8, so the file stays fast on a small CPU; the architectures
are fully convolutional, so the ghost and activation checks do not depend on the input size.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from sparsekern import models
from sparsekern.models import GhostSites

NAMES = ["resnet18", "resnet34", "resnet50", "resnet20", "resnet32", "resnet56", "resnet104", "vgg16", "mobilenetv2"]

# Parameters for 10 classes. ResNet-18 11.17M, ResNet-32 0.46M (option A shortcuts), VGG16 14.73M and
# MobileNetV2 2.24M are the published counts; ResNet-34 21.28M, ResNet-50 23.52M, ResNet-20 0.27M and
# ResNet-56 0.85M agree with the literature too; ResNet-104 is as measured.
PARAMETERS = {"resnet18": 11_173_962, "resnet34": 21_282_122, "resnet50": 23_520_842, "resnet20": 269_722,
              "resnet32": 464_154, "resnet56": 853_018, "resnet104": 1_630_746, "vgg16": 14_728_266,
              "mobilenetv2": 2_236_682}

# Ghost sites: 2 per BasicBlock, 1 per Bottleneck / inverted residual, 1 per VGG conv.
SITES = {"resnet18": 16, "resnet34": 32, "resnet50": 16, "resnet20": 18, "resnet32": 30, "resnet56": 54,
         "resnet104": 102, "vgg16": 13, "mobilenetv2": 17}

# Side of the map the global pool sees, as a function of the input side.
FINAL_MAP = {"resnet18": lambda s: s // 8, "resnet34": lambda s: s // 8, "resnet50": lambda s: s // 8,
             "resnet20": lambda s: s // 4, "resnet32": lambda s: s // 4, "resnet56": lambda s: s // 4,
             "resnet104": lambda s: s // 4, "vgg16": lambda s: max(s // 32, 1), "mobilenetv2": lambda s: s // 8}

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 forwards of small maps gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' synchronisation made them up to 100× slower (measured); the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ghost_blocks(model: nn.Module) -> list[GhostSites]:
    return [m for m in model.modules() if isinstance(m, GhostSites)]


def site_convs(block: GhostSites) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(site, conv, bn) for the block's 3×3 convs in order, each with the child registered right after it."""
    children = list(block.children())
    convs = [i for i, m in enumerate(children) if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    sites = list(block.ghost_sites)
    assert len(sites) == len(convs), f"{type(block).__name__}: {len(convs)} 3×3 convs but sites {sites}"
    return [(site, children[i], children[i + 1]) for site, i in zip(sites, convs)]


def attach_branches(model: nn.Module, alpha: float = 1.0) -> None:
    """The recipe's branch at every site: a dense 1×1 conv + BN from the conv's input."""
    for block in ghost_blocks(model):
        for name, site in block.ghost_sites.items():
            setattr(block, name, nn.Sequential(
                nn.Conv2d(site.in_channels, site.out_channels, 1, stride=site.stride, bias=False),
                nn.BatchNorm2d(site.out_channels)))
        block.ghost_alpha = alpha


def small_model(name: str, in_channels: int = 3) -> nn.Module:
    return models.create(name, input_size=8, in_channels=in_channels).eval()


# ------------------------------------------------------------------------------------------------ registry

def test_available_lists_the_models():
    assert models.available() == sorted(NAMES)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="resnet7") as info:
        models.create("resnet7")
    assert all(name in str(info.value) for name in NAMES)
    with pytest.raises(ValueError, match="name"):
        models.create(["resnet18"])


@pytest.mark.parametrize("argument, value", [("num_classes", 0), ("num_classes", 2.5), ("num_classes", True),
                                             ("input_size", 0), ("input_size", "32"), ("in_channels", -1),
                                             ("in_channels", None)])
def test_bad_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=argument):
        models.create("resnet20", **{argument: value})


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "mobilenetv2"])
def test_creation_is_deterministic_under_the_seed(name):
    torch.manual_seed(0)
    first = models.create(name).state_dict()
    torch.manual_seed(0)
    second = models.create(name).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


# ------------------------------------------------------------------------------------------ shapes, counts

SHAPE_CASES = [(name, 32, 3, 10) for name in NAMES] + [
    ("resnet18", 64, 3, 200), ("vgg16", 64, 3, 200),  # TinyImageNet
    ("resnet20", 8, 1, 10), ("vgg16", 8, 1, 10), ("vgg16", 16, 1, 10),  # the embedded digits
]


@pytest.mark.parametrize("name, size, channels, classes", SHAPE_CASES)
def test_output_shape_and_final_map(name, size, channels, classes):
    model = models.create(name, num_classes=classes, input_size=size, in_channels=channels).eval()
    seen = []
    model.avgpool.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[2:])))
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    side = FINAL_MAP[name](size)
    assert seen == [(side, side)]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_and_classifier(name):
    """The exact count for 10 classes; for 100 classes only the classifier (the last Linear) changes."""
    ten, hundred = models.create(name, num_classes=10), models.create(name, num_classes=100)
    assert sum(p.numel() for p in ten.parameters()) == PARAMETERS[name]
    head = [n for n, m in ten.named_modules() if isinstance(m, nn.Linear)]
    assert len(head) == 1 and list(ten.modules())[-1] is ten.get_submodule(head[0])
    features = ten.get_submodule(head[0]).in_features
    assert sum(p.numel() for p in hundred.parameters()) == PARAMETERS[name] + 90 * (features + 1)
    a, b = ten.state_dict(), hundred.state_dict()
    assert list(a) == list(b)
    changed = {key for key in a if a[key].shape != b[key].shape}
    assert changed == {f"{head[0]}.weight", f"{head[0]}.bias"}


# ------------------------------------------------------------------------------------------- ghost sites

@pytest.mark.parametrize("name", NAMES)
def test_every_3x3_conv_bn_of_a_block_is_a_ghost_site(name):
    model = models.create(name)
    blocks = ghost_blocks(model)
    assert sum(len(block.ghost_sites) for block in blocks) == SITES[name]
    for block in blocks:
        for site_name, conv, bn in site_convs(block):
            site = block.ghost_sites[site_name]
            assert (site.in_channels, site.out_channels, site.stride) == (conv.in_channels, conv.out_channels,
                                                                           conv.stride[0])
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
            assert getattr(block, site_name) is None
    # Outside the blocks only the stem of the ResNets and MobileNetV2 is a 3×3 conv.
    all_3x3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert all_3x3 == SITES[name] + (0 if name == "vgg16" else 1)
    assert not [key for key in model.state_dict() if "ghost" in key]


@pytest.mark.parametrize("name", NAMES)
def test_add_ghost_gets_the_conv_input_and_the_bn_output(name):
    model = small_model(name)
    captured, calls = {}, []
    for block in ghost_blocks(model):
        for site, conv, bn in site_convs(block):
            conv.register_forward_hook(lambda m, args, out, key=(block, site): captured.__setitem__(
                (key, "x"), args[0]))
            bn.register_forward_hook(lambda m, args, out, key=(block, site): captured.__setitem__((key, "out"), out))

        def record(site, x, out, block=block, original=block.add_ghost):
            calls.append(((block, site), x, out))
            return original(site, x, out)
        block.add_ghost = record  # an instance attribute shadows the method
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert len(calls) == SITES[name]  # each site once per forward
    for key, x, out in calls:
        assert x is captured[key, "x"] and out is captured[key, "out"]


@pytest.mark.parametrize("name", NAMES)
def test_attached_branches_change_the_output_and_detach_cleanly(name):
    model = small_model(name)
    x = torch.randn(2, 3, 8, 8)
    keys = list(model.state_dict())
    with torch.no_grad():
        reference = model(x)
        attach_branches(model, alpha=1.0)
        with_ghosts = model(x)
        assert with_ghosts.shape == reference.shape and not torch.allclose(with_ghosts, reference)
        assert any("ghost" in key for key in model.state_dict())
        for block in ghost_blocks(model):
            block.ghost_alpha = 0.0
        assert torch.equal(model(x), reference)
        for block in ghost_blocks(model):
            block.ghost_alpha = 1.0
            for site in block.ghost_sites:
                setattr(block, site, None)
        assert torch.equal(model(x), reference)
    assert list(model.state_dict()) == keys


def test_ghost_branches_are_trained():
    model = models.create("resnet20", input_size=8)
    attach_branches(model, alpha=0.5)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    for block in ghost_blocks(model):
        for site in block.ghost_sites:
            grad = getattr(block, site)[0].weight.grad
            assert grad is not None and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", NAMES)
def test_each_activation_module_runs_once(name):
    model = small_model(name)
    counts = collections.Counter()
    activations = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    for module in activations:
        module.register_forward_hook(lambda m, args, out: counts.update([id(m)]))
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert activations and all(counts[id(m)] == 1 for m in activations)


@pytest.mark.parametrize("name", NAMES)
def test_all_nonlinearities_are_modules(name):
    """With every ReLU/ReLU6 module swapped for Identity the eval-mode model is affine, so no functional relu
    is left in a forward: f(x) + f(-x) = 2 f(0). VGG16 at 1×1 keeps no max-pool (which is not affine)."""
    size = 1 if name == "vgg16" else 8
    model = models.create(name, input_size=size).eval().double()
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, ACTIVATIONS):
                setattr(parent, child_name, nn.Identity())
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        plus, minus, zero = model(x), model(-x), model(torch.zeros_like(x))
    scale = max(plus.abs().max().item(), zero.abs().max().item())
    torch.testing.assert_close(plus + minus, 2 * zero, rtol=0, atol=1e-10 * scale)


# ------------------------------------------------------------------------------------------ VGG, init

@pytest.mark.parametrize("size, pools", [(8, 3), (16, 4), (32, 5), (64, 5)])
def test_vgg16_skips_only_the_pools_a_small_input_cannot_take(size, pools):
    model = models.create("vgg16", input_size=size)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == pools
    reference = models.create("vgg16").state_dict()
    state = model.state_dict()
    assert list(state) == list(reference) and all(state[k].shape == reference[k].shape for k in state)


def test_initialisation():
    """Kaiming normal (fan_out) convs, BN weight 1 and bias 0."""
    model = models.create("resnet18")
    conv = model.layer4[1].conv2  # 512·3·3 fan_out, 2.4M draws: the std is within 1 % of sqrt(2 / fan_out)
    assert abs(conv.weight.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.01
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
