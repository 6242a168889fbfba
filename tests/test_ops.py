"""The four sparsekern ops (csr/bsr x spmm/sddmm): accuracy, gradients, opcheck.

Accuracy follows DESIGN.md: the op's error against a float64 reference must be at most 2x (3x for gradients)
the error of the same-precision plain-PyTorch computation (a dense GEMM on the same, already rounded,
inputs), plus a tiny floor explained in helpers.py. The oracle is computed on the rounded inputs, so input
rounding is not counted against the op:
- float32 ops: ``sparsekern.reference`` run in float64 (forward) or dense float64 GEMMs (gradients);
- float64 ops: the same products in double-double arithmetic (``helpers.exact_mm``), since a float64
  reference is no more accurate than the float64 op it would judge.

Every accuracy test runs two implementations: ``op`` (``torch.ops.sparsekern.*``: the C++ kernel when the
extension is loaded) and ``reference`` (the registered fallback ``_ops._<op>_reference``, i.e. what runs
without the extension, argument checks included).
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from helpers import (assert_error_budget, block_mask, blocks_to_dense, dense_to_blocks, exact_mask,
                     exact_mm, mask_with_pruned_lines, oracle_mm)
from sparsekern import BSRLayout, CSRLayout, _ops, reference

F32, F64 = torch.float32, torch.float64
DTYPES = [F32, F64]

OPS = {
    "csr_spmm": (torch.ops.sparsekern.csr_spmm, _ops._csr_spmm_reference),
    "csr_sddmm": (torch.ops.sparsekern.csr_sddmm, _ops._csr_sddmm_reference),
    "bsr_spmm": (torch.ops.sparsekern.bsr_spmm, _ops._bsr_spmm_reference),
    "bsr_sddmm": (torch.ops.sparsekern.bsr_sddmm, _ops._bsr_sddmm_reference),
    "csr_spmm_bt": (torch.ops.sparsekern.csr_spmm_bt, _ops._spmm_bt_reference(False)),
    "bsr_spmm_bt": (torch.ops.sparsekern.bsr_spmm_bt, _ops._spmm_bt_reference(True)),
    "csr_spmm_sddmm_bt": (torch.ops.sparsekern.csr_spmm_sddmm_bt, _ops._csr_spmm_sddmm_bt_reference),
}
IMPLS = ["op", "reference"]


def _impl(name, impl):
    return OPS[name][0] if impl == "op" else OPS[name][1]


# (n_rows, n_cols, batch): odd sizes that hit every SIMD tail (431 = 6*64 + 2*16 + 15; 70 = 64 + 6), a single
# row, a single column, batch 1 and batch 0.
CSR_SHAPES = [(7, 123, 431), (1, 37, 19), (29, 1, 23), (16, 40, 1), (16, 40, 0), (64, 96, 70)]
MASK_KINDS = [0.0, 0.5, 0.9, 0.99, 1.0, "pruned_lines"]


def _csr_mask(n_rows, n_cols, kind):
    if kind == "pruned_lines":
        return mask_with_pruned_lines((n_rows, n_cols))
    return exact_mask((n_rows, n_cols), kind)


def _weight(mask, dtype):
    """Random weights (never zero at kept positions), zero at pruned ones, already rounded to ``dtype``."""
    return (torch.randn(mask.shape, dtype=F64) * mask).to(dtype)


def _assert_exact_zero_rows(out, rows, what):
    assert torch.equal(out[rows], torch.zeros_like(out[rows])), f"{what}: rows of pruned lines are not exactly 0"


# ------------------------------------------------------------------------------------------------ oracle

def test_reference_oracle_matches_dense_float64():
    """The oracle itself: reference.csr_spmm / csr_sddmm in float64 equal dense float64 GEMMs to ~1e-13."""
    mask = mask_with_pruned_lines((23, 31))
    layout = CSRLayout.from_mask(mask)
    w = _weight(mask, F64)
    dense = torch.randn(31, 45, dtype=F64)
    torch.testing.assert_close(reference.csr_spmm(w[mask], *layout.tensors(), dense), w @ dense,
                               rtol=1e-13, atol=1e-13)
    a, b = torch.randn(23, 45, dtype=F64), torch.randn(31, 45, dtype=F64)
    torch.testing.assert_close(reference.csr_sddmm(a, b, *layout.tensors()), (a @ b.T)[mask],
                               rtol=1e-13, atol=1e-13)
    dense_w = reference.dense_from_csr(w[mask], layout.row_offsets, layout.col_indices, 31)
    assert torch.equal(dense_w, w)
    bmask = block_mask((4, 3), (2, 3), 0.5)
    blayout = BSRLayout.from_mask(bmask, (2, 3))
    bw = _weight(bmask, F64)
    bdense = torch.randn(9, 45, dtype=F64)
    torch.testing.assert_close(reference.bsr_spmm(dense_to_blocks(bw, blayout), *blayout.tensors(), bdense),
                               bw @ bdense, rtol=1e-13, atol=1e-13)
    a, b = torch.randn(8, 45, dtype=F64), torch.randn(9, 45, dtype=F64)
    torch.testing.assert_close(reference.bsr_sddmm(a, b, *blayout.tensors()), dense_to_blocks(a @ b.T, blayout),
                               rtol=1e-13, atol=1e-13)


def test_exact_mm_is_correctly_rounded():
    """The float64 oracle against rational arithmetic, on data spanning 16 orders of magnitude (where a plain
    float64 product loses digits to cancellation)."""
    a = torch.randn(4, 29, dtype=F64) * torch.logspace(-8, 8, 29, dtype=F64)
    b = torch.randn(29, 3, dtype=F64)
    exact = torch.tensor([[float(sum(Fraction(a[i, k].item()) * Fraction(b[k, j].item()) for k in range(29)))
                           for j in range(3)] for i in range(4)], dtype=F64)
    assert torch.equal(exact_mm(a, b), exact)
    assert not torch.equal(a @ b, exact)  # the case is hard enough to need the oracle
    assert torch.equal(exact_mm(a[:, :0], b[:0]), torch.zeros(4, 3, dtype=F64))


# ------------------------------------------------------------------------------------------ CSR forward

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", MASK_KINDS, ids=str)
@pytest.mark.parametrize("shape", CSR_SHAPES, ids=str)
def test_csr_spmm_accuracy(shape, kind, dtype, impl):
    n_rows, n_cols, batch = shape
    mask = _csr_mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    w = _weight(mask, dtype)
    values = w[mask]
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype)

    out = _impl("csr_spmm", impl)(values, *layout.tensors(), dense)

    assert out.dtype == dtype and out.shape == (n_rows, batch)
    if dtype == F32:
        ref = reference.csr_spmm(values.double(), *layout.tensors(), dense.double())
    else:
        ref = oracle_mm(w, dense)
    baseline = torch.mm(reference.dense_from_csr(values, layout.row_offsets, layout.col_indices, n_cols), dense)
    assert_error_budget(out, baseline, ref, 2.0, "csr_spmm")
    _assert_exact_zero_rows(out, ~mask.any(1), "csr_spmm")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", MASK_KINDS, ids=str)
@pytest.mark.parametrize("shape", CSR_SHAPES, ids=str)
def test_csr_sddmm_accuracy(shape, kind, dtype, impl):
    n_rows, n_cols, batch = shape
    mask = _csr_mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    a = torch.randn(n_rows, batch, dtype=F64).to(dtype)
    b = torch.randn(n_cols, batch, dtype=F64).to(dtype)

    out = _impl("csr_sddmm", impl)(a, b, *layout.tensors())

    assert out.dtype == dtype and out.shape == (layout.nnz,)
    if dtype == F32:
        ref = reference.csr_sddmm(a.double(), b.double(), *layout.tensors())
    else:
        ref = oracle_mm(a, b.T)[mask]
    baseline = torch.mm(a, b.T)[mask]
    assert_error_budget(out, baseline, ref, 2.0, "csr_sddmm")


# ------------------------------------------------------------------------------------------ BSR forward

BLOCK_SIZES = [(2, 3), (4, 4), (1, 8), (16, 16)]
# (block grid, batch). Batch 0 has its own test below (test_bsr_ops_batch_zero).
BSR_GRIDS = [((3, 5), 431), ((1, 1), 1), ((1, 4), 19), ((6, 2), 37)]
BSR_KINDS = [0.0, 0.5, 0.9, 1.0, "pruned_lines"]


def _bsr_mask(grid, block_size, kind):
    if kind == "pruned_lines":
        return block_mask(grid, block_size, 0.3, prune_lines=True)
    return block_mask(grid, block_size, kind)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", BSR_KINDS, ids=str)
@pytest.mark.parametrize("grid,batch", BSR_GRIDS, ids=str)
@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=str)
def test_bsr_spmm_accuracy(block_size, grid, batch, kind, dtype, impl):
    mask = _bsr_mask(grid, block_size, kind)
    layout = BSRLayout.from_mask(mask, block_size)
    n_rows, n_cols = mask.shape
    w = _weight(mask, dtype)
    blocks = dense_to_blocks(w, layout)
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype)

    out = _impl("bsr_spmm", impl)(blocks, *layout.tensors(), dense)

    assert out.dtype == dtype and out.shape == (n_rows, batch)
    if dtype == F32:
        ref = reference.bsr_spmm(blocks.double(), *layout.tensors(), dense.double())
    else:
        ref = oracle_mm(w, dense)
    baseline = torch.mm(blocks_to_dense(blocks, layout), dense)
    assert_error_budget(out, baseline, ref, 2.0, "bsr_spmm")
    _assert_exact_zero_rows(out, ~mask.any(1), "bsr_spmm")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", BSR_KINDS, ids=str)
@pytest.mark.parametrize("grid,batch", BSR_GRIDS, ids=str)
@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=str)
def test_bsr_sddmm_accuracy(block_size, grid, batch, kind, dtype, impl):
    mask = _bsr_mask(grid, block_size, kind)
    layout = BSRLayout.from_mask(mask, block_size)
    n_rows, n_cols = mask.shape
    a = torch.randn(n_rows, batch, dtype=F64).to(dtype)
    b = torch.randn(n_cols, batch, dtype=F64).to(dtype)

    out = _impl("bsr_sddmm", impl)(a, b, *layout.tensors())

    assert out.dtype == dtype and out.shape == (layout.block.nnz, *block_size)
    if dtype == F32:
        ref = reference.bsr_sddmm(a.double(), b.double(), *layout.tensors())
    else:
        ref = dense_to_blocks(oracle_mm(a, b.T), layout)
    baseline = dense_to_blocks(torch.mm(a, b.T), layout)
    assert_error_budget(out, baseline, ref, 2.0, "bsr_sddmm")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ops_accept_non_contiguous_operands(dtype, impl):
    """Transposed / strided views as operands give the same result as their contiguous copies."""
    mask = mask_with_pruned_lines((13, 21))
    layout = CSRLayout.from_mask(mask)
    values = torch.randn(2 * layout.nnz, dtype=dtype)[::2]
    dense = torch.randn(37, 21, dtype=dtype).T
    assert not values.is_contiguous() and not dense.is_contiguous()
    spmm = _impl("csr_spmm", impl)
    assert torch.equal(spmm(values, *layout.tensors(), dense), spmm(values.contiguous(), *layout.tensors(),
                                                                   dense.contiguous()))
    a, b = torch.randn(37, 13, dtype=dtype).T, torch.randn(21, 74, dtype=dtype)[:, ::2]
    sddmm = _impl("csr_sddmm", impl)
    assert torch.equal(sddmm(a, b, *layout.tensors()), sddmm(a.contiguous(), b.contiguous(), *layout.tensors()))

    bmask = block_mask((3, 4), (2, 3), 0.5)
    blayout = BSRLayout.from_mask(bmask, (2, 3))
    blocks = torch.randn(blayout.block.nnz, 3, 2, dtype=dtype).transpose(1, 2)
    bdense = torch.randn(37, 12, dtype=dtype).T
    bspmm = _impl("bsr_spmm", impl)
    assert torch.equal(bspmm(blocks, *blayout.tensors(), bdense),
                       bspmm(blocks.contiguous(), *blayout.tensors(), bdense.contiguous()))
    a, b = torch.randn(37, 6, dtype=dtype).T, torch.randn(12, 74, dtype=dtype)[:, ::2]
    bsddmm = _impl("bsr_sddmm", impl)
    assert torch.equal(bsddmm(a, b, *blayout.tensors()), bsddmm(a.contiguous(), b.contiguous(), *blayout.tensors()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_ops_batch_zero(name, dtype, impl):
    """An empty batch gives an empty spmm output and exact-zero sddmm values (an empty dot product is 0)."""
    bs = (2, 3)
    mask = block_mask((3, 4), bs, 0.5)
    if name.startswith("csr"):
        layout = CSRLayout.from_mask(mask)
        values, out_shape = torch.randn(layout.nnz, dtype=dtype), (layout.nnz,)
    else:
        layout = BSRLayout.from_mask(mask, bs)
        values, out_shape = torch.randn(layout.block.nnz, *bs, dtype=dtype), (layout.block.nnz, *bs)
    op = _impl(name, impl)
    if name.endswith("spmm"):
        out = op(values, *layout.tensors(), torch.randn(12, 0, dtype=dtype))
        assert out.shape == (6, 0) and out.dtype == dtype
    elif name.endswith("spmm_bt"):
        out = op(values, *layout.tensors(), torch.randn(12, 0, dtype=dtype), torch.randn(6, dtype=dtype))
        assert out.shape == (0, 6) and out.dtype == dtype
    elif name.endswith("spmm_sddmm_bt"):
        out, dots = op(values, *layout.tensors(), torch.randn(12, 0, dtype=dtype), torch.randn(6, 0, dtype=dtype))
        assert out.shape == (0, 6) and torch.equal(dots, torch.zeros(out_shape, dtype=dtype))
    else:
        out = op(torch.randn(6, 0, dtype=dtype), torch.randn(12, 0, dtype=dtype), *layout.tensors())
        assert out.dtype == dtype
        assert torch.equal(out, torch.zeros(out_shape, dtype=dtype))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", list(OPS))
def test_ops_with_other_thread_counts(name, threads):
    """The kernels split rows across threads: 1 thread (no split) and 3 (uneven parts, more than the cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if name.startswith("csr"):
            mask = mask_with_pruned_lines((37, 45))
            layout = CSRLayout.from_mask(mask)
            to_blocks, to_dense = (lambda w: w[mask]), (lambda v: reference.dense_from_csr(
                v, layout.row_offsets, layout.col_indices, 45))
        else:
            mask = block_mask((9, 5), (4, 4), 0.3, prune_lines=True)
            layout = BSRLayout.from_mask(mask, (4, 4))
            to_blocks, to_dense = (lambda w: dense_to_blocks(w, layout)), (lambda v: blocks_to_dense(v, layout))
        n_rows, n_cols = mask.shape
        op = OPS[name][0]
        if name.endswith("spmm"):
            values = to_blocks(_weight(mask, F32))
            dense = torch.randn(n_cols, 83)
            out = op(values, *layout.tensors(), dense)
            ref = oracle_mm(to_dense(values), dense)
            assert_error_budget(out, to_dense(values) @ dense, ref, 2.0, name)
        elif name.endswith("spmm_sddmm_bt"):
            values, a = to_blocks(_weight(mask, F32)), torch.randn(n_rows, 83)
            dense = torch.randn(n_cols, 83)
            out, dots = op(values, *layout.tensors(), dense, a)
            assert_error_budget(out, (to_dense(values) @ dense).t(), oracle_mm(to_dense(values), dense).t(), 2.0, name)
            assert_error_budget(dots, to_blocks(a @ dense.T), to_blocks(oracle_mm(a, dense.T)), 2.0, name)
        elif name.endswith("spmm_bt"):  # each thread transposes its own rows into the output
            values, bias = to_blocks(_weight(mask, F32)), torch.randn(n_rows)
            dense = torch.randn(n_cols, 83)
            out = op(values, *layout.tensors(), dense, bias)
            assert torch.equal(out, OPS[name[:-3]][0](values, *layout.tensors(), dense).t() + bias)
        else:
            a, b = torch.randn(n_rows, 83), torch.randn(n_cols, 83)
            out = op(a, b, *layout.tensors())
            assert_error_budget(out, to_blocks(a @ b.T), to_blocks(oracle_mm(a, b.T)), 2.0, name)
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------- gradients
# Oracle: the gradient formulas as dense GEMMs in float64 (exact for float64 data), independent of the
# closed-op-set backward; baseline: the same dense GEMMs in the op's dtype. Budget 3x.

GRAD_CSR_SHAPES = [(7, 123, 431), (16, 40, 1), (64, 96, 70), (1, 37, 19), (29, 1, 23)]
GRAD_KINDS = [0.0, 0.5, 0.99, "pruned_lines"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", GRAD_KINDS, ids=str)
@pytest.mark.parametrize("shape", GRAD_CSR_SHAPES, ids=str)
def test_csr_spmm_grad_accuracy(shape, kind, dtype):
    n_rows, n_cols, batch = shape
    mask = _csr_mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    w = _weight(mask, dtype)
    values = w[mask].requires_grad_()
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype).requires_grad_()
    g = torch.randn(n_rows, batch, dtype=F64).to(dtype)

    torch.ops.sparsekern.csr_spmm(values, *layout.tensors(), dense).backward(g)

    d = dense.detach()
    assert values.grad.shape == (layout.nnz,)
    assert_error_budget(values.grad, (g @ d.T)[mask], oracle_mm(g, d.T)[mask], 3.0, "d_values")
    assert_error_budget(dense.grad, w.T @ g, oracle_mm(w.T, g), 3.0, "d_dense")
    _assert_exact_zero_rows(dense.grad, ~mask.any(0), "d_dense")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", GRAD_KINDS, ids=str)
@pytest.mark.parametrize("shape", GRAD_CSR_SHAPES, ids=str)
def test_csr_sddmm_grad_accuracy(shape, kind, dtype):
    n_rows, n_cols, batch = shape
    mask = _csr_mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    a = torch.randn(n_rows, batch, dtype=F64).to(dtype).requires_grad_()
    b = torch.randn(n_cols, batch, dtype=F64).to(dtype).requires_grad_()
    g = torch.randn(layout.nnz, dtype=F64).to(dtype)

    torch.ops.sparsekern.csr_sddmm(a, b, *layout.tensors()).backward(g)

    gd = reference.dense_from_csr(g, layout.row_offsets, layout.col_indices, n_cols)
    a_, b_ = a.detach(), b.detach()
    assert_error_budget(a.grad, gd @ b_, oracle_mm(gd, b_), 3.0, "d_a")
    assert_error_budget(b.grad, gd.T @ a_, oracle_mm(gd.T, a_), 3.0, "d_b")
    _assert_exact_zero_rows(a.grad, ~mask.any(1), "d_a")
    _assert_exact_zero_rows(b.grad, ~mask.any(0), "d_b")


GRAD_BSR = [((2, 3), (3, 5), 431), ((4, 4), (6, 2), 37), ((1, 8), (5, 3), 1), ((16, 16), (2, 3), 70)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", [0.0, 0.5, "pruned_lines"], ids=str)
@pytest.mark.parametrize("block_size,grid,batch", GRAD_BSR, ids=str)
def test_bsr_spmm_grad_accuracy(block_size, grid, batch, kind, dtype):
    mask = _bsr_mask(grid, block_size, kind)
    layout = BSRLayout.from_mask(mask, block_size)
    n_rows, n_cols = mask.shape
    w = _weight(mask, dtype)
    blocks = dense_to_blocks(w, layout).requires_grad_()
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype).requires_grad_()
    g = torch.randn(n_rows, batch, dtype=F64).to(dtype)

    torch.ops.sparsekern.bsr_spmm(blocks, *layout.tensors(), dense).backward(g)

    d = dense.detach()
    assert_error_budget(blocks.grad, dense_to_blocks(g @ d.T, layout),
                        dense_to_blocks(oracle_mm(g, d.T), layout), 3.0, "d_values")
    assert_error_budget(dense.grad, w.T @ g, oracle_mm(w.T, g), 3.0, "d_dense")
    _assert_exact_zero_rows(dense.grad, ~mask.any(0), "d_dense")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", [0.0, 0.5, "pruned_lines"], ids=str)
@pytest.mark.parametrize("block_size,grid,batch", GRAD_BSR, ids=str)
def test_bsr_sddmm_grad_accuracy(block_size, grid, batch, kind, dtype):
    mask = _bsr_mask(grid, block_size, kind)
    layout = BSRLayout.from_mask(mask, block_size)
    n_rows, n_cols = mask.shape
    a = torch.randn(n_rows, batch, dtype=F64).to(dtype).requires_grad_()
    b = torch.randn(n_cols, batch, dtype=F64).to(dtype).requires_grad_()
    g = torch.randn(layout.block.nnz, *block_size, dtype=F64).to(dtype)

    torch.ops.sparsekern.bsr_sddmm(a, b, *layout.tensors()).backward(g)

    gd = blocks_to_dense(g, layout)
    a_, b_ = a.detach(), b.detach()
    assert_error_budget(a.grad, gd @ b_, oracle_mm(gd, b_), 3.0, "d_a")
    assert_error_budget(b.grad, gd.T @ a_, oracle_mm(gd.T, a_), 3.0, "d_b")
    _assert_exact_zero_rows(a.grad, ~mask.any(1), "d_a")
    _assert_exact_zero_rows(b.grad, ~mask.any(0), "d_b")


# ------------------------------------------------------------------ batch-major output (*_spmm_bt, layers)

def _spmm_bt_case(layout_kind, case, kind, dtype):
    """(values, layout tensors, the dense masked weight, batch) for one CSR shape or BSR grid."""
    if layout_kind == "csr":
        n_rows, n_cols, batch = case
        mask = _csr_mask(n_rows, n_cols, kind)
        w = _weight(mask, dtype)
        return w[mask], CSRLayout.from_mask(mask).tensors(), w, batch
    (grid, batch), block_size = case
    mask = _bsr_mask(grid, block_size, kind)
    layout = BSRLayout.from_mask(mask, block_size)
    w = _weight(mask, dtype)
    return dense_to_blocks(w, layout), layout.tensors(), w, batch


_BT_CASES = ([("csr", shape) for shape in CSR_SHAPES]
             + [("bsr", (grid_batch, bs)) for grid_batch in BSR_GRIDS for bs in [(2, 3), (16, 16)]])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", [0.0, 0.5, 0.99, 1.0, "pruned_lines"], ids=str)
@pytest.mark.parametrize("layout_kind,case", _BT_CASES, ids=str)
def test_spmm_bt_is_the_transposed_product_plus_bias(layout_kind, case, kind, dtype, with_bias):
    """The kernel's in-cache transpose and bias add are exact: (S @ dense)ᵀ + bias, bit for bit, with the
    feature-major op's own product (whose float64 accuracy the tests above hold against the exact oracle); in
    float32 the float64 reference agrees within the error budget."""
    values, lt, w, batch = _spmm_bt_case(layout_kind, case, kind, dtype)
    n_rows, n_cols = w.shape
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype)
    bias = torch.randn(n_rows, dtype=F64).to(dtype) if with_bias else None
    spmm, spmm_bt = OPS[f"{layout_kind}_spmm"][0], OPS[f"{layout_kind}_spmm_bt"]
    out = spmm_bt[0](values, *lt, dense, bias)
    product = spmm(values, *lt, dense).t()
    expected = product + bias if with_bias else product
    assert out.shape == (batch, n_rows) and out.is_contiguous() and out.dtype == dtype
    assert torch.equal(out, expected)
    if dtype == F64:
        return
    ref = spmm_bt[1](values.double(), *lt, dense.double(), None if bias is None else bias.double())
    # DESIGN.md's baseline is plain PyTorch in out's dtype: the dense GEMM (the reference op sums in float64).
    baseline = (w @ dense).t() + bias if with_bias else (w @ dense).t()
    assert_error_budget(out, baseline, ref, 2.0, f"{layout_kind}_spmm_bt")


@pytest.mark.parametrize("name", ["csr_spmm_bt", "bsr_spmm_bt"])
@pytest.mark.parametrize("impl", IMPLS)
def test_spmm_bt_bad_bias(name, impl):
    op, args, _ = _small_case(name, 0.5, requires_grad=False)
    *rest, bias = args
    expected = r"bias: expected shape \(5,\)" if name.startswith("csr") else "bias: expected shape"
    with pytest.raises(ValueError, match=expected):
        _impl(name, impl)(*rest, bias[:-1])
    with pytest.raises(TypeError, match="bias: expected dtype"):
        _impl(name, impl)(*rest, bias.float())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", MASK_KINDS, ids=str)
@pytest.mark.parametrize("shape", CSR_SHAPES, ids=str)
def test_csr_spmm_sddmm_bt_accuracy(shape, kind, dtype, impl):
    """Both products of the fused pass (a CSR layer's backward) against float64, at every batch tail."""
    n_rows, n_cols, batch = shape
    mask = _csr_mask(n_rows, n_cols, kind)
    layout = CSRLayout.from_mask(mask)
    w = _weight(mask, dtype)
    dense = torch.randn(n_cols, batch, dtype=F64).to(dtype)
    other = torch.randn(n_rows, batch, dtype=F64).to(dtype)
    out, dots = _impl("csr_spmm_sddmm_bt", impl)(w[mask], *layout.tensors(), dense, other)
    assert out.shape == (batch, n_rows) and dots.shape == (layout.nnz,) and out.dtype == dots.dtype == dtype
    assert_error_budget(out, (w @ dense).t(), oracle_mm(w, dense).t(), 2.0, "out")
    assert_error_budget(dots, (other @ dense.t())[mask], oracle_mm(other, dense.t())[mask], 2.0, "dots")
    _assert_exact_zero_rows(out.t(), ~mask.any(1), "out")


# ------------------------------------------------------------------------- gradcheck / gradgradcheck / opcheck

def _small_case(name, kind="pruned_lines", dtype=F64, requires_grad=True, batch=3):
    """(op, args, indices of differentiable args) for a small float64 problem of op ``name``."""
    if name.startswith("csr"):
        mask = _csr_mask(5, 7, kind) if kind != "pruned_lines" else mask_with_pruned_lines((5, 7), 0.4)
        layout = CSRLayout.from_mask(mask)
        n_rows, n_cols = mask.shape
        values = torch.randn(layout.nnz, dtype=dtype)
    else:
        mask = _bsr_mask((2, 3), (2, 3), kind)
        layout = BSRLayout.from_mask(mask, (2, 3))
        n_rows, n_cols = mask.shape
        values = torch.randn(layout.block.nnz, 2, 3, dtype=dtype)
    lt = layout.tensors()
    if name.endswith("spmm"):
        dense = torch.randn(n_cols, batch, dtype=dtype)
        args, diff = (values, *lt, dense), (0, 7)
    elif name.endswith("spmm_bt"):
        dense, bias = torch.randn(n_cols, batch, dtype=dtype), torch.randn(n_rows, dtype=dtype)
        args, diff = (values, *lt, dense, bias), (0, 7, 8)
    elif name.endswith("spmm_sddmm_bt"):
        dense, other = torch.randn(n_cols, batch, dtype=dtype), torch.randn(n_rows, batch, dtype=dtype)
        args, diff = (values, *lt, dense, other), (0, 7, 8)
    else:
        a, b = torch.randn(n_rows, batch, dtype=dtype), torch.randn(n_cols, batch, dtype=dtype)
        args, diff = (a, b, *lt), (0, 1)
    args = tuple(t.requires_grad_(requires_grad) if i in diff else t for i, t in enumerate(args))
    return OPS[name][0], args, diff


def _differentiable(op, args, diff):
    def fn(*xs):
        full = list(args)
        for i, x in zip(diff, xs):
            full[i] = x
        return op(*full)
    return fn, tuple(args[i] for i in diff)


@pytest.mark.parametrize("kind", [0.5, "pruned_lines"], ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_op_gradcheck_and_gradgradcheck(name, kind):
    op, args, diff = _small_case(name, kind)
    fn, inputs = _differentiable(op, args, diff)
    assert gradcheck(fn, inputs)
    # The backward is written with the ops themselves, so it is differentiable again. fast_mode checks the
    # second derivative along random directions (full mode costs ~20x the op calls for the same verdict
    # on a wrong formula).
    assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("kind", [0.5, "pruned_lines", 1.0], ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name, kind, requires_grad):
    for dtype in DTYPES:
        op, args, _ = _small_case(name, kind, dtype=dtype, requires_grad=requires_grad)
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["csr_spmm_bt", "bsr_spmm_bt", "csr_spmm_sddmm_bt"])
def test_batch_major_output_of_a_tall_layer(name, threads):
    """More rows per thread than one output tile holds (output_sink.h: 2048): the tiles follow each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if name.startswith("csr"):
            mask = exact_mask((5003, 7), 0.5)
            layout = CSRLayout.from_mask(mask)
            w = _weight(mask, F32)
            values = w[mask]
        else:
            mask = block_mask((1251, 2), (4, 4), 0.5)
            layout = BSRLayout.from_mask(mask, (4, 4))
            w = _weight(mask, F32)
            values = dense_to_blocks(w, layout)
        n_rows, n_cols = mask.shape
        dense, other = torch.randn(n_cols, 70), torch.randn(n_rows, 70)
        if name == "csr_spmm_sddmm_bt":
            out, dots = _ops.csr_spmm_sddmm_bt(values, *layout.tensors(), dense, other)
            assert_error_budget(dots, (other @ dense.t())[mask], oracle_mm(other, dense.t())[mask], 2.0, "dots")
        else:
            out = OPS[name][0](values, *layout.tensors(), dense, None)
        assert_error_budget(out, (w @ dense).t(), oracle_mm(w, dense).t(), 2.0, name)
    finally:
        torch.set_num_threads(previous)
