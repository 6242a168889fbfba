"""The Conv2d candidates (dense nn.Conv2d, sparsekern.SparseConv2d, SparseProp's SparseConv2d), the conv shapes
of CIFAR ResNet-18, VGG16 and MobileNetV2, and their float64 check.

Every candidate is timed as a training step uses a layer (the machinery is ``common.py``'s, shared with the
linear suite): ``x`` is ``(B, C_in, H, W)`` contiguous with ``requires_grad=True``, ``y = layer(x)`` with
autograd on, then ``y.backward(grad)`` with one fixed contiguous ``(B, C_out, OH, OW)`` gradient; gradients
are reset to ``None`` (untimed) before each step.

Before timing, each candidate's ``y``, ``dx``, ``dW`` (at the kept positions) and ``db`` are compared with
``F.conv2d`` in float64 on the same (masked) weights, its gradients from autograd.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import sparsekern
from sparsekern.masks import random_mask

from .common import Candidate, compare_to_reference, reset_grads, step  # noqa: F401  (reset_grads: re-exported)

DENSE = "dense"
DENSE_COMPILED = "dense_compiled"
SK_CSR = "sk_csr"
SK_CSR_AUTO = "sk_csr_auto"
# The same sparse layer with the batch or the plane CPU algorithm forced (csrc/cpu/conv_plane.h; the third,
# the depthwise kernels, is what sk_csr runs on the depthwise shapes it serves): to measure the shape rule
# that picks between them. Not in the default set.
SK_CSR_BATCH = "sk_csr_batch"
SK_CSR_PLANE = "sk_csr_plane"
FORCED_ALGORITHMS = {SK_CSR_BATCH: "batch", SK_CSR_PLANE: "plane"}
SPARSEPROP = "sparseprop"
SPARSEPROP_ON = "sparseprop_on"
# SparseProp ships two conv kernels (vectorised over the batch, or over the output columns) and picks by
# timing both (its sparsify_conv2d_auto); the comparison uses whichever is faster in each phase.
SPARSEPROP_NAMES = (SPARSEPROP, SPARSEPROP_ON)
DEFAULT_CANDIDATES = [DENSE, SK_CSR, SK_CSR_AUTO, SPARSEPROP, SPARSEPROP_ON]
ALL_CANDIDATES = DEFAULT_CANDIDATES + [DENSE_COMPILED, SK_CSR_BATCH, SK_CSR_PLANE]

DESCRIPTIONS = {
    DENSE: "nn.Conv2d, eager (oneDNN convolution), all weights",
    DENSE_COMPILED: "torch.compile(nn.Conv2d), all weights",
    SK_CSR_BATCH: "sk_csr with the kernels vectorised over the batch forced (SPARSEKERN_CONV_ALGORITHM=batch)",
    SK_CSR_PLANE: "sk_csr with the kernels vectorised over the output plane forced "
                  "(SPARSEKERN_CONV_ALGORITHM=plane)",
    SK_CSR: "sparsekern.SparseConv2d.from_dense(conv, mask, backend='sparse'): the CSR conv kernels",
    SK_CSR_AUTO: "sparsekern.SparseConv2d.from_dense(conv, mask, backend='auto') (the `backend` column says "
                 "what auto chose)",
    SPARSEPROP: "sparseprop.modules.SparseConv2d.from_dense(masked nn.Conv2d) (SparseProp, ICML 2023; its "
                "default kernel, vectorised over the batch)",
    SPARSEPROP_ON: "the same with vectorizing_over_on=True (SparseProp's other kernel, vectorised over output "
                   "columns; stride-2 forwards fall back to the batch-vectorised one, as SparseProp does)",
}


def describe(name: str) -> str:
    return DESCRIPTIONS.get(name, name)


# -------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ConvShape:
    c_in: int
    c_out: int
    height: int
    width: int
    kernel: int
    stride: int
    padding: int
    groups: int
    batch: int
    bias: bool = False
    name: str = ""      # e.g. "layer2.0.conv1"; empty for a shape given on the command line
    group: str = ""     # "resnet18", "vgg16", "mobilenetv2" or "custom"

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple((i + 2 * self.padding - self.kernel) // self.stride + 1 for i in (self.height, self.width))

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c_in == self.c_out

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in // self.groups, self.kernel, self.kernel)

    @property
    def weight_numel(self) -> int:
        c_out, c_in_g, kh, kw = self.weight_shape
        return c_out * c_in_g * kh * kw

    @property
    def geometry(self) -> str:
        """``64→128 3×3/s2 @32×32`` (``dw`` for depthwise, ``g<k>`` for other grouped convs)."""
        g = " dw" if self.depthwise else (f" g{self.groups}" if self.groups > 1 else "")
        size = f"{self.height}" if self.height == self.width else f"{self.height}×{self.width}"
        return f"{self.c_in}→{self.c_out} {self.kernel}×{self.kernel}/s{self.stride}{g} @{size}"

    @property
    def title(self) -> str:
        """``ResNet-18 layer1 3×3`` for a named layer, the spec for a hand-written one."""
        return f"{GROUP_TITLES.get(self.group, self.group)} {self.name}" if self.name else self.spec

    @property
    def label(self) -> str:
        prefix = f"{self.title}: " if self.name else ""
        return f"{prefix}{self.geometry} B={self.batch}"

    @property
    def spec(self) -> str:
        """``CINxCOUT k K s S p P [g G] @ H[xW] b B`` without spaces; ``parse_shapes`` reads it back."""
        g = f"g{self.groups}" if self.groups > 1 else ""
        size = f"{self.height}" if self.height == self.width else f"{self.height}x{self.width}"
        return f"{self.c_in}x{self.c_out}k{self.kernel}s{self.stride}p{self.padding}{g}@{size}b{self.batch}"

    def module(self) -> nn.Conv2d:
        return nn.Conv2d(self.c_in, self.c_out, self.kernel, self.stride, self.padding, groups=self.groups,
                         bias=self.bias)

    def row_fields(self) -> dict:
        oh, ow = self.out_size
        return {"shape": self.spec, "group": self.group, "layer": self.name, "c_in": self.c_in,
                "c_out": self.c_out, "kernel": self.kernel, "stride": self.stride, "padding": self.padding,
                "groups": self.groups, "height": self.height, "width": self.width, "out_height": oh,
                "out_width": ow, "batch": self.batch, "bias": self.bias}


GROUP_TITLES = {"resnet18": "ResNet-18", "vgg16": "VGG16", "mobilenetv2": "MobileNetV2", "custom": "custom"}

# (name, c_in, c_out, input size, kernel, stride, padding, groups) of each model's conv layers. Batch comes
# from --batch (64). Bias as in the models: ResNet-18 and MobileNetV2 convs feed BatchNorm and have none; the
# CIFAR VGG16 (kuangliu/pytorch-cifar) keeps nn.Conv2d's default bias.
_RESNET18 = [  # CIFAR ResNet-18 (3×3 stem at 32×32, stages at 32/16/8/4)
    ("layer1 3×3", 64, 64, 32, 3, 1, 1, 1),
    ("layer2 3×3", 128, 128, 16, 3, 1, 1, 1),
    ("layer3 3×3", 256, 256, 8, 3, 1, 1, 1),
    ("layer4 3×3", 512, 512, 4, 3, 1, 1, 1),
    ("layer2.0.conv1 3×3/s2", 64, 128, 32, 3, 2, 1, 1),
    ("layer3.0.conv1 3×3/s2", 128, 256, 16, 3, 2, 1, 1),
    ("layer4.0.conv1 3×3/s2", 256, 512, 8, 3, 2, 1, 1),
    ("layer2.0.downsample 1×1/s2", 64, 128, 32, 1, 2, 0, 1),
    ("layer3.0.downsample 1×1/s2", 128, 256, 16, 1, 2, 0, 1),
    ("layer4.0.downsample 1×1/s2", 256, 512, 8, 1, 2, 0, 1),
]
_VGG16 = [  # the 3×3 convs of the CIFAR VGG16 (cfg 64,64,M,128,128,M,256×3,M,512×3,M,512×3,M), one per shape
    ("conv1_1", 3, 64, 32, 3, 1, 1, 1),
    ("conv1_2", 64, 64, 32, 3, 1, 1, 1),
    ("conv2_1", 64, 128, 16, 3, 1, 1, 1),
    ("conv2_2", 128, 128, 16, 3, 1, 1, 1),
    ("conv3_1", 128, 256, 8, 3, 1, 1, 1),
    ("conv3_2", 256, 256, 8, 3, 1, 1, 1),
    ("conv4_1", 256, 512, 4, 3, 1, 1, 1),
    ("conv4_2", 512, 512, 4, 3, 1, 1, 1),
    ("conv5_x", 512, 512, 2, 3, 1, 1, 1),
]
# Representative inverted-residual layers (expand 1×1, depthwise 3×3, project 1×1) of a CIFAR MobileNetV2 at
# the sizes the issue names (depthwise 96 at 16×16, 144 at 16×16 stride 2, 96→24 at 16×16, 144→32 at 8×8):
# blocks 16→24 (expand 6) at 16×16, 24→32 stride 2, 32→32 and 32→64 stride 2 at 8×8, 64→96 at 4×4.
_MOBILENETV2 = [
    ("expand 16→96 1×1", 16, 96, 16, 1, 1, 0, 1),
    ("depthwise 96 3×3", 96, 96, 16, 3, 1, 1, 96),
    ("project 96→24 1×1", 96, 24, 16, 1, 1, 0, 1),
    ("expand 24→144 1×1", 24, 144, 16, 1, 1, 0, 1),
    ("depthwise 144 3×3/s2", 144, 144, 16, 3, 2, 1, 144),
    ("project 144→32 1×1", 144, 32, 8, 1, 1, 0, 1),
    ("expand 32→192 1×1", 32, 192, 8, 1, 1, 0, 1),
    ("depthwise 192 3×3", 192, 192, 8, 3, 1, 1, 192),
    ("project 192→32 1×1", 192, 32, 8, 1, 1, 0, 1),
    ("depthwise 192 3×3/s2", 192, 192, 8, 3, 2, 1, 192),
    ("depthwise 384 3×3", 384, 384, 4, 3, 1, 1, 384),
    ("project 384→96 1×1", 384, 96, 4, 1, 1, 0, 1),
]
_GROUPS = {"resnet18": (_RESNET18, False), "vgg16": (_VGG16, True), "mobilenetv2": (_MOBILENETV2, False)}
SHAPE_GROUPS = tuple(_GROUPS)

_SPEC = re.compile(r"^(\d+)x(\d+)k(\d+)s(\d+)p(\d+)(?:g(\d+))?@(\d+)(?:x(\d+))?(?:b(\d+))?$")


def group_shapes(group: str, batch: int) -> list[ConvShape]:
    layers, bias = _GROUPS[group]
    return [ConvShape(ci, co, hw, hw, k, s, p, g, batch, bias, name, group)
            for name, ci, co, hw, k, s, p, g in layers]


def parse_shapes(spec: str, batch: int = 64) -> list[ConvShape]:
    """Comma-separated group names (``resnet18``, ``vgg16``, ``mobilenetv2``) and/or single layers written
    ``CINxCOUTkKsSpP[gG]@H[xW][bB]`` (e.g. ``64x128k3s2p1@32``; ``g`` = groups, ``b`` = batch, default
    ``batch``). A single layer gets a bias, as nn.Conv2d does by default."""
    shapes: list[ConvShape] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        key = item.lower().replace("-", "")
        if key in _GROUPS:
            shapes += group_shapes(key, batch)
            continue
        m = _SPEC.match(key)
        if not m:
            raise ValueError(f"--shapes: expected a group ({', '.join(SHAPE_GROUPS)}) or a layer like "
                             f"'64x128k3s2p1@32' (CINxCOUT k s p [g] @ H[xW] [b BATCH]), got {item!r}")
        ci, co, k, s, p, g, h, w, b = m.groups()
        g = int(g or 1)
        if int(ci) % g or int(co) % g:
            raise ValueError(f"--shapes: groups={g} does not divide the channels of {item!r}")
        shape = ConvShape(int(ci), int(co), int(h), int(w or h), int(k), int(s), int(p), g, int(b or batch),
                          True, "", "custom")
        if min(shape.out_size) < 1:
            raise ValueError(f"--shapes: {item!r} has an empty output")
        shapes.append(shape)
    if not shapes:
        raise ValueError("--shapes: expected at least one shape")
    if len({s.spec for s in shapes}) != len(shapes):
        raise ValueError("--shapes: the same layer is listed twice")
    return shapes


# -------------------------------------------------------------------------------------- candidates
def _sparsekern_candidate(name, dense: nn.Conv2d, mask, backend, input_size) -> Candidate:
    layer = sparsekern.SparseConv2d.from_dense(dense, mask, backend=backend)
    resolved = layer.resolved_backend("cpu", input_size)
    notes = [] if backend == "sparse" else [f"auto→{resolved}"]
    algorithm = FORCED_ALGORITHMS.get(name)

    def forward(x):
        # Every sparsekern candidate sets the kernels' algorithm choice before its step (the backward of the
        # step runs under it too), so a forced one never leaks into the next candidate's step.
        if algorithm is None:
            os.environ.pop("SPARSEKERN_CONV_ALGORITHM", None)
        else:
            os.environ["SPARSEKERN_CONV_ALGORITHM"] = algorithm
        return layer(x)

    return Candidate(name, "csr", forward, [layer.weight_values, layer.bias], mask,
                     lambda: layer.weight_values.grad, layer.bias, resolved, layer.nnz, notes)


def sparseprop_import():
    """SparseProp's SparseConv2d class, or the reason it cannot be used."""
    try:
        from sparseprop.modules import SparseConv2d as SPConv2d
    except Exception as exc:  # noqa: BLE001  (ImportError, or its compiled backend failing to load)
        return None, f"sparseprop not importable: {type(exc).__name__}: {exc}"
    return SPConv2d, ""


def sparseprop_unsupported(dense: nn.Conv2d) -> str:
    """Why SparseProp's SparseConv2d cannot run this layer ('' if it can): it has one K×K kernel size, one
    stride (1 or 2), one padding, no dilation and no groups."""
    if dense.groups != 1:
        return f"groups={dense.groups}: SparseProp's SparseConv2d has no grouped/depthwise convolution"
    kh, kw = dense.kernel_size
    if kh != kw or dense.stride[0] != dense.stride[1] or dense.padding[0] != dense.padding[1]:
        return "SparseProp's SparseConv2d takes square kernels and equal strides/paddings only"
    if dense.stride[0] not in (1, 2):
        return f"stride {dense.stride[0]}: SparseProp supports strides 1 and 2 only"
    if dense.dilation != (1, 1):
        return "SparseProp's SparseConv2d has no dilation"
    return ""


def _sparseprop_candidate(name, dense: nn.Conv2d, mask) -> Candidate:
    SPConv2d, why = sparseprop_import()
    if SPConv2d is None:
        raise RuntimeError(why)
    why = sparseprop_unsupported(dense)
    if why:
        raise ValueError(why)
    masked = nn.Conv2d(dense.in_channels, dense.out_channels, dense.kernel_size, dense.stride, dense.padding,
                       bias=dense.bias is not None)
    with torch.no_grad():
        masked.weight.copy_(dense.weight * mask)
        if dense.bias is not None:
            masked.bias.copy_(dense.bias)
    # The authors' path: a dense nn.Conv2d whose pruned weights are zeros -> from_dense (its own sparse format:
    # values in the weight's row-major order, so W_val.grad lines up with dW[mask]).
    layer = SPConv2d.from_dense(masked, vectorizing_over_on=name == SPARSEPROP_ON)
    notes = []
    if layer.W_val.numel() != int(mask.sum()):
        notes.append(f"nnz {layer.W_val.numel()} != mask {int(mask.sum())} (exact zeros dropped)")
    return Candidate(name, "csr", layer, [layer.W_val, layer.bias], mask, lambda: layer.W_val.grad,
                     layer.bias, "sparseprop", layer.W_val.numel(), notes)


def _dense_candidate(dense: nn.Conv2d, compiled: bool) -> Candidate:
    layer = dense
    name = DENSE
    if compiled:
        layer = nn.Conv2d(dense.in_channels, dense.out_channels, dense.kernel_size, dense.stride, dense.padding,
                          groups=dense.groups, bias=dense.bias is not None)
        layer.load_state_dict(dense.state_dict())
        name = DENSE_COMPILED
    fwd = torch.compile(layer, dynamic=False) if compiled else layer
    return Candidate(name, "dense", fwd, [layer.weight, layer.bias], None, lambda: layer.weight.grad,
                     layer.bias, "dense", layer.weight.numel())


def build_candidates(shape: ConvShape, sparsity: float, names: list[str], layouts=None, seed: int = 0):
    """The candidates for one shape × sparsity, all holding the same weights pruned by the same random mask.

    Returns ``(dense, candidates, skipped)`` like ``linear_cases.build_candidates`` (``layouts`` is accepted
    for the runner's sake and ignored: the conv suite has unstructured CSR masks only).
    """
    torch.manual_seed(seed)
    dense = shape.module()
    mask = random_mask(shape.weight_shape, sparsity, generator=torch.Generator().manual_seed(seed + 1))
    candidates, skipped = [], {}
    for name in names:
        try:
            if name in (DENSE, DENSE_COMPILED):
                candidates.append(_dense_candidate(dense, compiled=name == DENSE_COMPILED))
            elif name in (SK_CSR, SK_CSR_AUTO, SK_CSR_BATCH, SK_CSR_PLANE):
                candidates.append(_sparsekern_candidate(name, dense, mask, "auto" if name == SK_CSR_AUTO else "sparse",
                                                        (shape.height, shape.width)))
            elif name in SPARSEPROP_NAMES:
                candidates.append(_sparseprop_candidate(name, dense, mask))
            else:
                raise ValueError(f"unknown candidate {name!r} (conv candidates: {', '.join(ALL_CANDIDATES)})")
        except Exception as exc:  # noqa: BLE001  (record why and go on with the others)
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return dense, candidates, skipped


def make_inputs(shape: ConvShape, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(shape.batch, shape.c_in, shape.height, shape.width, generator=gen).requires_grad_(True)
    grad = torch.randn(shape.batch, shape.c_out, *shape.out_size, generator=gen)
    return x, grad


# ------------------------------------------------------------------------------------------ checking
def reference(dense: nn.Conv2d, mask, x, grad) -> dict:
    """y, dx, dW (at the kept positions, row-major) and db of ``dense`` with its weight masked, in float64."""
    w = dense.weight.detach().double()
    if mask is not None:
        w = w * mask
    w.requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    b64 = None if dense.bias is None else dense.bias.detach().double().requires_grad_(True)
    with torch.enable_grad():
        y = F.conv2d(x64, w, b64, dense.stride, dense.padding, dense.dilation, dense.groups)
        inputs = [x64, w] + ([b64] if b64 is not None else [])
        grads = torch.autograd.grad(y, inputs, grad.double())
    ref = {"y": y.detach(), "dx": grads[0], "dW": grads[1].reshape(-1) if mask is None else grads[1][mask]}
    if b64 is not None:
        ref["db"] = grads[2]
    return ref


def check_candidate(c: Candidate, dense: nn.Conv2d, x, grad, cache: dict | None = None) -> str:
    """Run one step and compare y, dx, dW (kept positions) and db with the float64 reference. Untimed.

    ``cache`` (one dict per shape × sparsity) keeps the reference of each mask: the candidates that share the
    mask share it, and a float64 convolution at batch 64 is not free.
    """
    y, _ = step(c, x, grad)
    key = id(c.mask)
    if cache is None or key not in cache:
        ref = reference(dense, c.mask, x, grad)
        if cache is not None:
            cache[key] = (c.mask, ref)  # the mask is kept alive with it, so its id stays unique
    else:
        ref = cache[key][1]
    got = {"y": y, "dx": x.grad, "dW": c.weight_grad()}
    if "db" in ref:
        got["db"] = None if c.bias is None else c.bias.grad
    with torch.no_grad():
        return compare_to_reference(got, ref)
