"""The linear-layer candidates (dense, sparsekern, torch.sparse, SparseProp), their shapes and check.

Every candidate is timed the way a training step uses a layer: ``x`` is ``(B, in)`` contiguous with
``requires_grad=True``, ``y = layer(x)`` runs with autograd on, then ``y.backward(grad)`` with one fixed
contiguous ``(B, out)`` gradient. Parameter and input gradients are reset to ``None`` (untimed) before each
step, as ``optimizer.zero_grad(set_to_none=True)`` would, so no step pays for gradient accumulation.

Before timing, each candidate's output, input gradient, weight gradient (at the kept positions) and bias
gradient are checked against a float64 reference with the same weights, so a candidate that computes the
wrong thing cannot post a time.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

import sparsekern
from sparsekern.masks import random_mask

# The candidate, its check and the interleaved timer are shared with the conv suite (common.py); re-exported
# here so ``lc.step``, ``lc.time_candidates`` ... keep working.
from .common import (CHECK_RTOL, PHASES, Candidate, compare_to_reference, reset_grads,  # noqa: F401
                     reset_grads_all, step, time_candidates)

# Candidate names, in display order. "sk_<layout>" is sparsekern with backend="sparse", "sk_<layout>_auto"
# with backend="auto"; <layout> is "csr" (unstructured mask) or "bsr<b>" (b×b block mask).
DENSE = "dense"
DENSE_COMPILED = "dense_compiled"
TORCH_CSR = "torch_csr"
SPARSEPROP = "sparseprop"

DESCRIPTIONS = {
    DENSE: "nn.Linear, eager (MKL/oneDNN GEMM), all weights",
    DENSE_COMPILED: "torch.compile(nn.Linear), all weights",
    TORCH_CSR: "torch.sparse.mm(W_csr, xᵀ)ᵀ + b; W_csr = masked weight .to_sparse_csr(), grads via autograd",
    SPARSEPROP: "sparseprop.modules.SparseLinear.from_dense(masked nn.Linear) (SparseProp, ICML 2023)",
}


# ------------------------------------------------------------------------------------------- layouts
def parse_layouts(spec: str) -> list[tuple[int, int] | None]:
    """``"csr,16,16x8"`` -> ``[None, (16, 16), (16, 8)]`` (None = unstructured CSR)."""
    layouts: list[tuple[int, int] | None] = []
    for item in (s.strip().lower() for s in spec.split(",")):
        if not item:
            continue
        if item in ("csr", "none", "unstructured"):
            layouts.append(None)
            continue
        item = item.removeprefix("bsr")
        try:
            bh, _, bw = item.partition("x")
            layouts.append((int(bh), int(bw or bh)))
        except ValueError:
            raise ValueError(f"--block-sizes: expected 'csr' or a block size like '16' or '16x8', got {item!r}")
    if not layouts:
        raise ValueError("--block-sizes: expected at least one layout")
    return layouts


def layout_name(block: tuple[int, int] | None) -> str:
    if block is None:
        return "csr"
    bh, bw = block
    return f"bsr{bh}" if bh == bw else f"bsr{bh}x{bw}"


def sparsekern_names(layouts, auto: bool = True) -> list[str]:
    names = []
    for block in layouts:
        names.append(f"sk_{layout_name(block)}")
        if auto:
            names.append(f"sk_{layout_name(block)}_auto")
    return names


def describe(name: str) -> str:
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    if name.startswith("sk_"):
        layout = name[3:].removesuffix("_auto")
        backend = "auto" if name.endswith("_auto") else "sparse"
        if layout == "csr":
            mask = "unstructured mask (CSR kernels)"
        else:
            bh, _, bw = layout[3:].partition("x")
            mask = f"random {bh}×{bw or bh} block mask (BSR kernels)"
        return f"sparsekern.SparseLinear.from_dense(..., backend={backend!r}), {mask}"
    return name


# ------------------------------------------------------------------------------------------ the case
@dataclass(frozen=True)
class Shape:
    in_features: int
    out_features: int
    batch: int

    @property
    def label(self) -> str:
        return f"in={self.in_features} out={self.out_features} B={self.batch}"

    @property
    def spec(self) -> str:
        return f"{self.in_features}x{self.out_features}@{self.batch}"

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features

    def row_fields(self) -> dict:
        """The shape's columns of a result row."""
        return {"shape": self.spec, "in_features": self.in_features, "out_features": self.out_features,
                "batch": self.batch}


def parse_shapes(spec: str) -> list[Shape]:
    """``"2048x2048@256,768x3072@2048"``: ``IN x OUT @ BATCH`` (nn.Linear(IN, OUT), input (BATCH, IN))."""
    shapes = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        try:
            layer, _, batch = item.partition("@")
            fin, _, fout = layer.lower().partition("x")
            shapes.append(Shape(int(fin), int(fout), int(batch)))
        except ValueError:
            raise ValueError(f"--shapes: expected IN x OUT @ BATCH like '768x3072@2048', got {item!r}") from None
    if not shapes:
        raise ValueError("--shapes: expected at least one shape")
    return shapes


def _sparsekern_candidate(name, dense: nn.Linear, mask, block, backend) -> Candidate:
    layer = sparsekern.SparseLinear.from_dense(dense, mask, block_size=block, backend=backend)
    resolved = layer.resolved_backend("cpu")
    notes = [] if backend == "sparse" else [f"auto→{resolved}"]
    return Candidate(name, layout_name(block), layer, [layer.weight_values, layer.bias], mask,
                     lambda: layer.weight_values.grad, layer.bias, resolved, layer.nnz, notes)


def _torch_csr_candidate(dense: nn.Linear, mask) -> Candidate:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        w_csr = (dense.weight * mask).to_sparse_csr()
    w_csr.requires_grad_(True)
    bias = dense.bias.detach().clone().requires_grad_(True)
    crow, col = w_csr.crow_indices(), w_csr.col_indices()
    notes = []
    if w_csr._nnz() != int(mask.sum()):
        notes.append(f"nnz {w_csr._nnz()} != mask {int(mask.sum())} (exact zeros dropped)")

    def forward(x):
        return torch.sparse.mm(w_csr, x.t()).t() + bias

    def weight_grad():
        g = w_csr.grad
        if g is None:
            return None
        if g.layout == torch.sparse_csr and torch.equal(g.crow_indices(), crow) and torch.equal(g.col_indices(), col):
            return g.values()
        return g.to_dense()[mask]

    return Candidate(TORCH_CSR, "csr", forward, [w_csr, bias], mask, weight_grad, bias, "torch.sparse",
                     w_csr._nnz(), notes)


def sparseprop_import():
    """SparseProp's SparseLinear class, or the reason it cannot be used."""
    try:
        from sparseprop.modules import SparseLinear as SPLinear
    except Exception as exc:  # noqa: BLE001  (ImportError, or its compiled backend failing to load)
        return None, f"sparseprop not importable: {type(exc).__name__}: {exc}"
    return SPLinear, ""


def _sparseprop_candidate(dense: nn.Linear, mask) -> Candidate:
    SPLinear, why = sparseprop_import()
    if SPLinear is None:
        raise RuntimeError(why)
    masked = nn.Linear(dense.in_features, dense.out_features)
    with torch.no_grad():
        masked.weight.copy_(dense.weight * mask)
        masked.bias.copy_(dense.bias)
    # The authors' path: a dense nn.Linear whose pruned weights are zeros -> from_dense (scipy CSR inside).
    layer = SPLinear.from_dense(masked)
    notes = []
    if layer.W_val.numel() != int(mask.sum()):
        notes.append(f"nnz {layer.W_val.numel()} != mask {int(mask.sum())} (exact zeros dropped)")
    return Candidate(SPARSEPROP, "csr", layer, [layer.W_val, layer.bias], mask, lambda: layer.W_val.grad,
                     layer.bias, "sparseprop", layer.W_val.numel(), notes)


def _dense_candidate(dense: nn.Linear, compiled: bool) -> Candidate:
    layer = dense
    name = DENSE
    if compiled:
        layer = nn.Linear(dense.in_features, dense.out_features)
        layer.load_state_dict(dense.state_dict())
        name = DENSE_COMPILED
    fwd = torch.compile(layer, dynamic=False) if compiled else layer
    return Candidate(name, "dense", fwd, [layer.weight, layer.bias], None, lambda: layer.weight.grad,
                     layer.bias, "dense", layer.weight.numel())


def build_candidates(shape: Shape, sparsity: float, names: list[str], layouts, seed: int = 0):
    """The candidates for one shape×sparsity, all holding the same weights (pruned by the same masks).

    Returns ``(dense, candidates, skipped)``: the unpruned ``nn.Linear`` the weights come from, the built
    candidates, and ``skipped`` mapping a candidate name to why it was not built.
    """
    torch.manual_seed(seed)
    dense = nn.Linear(shape.in_features, shape.out_features)
    wshape = (shape.out_features, shape.in_features)
    masks = {}

    def mask_for(block):
        key = layout_name(block)
        if key not in masks:
            gen = torch.Generator().manual_seed(seed + 1)
            masks[key] = random_mask(wshape, sparsity, generator=gen, block_size=block)
        return masks[key]

    blocks = {layout_name(b): b for b in layouts}
    candidates, skipped = [], {}
    for name in names:
        try:
            if name in (DENSE, DENSE_COMPILED):
                candidates.append(_dense_candidate(dense, compiled=name == DENSE_COMPILED))
            elif name == TORCH_CSR:
                candidates.append(_torch_csr_candidate(dense, mask_for(None)))
            elif name == SPARSEPROP:
                candidates.append(_sparseprop_candidate(dense, mask_for(None)))
            elif name.startswith("sk_"):
                key = name[3:].removesuffix("_auto")
                if key not in blocks:
                    raise ValueError(f"layout {key!r} not in --block-sizes")
                block = blocks[key]
                if block is not None and (wshape[0] % block[0] or wshape[1] % block[1]):
                    raise ValueError(f"{block[0]}x{block[1]} blocks do not tile the {wshape} weight")
                backend = "auto" if name.endswith("_auto") else "sparse"
                candidates.append(_sparsekern_candidate(name, dense, mask_for(block), block, backend))
            else:
                raise ValueError(f"unknown candidate {name!r}")
        except Exception as exc:  # noqa: BLE001  (record why and go on with the others)
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return dense, candidates, skipped


def make_inputs(shape: Shape, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(shape.batch, shape.in_features, generator=gen).requires_grad_(True)
    grad = torch.randn(shape.batch, shape.out_features, generator=gen)
    return x, grad


# ------------------------------------------------------------------------------------------ checking
def check_candidate(c: Candidate, dense_weight: torch.Tensor, dense_bias: torch.Tensor, x, grad) -> str:
    """Run one step and compare y, dx, dW (kept positions) and db with a float64 reference. Untimed."""
    y, _ = step(c, x, grad)
    with torch.no_grad():
        w = dense_weight.double()
        if c.mask is not None:
            w = w * c.mask
        x64, g64 = x.detach().double(), grad.double()
        ref = {"y": x64 @ w.t() + dense_bias.double(), "dx": g64 @ w}
        dw = g64.t() @ x64
        ref["dW"] = dw.reshape(-1) if c.mask is None else dw[c.mask]
        ref["db"] = g64.sum(0)
        got = {"y": y, "dx": x.grad, "dW": c.weight_grad(), "db": None if c.bias is None else c.bias.grad}
        return compare_to_reference(got, ref)


def check_case(c: Candidate, dense: nn.Linear, x, grad, cache=None) -> str:
    """The runner's entry point: ``check_candidate`` with the dense layer's weights (``cache`` unused: the
    float64 reference of a linear layer is cheap)."""
    return check_candidate(c, dense.weight.detach(), dense.bias.detach(), x, grad)
