"""transpose()'s padded row stride (feature_major_stride) and the kernels reading such operands in place.

Rows of 257 B to 1 KB get an odd number of cache lines (csrc/cpu/feature_major.h says why); every kernel
must give the same result on that layout as on a contiguous copy, for each operand it reads, with batch
tails (a batch that is not a whole number of 64-float chunks) included.
"""
from __future__ import annotations

import pytest
import torch

from helpers import block_mask, exact_mask
from sparsekern import BSRLayout, CSRLayout, _ops

F32, F64 = torch.float32, torch.float64


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("batch", [0, 1, 16, 32, 63, 64, 65, 100, 128, 200, 256, 257, 512])
def test_transpose_row_stride(batch, dtype):
    x = torch.randn(batch, 37, dtype=dtype)
    out = _ops.transpose(x)
    assert torch.equal(out, x.t())
    row_bytes = batch * x.element_size()
    ld = _ops.feature_major_stride(batch, x.element_size())
    if 256 < row_bytes <= 1024:
        assert ld * x.element_size() % 64 == 0 and (ld * x.element_size() // 64) % 2 == 1, ld
        assert batch < ld <= batch + 128 // x.element_size()
    else:
        assert ld == batch
    if batch > 1:
        assert out.stride() == (ld, 1)


@pytest.mark.parametrize("shape", [(100, 37), (256, 20), (48, 9)], ids=str)
def test_transpose_opcheck_padded(shape):
    """The fake (meta) kernel reports the padded strides the real kernel produces."""
    dtype = F64 if shape[0] == 48 else F32
    torch.library.opcheck(_ops.transpose, (torch.randn(shape, dtype=dtype, requires_grad=True),))


def _padded(t):
    """t (features, batch) laid out as transpose() lays it out."""
    return _ops.transpose(t.t().contiguous())


def _csr_case(dtype, n_rows=45, n_cols=70):
    layout = CSRLayout.from_mask(exact_mask((n_rows, n_cols), 0.6)).tensors()
    return layout, torch.randn(int(layout[1].numel()), dtype=dtype)


def _bsr_case(dtype):
    mask = block_mask((9, 7), (4, 4), 0.4)
    layout = BSRLayout.from_mask(mask, (4, 4))
    return layout.tensors(), torch.randn(layout.block.nnz, 4, 4, dtype=dtype), 36, 28


# batch 100: one 64-float chunk plus a tail; 256: four full chunks; 48 float64 (384 B rows, padded to 7 lines).
CASES = [(100, F32), (256, F32), (48, F64)]


@pytest.mark.parametrize("batch,dtype", CASES, ids=str)
def test_csr_kernels_read_padded_operands(batch, dtype):
    layout, values = _csr_case(dtype)
    tl = (layout[2], layout[3], layout[0], layout[1], layout[5], layout[4])
    values_t = _ops.permute(values, layout[4], layout[5])
    n_rows, n_cols = layout[0].numel() - 1, layout[2].numel() - 1
    dense, a = torch.randn(n_cols, batch, dtype=dtype), torch.randn(n_rows, batch, dtype=dtype)
    bias = torch.randn(n_rows, dtype=dtype)
    dp, ap = _padded(dense), _padded(a)
    assert not dp.is_contiguous() and dp.stride(0) > batch
    close = torch.testing.assert_close
    close(_ops.csr_spmm(values, *layout, dp), _ops.csr_spmm(values, *layout, dense))
    close(_ops.csr_spmm_bt(values, *layout, dp, bias), _ops.csr_spmm_bt(values, *layout, dense, bias))
    close(_ops.csr_sddmm(ap, dp, *layout), _ops.csr_sddmm(a, dense, *layout))
    close(_ops.csr_sddmm(a, dp, *layout), _ops.csr_sddmm(a, dense, *layout))  # one operand padded
    close(_ops.csr_sddmm(ap, dense, *layout), _ops.csr_sddmm(a, dense, *layout))
    # The fused backward walks Wᵀ: dense = dYᵀ (n_rows, B), other = Xᵀ (n_cols, B).
    grad_t, xt = a, dense
    fused = _ops.csr_spmm_sddmm_bt(values_t, *tl, _padded(grad_t), _padded(xt))
    expected = _ops.csr_spmm_sddmm_bt(values_t, *tl, grad_t, xt)
    close(fused[0], expected[0])
    close(fused[1], expected[1])


@pytest.mark.parametrize("batch,dtype", CASES, ids=str)
def test_bsr_kernels_read_padded_operands(batch, dtype):
    layout, blocks, n_rows, n_cols = _bsr_case(dtype)
    dense, a = torch.randn(n_cols, batch, dtype=dtype), torch.randn(n_rows, batch, dtype=dtype)
    bias = torch.randn(n_rows, dtype=dtype)
    dp, ap = _padded(dense), _padded(a)
    close = torch.testing.assert_close
    close(_ops.bsr_spmm(blocks, *layout, dp), _ops.bsr_spmm(blocks, *layout, dense))
    close(_ops.bsr_spmm_bt(blocks, *layout, dp, bias), _ops.bsr_spmm_bt(blocks, *layout, dense, bias))
    close(_ops.bsr_sddmm(ap, dp, *layout), _ops.bsr_sddmm(a, dense, *layout))
    close(_ops.bsr_sddmm(a, dp, *layout), _ops.bsr_sddmm(a, dense, *layout))


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_linear_saves_padded_input(kind):
    """csr_linear/bsr_linear return xᵀ laid out as transpose() lays it out (what the backward reads)."""
    if kind == "csr":
        layout, values = _csr_case(F32)
        op, n_cols = _ops.csr_linear, layout[2].numel() - 1
    else:
        layout, values, _, n_cols = _bsr_case(F32)
        op = _ops.bsr_linear
    x = torch.randn(256, n_cols)
    _, xt = op(x, values, *layout, None)
    assert torch.equal(xt, x.t()) and xt.stride() == (_ops.feature_major_stride(256, 4), 1)


def test_other_strided_operands_are_copied():
    """An operand with some other row stride (here a column slice) is read through a contiguous copy."""
    layout, values = _csr_case(F32)
    n_cols = layout[2].numel() - 1
    wide = torch.randn(n_cols, 300)
    view = wide[:, 10:110]
    torch.testing.assert_close(_ops.csr_spmm(values, *layout, view),
                               _ops.csr_spmm(values, *layout, view.contiguous()))
