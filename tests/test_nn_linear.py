"""SparseLinear: agreement with nn.Linear on the masked weight, gradients, inputs of any layout, training,
torch.compile, state_dict, from_dense / to_dense, set_mask.

The comparison oracle is always built independently of the module's own helpers: the dense weight is
scattered here from ``weight_values`` and the mask (row-major), never taken from ``dense_weight()``.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from helpers import (assert_error_budget, block_mask, exact_mask, mask_with_pruned_lines, oracle_mm,
                     train_beside_twin)
from sparsekern import BSRLayout, CSRLayout, SparseLinear, _extension
from sparsekern.nn.backend import (CPU_PROFILES, SPARSITY_TOLERANCE, _cpu_vendor, cpu_min_sparsity, cpu_profile,
                                   detect_cpu_profile)

F32, F64 = torch.float32, torch.float64
LAYOUTS = ["csr", "bsr"]
BACKENDS = ["sparse", "dense"]
BLOCK = (2, 3)


def make_mask(layout, out_f, in_f, sparsity):
    if layout == "csr":
        if sparsity == "pruned_lines":
            return mask_with_pruned_lines((out_f, in_f)), None
        return exact_mask((out_f, in_f), sparsity), None
    grid = (out_f // BLOCK[0], in_f // BLOCK[1])
    if sparsity == "pruned_lines":
        return block_mask(grid, BLOCK, 0.3, prune_lines=True), BLOCK
    return block_mask(grid, BLOCK, sparsity), BLOCK


def make_layer(layout, in_f, out_f, sparsity=0.5, backend="sparse", dtype=F32, bias=True):
    mask, bs = make_mask(layout, out_f, in_f, sparsity)
    return SparseLinear(in_f, out_f, bias=bias, dtype=dtype, mask=mask, block_size=bs, backend=backend)


def scattered_weight(layer):
    """The dense weight the layer stands for, built here (row-major scatter of weight_values at the mask)."""
    w = torch.zeros(layer.mask.shape, dtype=layer.weight_values.dtype)
    w[layer.mask] = layer.weight_values.detach()
    return w


def _run_sparse(layer, x_base, view, g):
    layer.zero_grad(set_to_none=True)
    xb = x_base.detach().clone().requires_grad_()
    out = layer(view(xb))
    out.backward(g)
    bias_grad = layer.bias.grad if layer.bias is not None else None
    return out.detach(), xb.grad, layer.weight_values.grad, bias_grad


def _run_linear(w, b, mask, x_base, view, g):
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    xb = x_base.detach().clone().requires_grad_()
    out = F.linear(view(xb), w, b)
    out.backward(g)
    return out.detach(), xb.grad, w.grad[mask], (b.grad if b is not None else None)


def _oracle_linear(w, b, mask, x_base, view, g):
    """Output and gradients of ``view(x_base) @ w.T + b`` via helpers.oracle_mm: float64 GEMMs for float32 data,
    double-double (exact) for float64 data. The input gradient is pushed back through ``view`` by autograd
    (a scatter: exact for every view used here except expand, which adds one float64 rounding)."""
    exact = w.dtype == F64
    w, b, g = w.double(), (b.double() if b is not None else None), g.double()
    n_out, n_in = w.shape
    xb = x_base.detach().double().requires_grad_()
    xv = view(xb)
    x2d = xv.detach().reshape(-1, n_in)
    g2d = g.reshape(-1, n_out)
    ones = x2d.new_ones(x2d.shape[0], 1)
    if b is None:
        out = oracle_mm(x2d, w.T, exact)
    else:  # the bias as one more input column, so it is added inside the exact sum
        out = oracle_mm(torch.cat([x2d, ones], 1), torch.cat([w, b[:, None]], 1).T, exact)
    xv.backward(oracle_mm(g2d, w, exact).reshape(xv.shape))
    d_w = oracle_mm(g2d.T, x2d, exact)[mask]
    d_b = oracle_mm(ones.T, g2d, exact)[0] if b is not None else None
    return out.reshape(g.shape), xb.grad, d_w, d_b


def assert_matches_masked_linear(layer, x_base, view=lambda t: t):
    """Forward and all gradients of ``layer`` vs F.linear on the masked weight, with the DESIGN.md budget:
    baseline = F.linear in the layer's dtype, reference = _oracle_linear on the same rounded numbers."""
    dtype = layer.weight_values.dtype
    x_base = x_base.to(dtype)
    out_shape = view(x_base).shape[:-1] + (layer.out_features,)
    g = torch.randn(out_shape, dtype=F64).to(dtype)
    w = scattered_weight(layer)
    b = layer.bias.detach() if layer.bias is not None else None

    got = _run_sparse(layer, x_base, view, g)
    base = _run_linear(w, b, layer.mask, x_base, view, g)
    ref = _oracle_linear(w, b, layer.mask, x_base, view, g)

    assert got[0].shape == out_shape and got[0].dtype == dtype
    assert got[2].shape == (layer.nnz,), "weight gradient must have one entry per kept weight"
    names = ("output", "d_input", "d_weight_values", "d_bias")
    for name, o, bl, r, factor in zip(names, got, base, ref, (2, 3, 3, 3)):
        if r is None:
            assert o is None
            continue
        assert_error_budget(o, bl, r, factor, name)


# ------------------------------------------------------------------------------------ agreement & shapes

@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0, "pruned_lines"], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_masked_linear(layout, backend, sparsity, dtype):
    # Odd sizes: CSR 7x123 with batch 431 (DESIGN.md); BSR 14x27 (7x9 grid of 2x3 blocks) with batch 53.
    in_f, out_f, batch = (123, 7, 431) if layout == "csr" else (27, 14, 53)
    layer = make_layer(layout, in_f, out_f, sparsity, backend, dtype)
    assert_matches_masked_linear(layer, torch.randn(batch, in_f, dtype=F64))  # cast (rounded) to dtype inside


INPUT_VIEWS = {
    # name: (base shape as a function of in_features, view)
    "2d": (lambda n: (5, n), lambda t: t),
    "1d": (lambda n: (n,), lambda t: t),
    "3d": (lambda n: (2, 3, n), lambda t: t),
    "4d": (lambda n: (2, 1, 3, n), lambda t: t),
    "batch1": (lambda n: (1, n), lambda t: t),
    "batch0": (lambda n: (0, n), lambda t: t),
    "batch0_3d": (lambda n: (2, 0, n), lambda t: t),
    "strided_features": (lambda n: (5, 2 * n), lambda t: t[:, ::2]),
    "strided_rows": (lambda n: (10, n), lambda t: t[::2]),
    "transposed": (lambda n: (n, 5), lambda t: t.T),
    "permuted_3d": (lambda n: (n, 3, 2), lambda t: t.permute(2, 1, 0)),
    "expanded": (lambda n: (1, n), lambda t: t.expand(4, -1)),
    "offset_view": (lambda n: (6, n + 1), lambda t: t[1:, 1:]),
}


@pytest.mark.parametrize("view", list(INPUT_VIEWS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_shapes_and_strides(layout, backend, view):
    in_f, out_f = (12, 10)
    layer = make_layer(layout, in_f, out_f, "pruned_lines", backend)
    shape_fn, view_fn = INPUT_VIEWS[view]
    x = torch.randn(shape_fn(in_f))
    if view not in ("2d", "1d", "3d", "4d", "batch1", "batch0", "batch0_3d"):
        assert not view_fn(x).is_contiguous()
    assert_matches_masked_linear(layer, x, view_fn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_bias(layout, backend):
    layer = make_layer(layout, 12, 10, 0.5, backend, bias=False)
    assert layer.bias is None
    assert_matches_masked_linear(layer, torch.randn(7, 12))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_f,out_f", [(0, 4), (6, 0)])
def test_zero_size_layer(layout, backend, in_f, out_f):
    """Like nn.Linear(0, 4) / nn.Linear(6, 0): forward and backward work and give the obvious results."""
    mask = torch.ones(out_f, in_f, dtype=torch.bool)
    layer = SparseLinear(in_f, out_f, mask=mask, block_size=None if layout == "csr" else BLOCK, backend=backend)
    x = torch.randn(3, in_f, requires_grad=True)
    out = layer(x)
    assert out.shape == (3, out_f)
    expected = layer.bias.detach().expand(3, -1)
    assert torch.equal(out.detach(), expected)
    out.sum().backward()
    assert x.grad.shape == (3, in_f) and layer.weight_values.grad.shape == (0,)


# ---------------------------------------------------------------------------------------- all-ones mask

@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_ones_mask_equals_nn_linear(layout, backend, dtype):
    lin = nn.Linear(27, 14, dtype=dtype)
    mask = torch.ones(14, 27, dtype=torch.bool)
    layer = SparseLinear.from_dense(lin, mask, block_size=None if layout == "csr" else BLOCK, backend=backend)
    assert layer.nnz == 14 * 27 and layer.density == 1.0 and layer.sparsity == 0.0
    assert torch.equal(layer.weight_values.detach(), lin.weight.detach().flatten())

    x = torch.randn(3, 5, 27, dtype=dtype)
    g = torch.randn(3, 5, 14, dtype=dtype)
    got = _run_sparse(layer, x, lambda t: t, g)

    lin.zero_grad()
    xl = x.clone().requires_grad_()
    out_lin = lin(xl)
    out_lin.backward(g)
    base = (out_lin.detach(), xl.grad, lin.weight.grad.flatten(), lin.bias.grad)

    ref = _oracle_linear(lin.weight.detach(), lin.bias.detach(), mask, x, lambda t: t, g)

    for name, o, bl, r, factor in zip(("output", "d_input", "d_weight", "d_bias"), got, base, ref, (2, 3, 3, 3)):
        assert_error_budget(o, bl, r, factor, name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_default_mask_keeps_everything(layout):
    layer = SparseLinear(12, 10, block_size=None if layout == "csr" else BLOCK)
    assert layer.mask.dtype == torch.bool and bool(layer.mask.all())
    assert layer.nnz == 120 and layer.weight_values.shape == (120,)


# ------------------------------------------------------------------------------------------- gradcheck

def _gradcheck_layer(layout, backend):
    mask, bs = make_mask(layout, 4, 6, "pruned_lines")
    if layout == "bsr":
        mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    return SparseLinear(6, 4, dtype=F64, mask=mask, block_size=bs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_through_module(layout, backend):
    """float64 gradcheck w.r.t. input, weight_values and bias (and gradgradcheck), via functional_call."""
    layer = _gradcheck_layer(layout, backend)
    w = layer.weight_values.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    x = torch.randn(2, 3, 6, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight_values": w, "bias": b}, (x,))

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b), fast_mode=True)


# -------------------------------------------------------------------------------------------- training

class MaskedLinear(nn.Module):
    """The dense twin: a full weight Parameter used as ``weight * mask``; pruned entries start at 0."""

    def __init__(self, sparse: SparseLinear):
        super().__init__()
        self.weight = nn.Parameter(scattered_weight(sparse))
        self.bias = nn.Parameter(sparse.bias.detach().clone())
        self.register_buffer("mask", sparse.mask.clone())

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def _mlp(layout, backend):
    sizes = [(12, 24), (24, 18), (18, 4)]
    layers = []
    for i, (in_f, out_f) in enumerate(sizes):
        layers.append(make_layer(layout, in_f, out_f, 0.8 if layout == "csr" else 0.5, backend, F64))
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
}


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_keeps_pruned_weights_zero(layout, backend, optim):
    model = _mlp(layout, backend)
    twin = nn.Sequential(*(MaskedLinear(m) if isinstance(m, SparseLinear) else nn.ReLU() for m in model))
    initial = [m.weight_values.detach().clone() for m in model if isinstance(m, SparseLinear)]
    # A learnable target (a smooth function of x), so that 100 steps make visible progress.
    x = torch.randn(32, 12, dtype=F64)
    y = torch.tanh(x @ torch.randn(12, 4, dtype=F64) / 3)
    opt, opt_twin = OPTIMIZERS[optim](model.parameters()), OPTIMIZERS[optim](twin.parameters())

    losses = train_beside_twin(model, opt, twin, opt_twin, x, y, steps=100)

    assert losses[-1] < 0.75 * losses[0], "training made no progress: the test would prove nothing"
    sparse_layers = [m for m in model if isinstance(m, SparseLinear)]
    for layer, twin_layer, init in zip(sparse_layers, (m for m in twin if isinstance(m, MaskedLinear)), initial):
        nnz = layer.nnz
        assert not torch.equal(layer.weight_values.detach(), init), "weights never moved"
        # Pruned weights: exactly zero in every dense view of the layer.
        assert bool((layer.dense_weight().detach()[~layer.mask] == 0).all())
        assert bool((layer.to_dense().weight.detach()[~layer.mask] == 0).all())
        # Gradients and optimizer state are sized by the kept count, not out*in.
        assert layer.weight_values.grad.shape == (nnz,)
        state = opt.state[layer.weight_values]
        tensors = [v for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
        assert tensors, f"no optimizer state for weight_values: {list(state)}"
        for t in tensors:
            assert t.numel() == nnz, f"optimizer state of {t.numel()} elements, expected nnz={nnz}"
        # Same trajectory as the dense masked twin (whose pruned entries must also have stayed 0).
        assert bool((twin_layer.weight.detach()[~twin_layer.mask] == 0).all())
        torch.testing.assert_close(layer.weight_values.detach(), twin_layer.weight.detach()[layer.mask],
                                   rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(layer.bias.detach(), twin_layer.bias.detach(), rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------- torch.compile

def test_torch_compile_fullgraph_matches_eager():
    """Inductor (the default backend), fullgraph: CSR sparse, BSR sparse and a dense-backend layer in one model.

    Small on purpose: compiling forward + backward takes tens of seconds on 2 cores. The second batch size
    makes dynamo recompile with a dynamic batch dimension, which runs the fake kernels on symbolic shapes.
    """
    torch._dynamo.reset()
    m1, _ = make_mask("csr", 24, 12, 0.8)
    m2 = block_mask((12, 6), (2, 4), 0.5)
    m3, _ = make_mask("csr", 5, 24, 0.5)
    model = nn.Sequential(
        SparseLinear(12, 24, mask=m1, backend="sparse"), nn.ReLU(),
        SparseLinear(24, 24, mask=m2, block_size=(2, 4), backend="sparse"), nn.ReLU(),
        SparseLinear(24, 5, mask=m3, backend="dense"))
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True)

    for batch in (9, 13):
        x = torch.randn(batch, 12)
        results = []
        for m, fn in ((model, model), (compiled_model, compiled)):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out = fn(xi)
            out.pow(2).sum().backward()
            results.append([out.detach(), xi.grad] + [p.grad for p in m.parameters()])
        for eager, comp in zip(*results):
            torch.testing.assert_close(comp, eager)


# ------------------------------------------------------------------------------------------- state_dict

def _other_mask_layer(layer):
    """A fresh layer of the same shape and layout kind with a different random mask (and nnz)."""
    bs = layer.block_size
    if bs is None:
        mask = exact_mask(tuple(layer.mask.shape), 0.3)
    else:
        grid = (layer.out_features // bs[0], layer.in_features // bs[1])
        mask = block_mask(grid, bs, 0.25)
    assert not torch.equal(mask, layer.mask) and int(mask.sum()) != layer.nnz
    return SparseLinear(layer.in_features, layer.out_features, mask=mask, block_size=bs, backend=layer.backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_round_trip(layout, backend):
    src = make_layer(layout, 12, 10, 0.6, backend)
    sd = src.state_dict()
    assert set(sd) == {"weight_values", "bias", "mask"}
    assert sd["mask"].dtype == torch.bool and sd["weight_values"].shape == (src.nnz,)

    dst = _other_mask_layer(src)
    dst.load_state_dict(sd)

    assert torch.equal(dst.mask, src.mask)
    assert torch.equal(dst.weight_values, src.weight_values) and torch.equal(dst.bias, src.bias)
    assert dst.nnz == src.nnz and dst.weight_values.grad is None
    # The derived (non-persistent) layout buffers were rebuilt for the new mask.
    for name, buf in src.named_buffers():
        assert torch.equal(dict(dst.named_buffers())[name], buf), name
    x = torch.randn(6, 12)
    assert torch.equal(dst(x), src(x))
    # ... and backward works on the reloaded layer with its new nnz.
    dst(x).sum().backward()
    assert dst.weight_values.grad.shape == (src.nnz,)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_save_load_weights_only(layout):
    src = make_layer(layout, 12, 10, 0.6, "sparse")
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    sd = torch.load(buffer, weights_only=True)
    dst = _other_mask_layer(src)
    dst.load_state_dict(sd)
    x = torch.randn(6, 12)
    assert torch.equal(dst.mask, src.mask) and torch.equal(dst(x), src(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_dense_linear_state_dict(layout, backend):
    lin = nn.Linear(12, 10)
    layer = make_layer(layout, 12, 10, 0.5, backend)
    mask = layer.mask.clone()
    layer.load_state_dict(lin.state_dict())
    assert torch.equal(layer.mask, mask)
    assert torch.equal(layer.weight_values.detach(), lin.weight.detach()[mask])
    assert torch.equal(layer.bias.detach(), lin.bias.detach())
    x = torch.randn(6, 12)
    ref64 = F.linear(x.double(), (lin.weight * mask).double(), lin.bias.double())
    base = F.linear(x, lin.weight * mask, lin.bias)
    assert_error_budget(layer(x).detach(), base.detach(), ref64.detach(), 2.0)


def test_load_dense_state_dict_of_wrong_shape_fails_with_message():
    layer = make_layer("csr", 12, 10, 0.5)
    with pytest.raises(RuntimeError, match=r"weight: expected shape \(10, 12\), got \(10, 13\)"):
        layer.load_state_dict(nn.Linear(13, 10).state_dict())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_from_dense_to_dense_round_trip(layout):
    lin = nn.Linear(12, 10)
    mask, bs = make_mask(layout, 10, 12, 0.5)
    layer = SparseLinear.from_dense(lin, mask, block_size=bs)
    assert torch.equal(layer.mask, mask) and layer.block_size == bs
    assert torch.equal(layer.weight_values.detach(), lin.weight.detach()[mask])

    back = layer.to_dense()
    assert type(back) is nn.Linear
    assert back.weight.dtype == lin.weight.dtype and back.weight.device == lin.weight.device
    assert torch.equal(back.weight.detach(), lin.weight.detach() * mask)
    assert torch.equal(back.bias.detach(), lin.bias.detach())
    again = SparseLinear.from_dense(back, mask, block_size=bs)
    assert torch.equal(again.weight_values, layer.weight_values)

    x = torch.randn(6, 12)
    assert_error_budget(layer(x).detach(), back(x).detach(), back.double()(x.double()).detach(), 2.0)


def test_from_dense_float64_and_no_bias():
    lin = nn.Linear(12, 10, bias=False, dtype=F64)
    mask = exact_mask((10, 12), 0.5)
    layer = SparseLinear.from_dense(lin, mask)
    assert layer.bias is None and layer.weight_values.dtype == F64
    assert layer.to_dense().bias is None


# -------------------------------------------------------------------------------------------- set_mask

@pytest.mark.parametrize("layout", LAYOUTS)
def test_set_mask(layout):
    layer = make_layer(layout, 12, 10, 0.5, "sparse")
    old_mask, old_w = layer.mask.clone(), scattered_weight(layer)
    param = layer.weight_values
    new = _other_mask_layer(layer).mask
    layer.set_mask(new)

    assert layer.weight_values is param
    assert torch.equal(layer.mask, new) and layer.nnz == int(new.sum())
    w = scattered_weight(layer)
    assert torch.equal(w[new & old_mask], old_w[new & old_mask])
    assert bool((w[new & ~old_mask] == 0).all())
    expected = (CSRLayout.from_mask(new) if layer.block_size is None
                else BSRLayout.from_mask(new, layer.block_size).block)
    for name, t in zip(("row_offsets", "col_indices", "t_row_offsets", "t_col_indices", "t_perm", "t_perm_inv"),
                       expected.tensors()):
        assert torch.equal(getattr(layer, "_layout_" + name), t), name
    assert_matches_masked_linear(layer, torch.randn(5, 12))


# ---------------------------------------------------------------------------------- module conveniences

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_inference_mode(layout, backend):
    layer = make_layer(layout, 12, 10, 0.5, backend)
    x = torch.randn(5, 12)
    expected = layer(x).detach()
    with torch.inference_mode():
        out = layer(x)
    assert torch.equal(out, expected)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deepcopy_and_double(layout):
    layer = make_layer(layout, 12, 10, 0.5, "sparse")
    clone = copy.deepcopy(layer)
    x = torch.randn(4, 12)
    assert torch.equal(clone(x), layer(x))
    layer.double()
    assert layer.weight_values.dtype == F64 and layer.mask.dtype == torch.bool
    assert_matches_masked_linear(layer, torch.randn(4, 12, dtype=F64))


def test_properties():
    mask = exact_mask((10, 12), 0.75)
    layer = SparseLinear(12, 10, mask=mask)
    assert layer.nnz == 30
    assert layer.density == pytest.approx(0.25) and layer.sparsity == pytest.approx(0.75)
    assert layer.layout_kind == "csr"
    assert SparseLinear(12, 10, mask=block_mask((5, 4), BLOCK, 0.5), block_size=BLOCK).layout_kind == "bsr"
    assert "density=0.2500" in repr(layer)


@pytest.mark.parametrize("profile", CPU_PROFILES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_resolved_backend(layout, profile, monkeypatch):
    monkeypatch.setenv("SPARSEKERN_CPU_PROFILE", profile)
    assert cpu_profile() == profile
    threshold = cpu_min_sparsity(layout)
    low = make_layer(layout, 24, 20, 0.0, "auto")
    high = make_layer(layout, 24, 20, 0.95, "auto")
    at = make_layer(layout, 24, 20, threshold, "auto")
    assert low.sparsity < threshold <= high.sparsity and abs(at.sparsity - threshold) < 0.05
    assert low.resolved_backend() == "dense"
    sparse = "sparse" if _extension.AVAILABLE else "dense"
    assert high.resolved_backend() == sparse
    assert at.resolved_backend() == (sparse if at.sparsity >= threshold - SPARSITY_TOLERANCE else "dense")
    for backend in BACKENDS:
        assert make_layer(layout, 24, 20, 0.5, backend).resolved_backend() == backend
    assert_matches_masked_linear(high, torch.randn(5, 24))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resolved_backend_on_cuda_is_dense_until_a_crossover_is_measured(layout, monkeypatch):
    """"auto" on CUDA: dense without a compiled kernel, dense with one while CUDA_MIN_SPARSITY has no entry
    for the layout (unmeasured), sparse at and above the entry once it has one."""
    from sparsekern.nn import backend as backend_module
    layer = make_layer(layout, 24, 20, 0.9 if layout == "csr" else 0.75, "auto")
    monkeypatch.setattr(_extension, "has_compiled_kernels", lambda device, kind="csr": False)
    assert layer.resolved_backend("cuda") == "dense"
    monkeypatch.setattr(_extension, "has_compiled_kernels", lambda device, kind="csr": True)
    monkeypatch.delitem(backend_module.CUDA_MIN_SPARSITY, layer.layout_kind, raising=False)
    assert layer.resolved_backend("cuda") == "dense"
    monkeypatch.setitem(backend_module.CUDA_MIN_SPARSITY, layer.layout_kind, layer.sparsity - 0.1)
    assert layer.resolved_backend("cuda") == "sparse"
    monkeypatch.setitem(backend_module.CUDA_MIN_SPARSITY, layer.layout_kind, layer.sparsity + 0.05)
    assert layer.resolved_backend("cuda") == "dense"
    assert make_layer(layout, 24, 20, 0.5, "sparse").resolved_backend("cuda") == "sparse"


def test_has_compiled_kernels_asks_the_dispatcher_for_cuda():
    """On CUDA a layer family counts as compiled when its op has a CUDA kernel registered (this CPU-only test
    machine registers none for the unstructured ops); unknown devices and kinds have none."""
    registered = torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::csr_spmm_bt", "CUDA")
    assert _extension.has_compiled_kernels("cuda", "csr") == registered
    assert not _extension.has_compiled_kernels("cuda", "no_such_kind")
    assert not _extension.has_compiled_kernels("mps", "csr")


@pytest.mark.parametrize("layout", ["csr", "bsr"])
def test_from_dense_and_to_dense_draw_no_random_numbers(layout):
    """Both copy every value, so neither spends time on a random init nor advances the global RNG."""
    bs = None if layout == "csr" else BLOCK
    lin = nn.Linear(24, 16)
    mask = block_mask((16 // BLOCK[0], 24 // BLOCK[1]), BLOCK, 0.5) if bs else exact_mask((16, 24), 0.5)
    state = torch.get_rng_state()
    layer = SparseLinear.from_dense(lin, mask, block_size=bs)
    back = layer.to_dense()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(layer.weight_values, lin.weight.detach()[mask]) and torch.equal(layer.bias, lin.bias)
    assert torch.equal(back.weight, lin.weight.detach() * mask) and torch.equal(back.bias, lin.bias)


def test_cpu_profile_detection_and_override(monkeypatch):
    """The crossover table follows torch's CPU capability and the CPU's vendor unless SPARSEKERN_CPU_PROFILE
    names one; a wrong name is an error that says what is allowed, not a silent fallback."""
    monkeypatch.delenv("SPARSEKERN_CPU_PROFILE", raising=False)
    detected = cpu_profile()
    capability = torch.backends.cpu.get_cpu_capability()
    assert detected == detect_cpu_profile(capability, _cpu_vendor())
    assert detect_cpu_profile("AVX512", "GenuineIntel") == "avx512"
    assert detect_cpu_profile("AVX512", "AuthenticAMD") == "avx512_amd"
    assert detect_cpu_profile("AVX512", "") == "avx512"  # vendor unreadable: the Intel-measured table
    assert detect_cpu_profile("AVX2", "AuthenticAMD") == detect_cpu_profile("DEFAULT", "GenuineIntel") == "avx2"
    for profile in CPU_PROFILES:
        monkeypatch.setenv("SPARSEKERN_CPU_PROFILE", profile)
        assert cpu_profile() == profile
        assert 0.5 <= cpu_min_sparsity("csr") < 1 and 0.5 <= cpu_min_sparsity("bsr") < 1
    monkeypatch.setenv("SPARSEKERN_CPU_PROFILE", "avx1024")
    with pytest.raises(ValueError, match=r"SPARSEKERN_CPU_PROFILE: expected one of .*avx2.*avx1024"):
        cpu_profile()
