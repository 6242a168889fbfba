"""The linear-layer candidates (dense, sparsekern, torch.sparse, SparseProp) and the interleaved timer.

Every candidate is timed the way a training step uses a layer: ``x`` is ``(B, in)`` contiguous with
``requires_grad=True``, ``y = layer(x)`` runs with autograd on, then ``y.backward(grad)`` with one fixed
contiguous ``(B, out)`` gradient. Parameter and input gradients are reset to ``None`` (untimed) before each
step, as ``optimizer.zero_grad(set_to_none=True)`` would, so no step pays for gradient accumulation.

Before timing, each candidate's output, input gradient, weight gradient (at the kept positions) and bias
gradient are checked against a float64 reference with the same weights, so a candidate that computes the
wrong thing cannot post a time.
"""
from __future__ import annotations

import gc
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import sparsekern
from sparsekern.masks import random_mask

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

# A check fails when max|candidate - reference| > CHECK_RTOL * max|reference| (float32 vs float64).
CHECK_RTOL = 1e-3


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


@dataclass
class Candidate:
    name: str
    layout: str                                   # "dense", "csr", "bsr16", ...
    forward: Callable[[torch.Tensor], torch.Tensor]
    params: list[torch.Tensor]                    # gradients reset before every step
    mask: torch.Tensor | None                     # the kept weights (None: all of them)
    weight_grad: Callable[[], torch.Tensor]       # weight gradient at the kept positions, row-major order
    bias: torch.Tensor | None
    resolved_backend: str = ""
    nnz: int = 0
    notes: list[str] = field(default_factory=list)
    check: str = ""


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
        worst = 0.0
        for key, r in ref.items():
            g = got[key]
            if g is None:
                return f"FAIL: no {key}"
            g = g.detach().reshape(r.shape) if g.numel() == r.numel() else None
            if g is None:
                return f"FAIL: {key} has {got[key].numel()} elements, expected {r.numel()}"
            err = float((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30))
            if not err <= CHECK_RTOL:
                return f"FAIL: {key} rel err {err:.1e}"
            worst = max(worst, err)
    return f"ok {worst:.0e}"


# ------------------------------------------------------------------------------------------- timing
def reset_grads(c: Candidate, x: torch.Tensor) -> None:
    x.grad = None
    for p in c.params:
        if p is not None:
            p.grad = None


def step(c: Candidate, x, grad):
    """One training step of the layer; returns (y, (fwd_ns, bwd_ns, fwd+bwd_ns))."""
    reset_grads(c, x)
    t0 = time.perf_counter_ns()
    y = c.forward(x)
    t1 = time.perf_counter_ns()
    y.backward(grad)
    t2 = time.perf_counter_ns()
    return y, (t1 - t0, t2 - t1, t2 - t0)


PHASES = ("fwd", "bwd", "fwd+bwd")


def time_candidates(candidates: list[Candidate], x, grad, *, repeats: int, warmup: int,
                    budget_s: float = 60.0, min_repeats: int = 3, progress=None) -> dict:
    """Interleaved timing: round r runs one step of every candidate, in a shuffled order (seeded by r).

    Interleaving spreads slow drift of a shared machine (other jobs, thermal) evenly over the candidates,
    so the ratios stay fair even when absolute times move. The order is shuffled, not rotated: with a
    fixed order each candidate always ran right after the same neighbour and inherited its cache state (a
    layer after another sparse layer with the same input ran 5-9% faster than the same layer after dense,
    whose 16 MB weight had flushed the caches). A candidate whose warm step is so slow that
    ``repeats`` steps would exceed ``budget_s`` gets fewer repeats (never fewer than ``min_repeats``); the
    ``n`` column records how many it got.

    Returns ``{name: {"fwd": [ns...], "bwd": [...], "fwd+bwd": [...]}}``.
    """
    quota = {}
    for c in candidates:
        last = 0
        for _ in range(max(warmup, 1)):
            _, (_, _, last) = step(c, x, grad)
        quota[c.name] = repeats if last * repeats <= budget_s * 1e9 else max(min_repeats, int(budget_s * 1e9 // last))
        if quota[c.name] < repeats:
            c.notes.append(f"{quota[c.name]} repeats (time budget)")
    samples = {c.name: {p: [] for p in PHASES} for c in candidates}
    rounds = max(quota.values(), default=0)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = list(candidates)
            random.Random(r).shuffle(order)
            for c in order:
                if len(samples[c.name]["fwd"]) >= quota[c.name]:
                    continue
                _, times = step(c, x, grad)
                for phase, t in zip(PHASES, times):
                    samples[c.name][phase].append(t)
            if progress is not None:
                progress(r + 1, rounds)
    finally:
        if gc_was_enabled:
            gc.enable()
    reset_grads_all(candidates, x)
    return samples


def reset_grads_all(candidates, x) -> None:
    for c in candidates:
        reset_grads(c, x)
