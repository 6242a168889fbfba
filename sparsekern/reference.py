"""Pure-PyTorch versions of every sparsekern op: the fallback kernel when no compiled kernel is registered
for a device, and the oracle the tests compare the kernels against.

Conventions shared by all ops (see ``_ops.py``): a sparse matrix ``S`` of shape ``(n_rows, n_cols)`` is given
by its kept values and layout tensors (``layout.py``); dense operands are *feature-major*, i.e. an
activation batch of ``B`` samples is stored as ``(features, B)``. Then the three GEMMs of a sparse Linear
are ``Yᵀ = W Xᵀ`` (spmm), ``dXᵀ = Wᵀ dYᵀ`` (spmm on the transposed layout) and
``dW = (dYᵀ X) ⊙ M`` (sddmm: a dot product over the batch at every kept position).

These never form a dense ``S``; they gather rows of the dense operand per kept entry, in chunks so the
temporary stays bounded.
"""
from __future__ import annotations

import torch

from .layout import row_ids

# Kept entries processed per step: bounds the (chunk, B) temporary to a few MB for typical batches.
_CHUNK_ELEMENTS = 1 << 22


def _chunks(nnz: int, batch: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, batch))
    for start in range(0, nnz, step):
        yield slice(start, min(nnz, start + step))


def _scatter_products(values, rows, cols, dense, n_rows):
    """``out[rows[i]] += values[i] · dense[cols[i]]`` over all entries i; out (n_rows, B).

    float32 sums run in float64: index_add_ adds a row's products one after another, and that serial float32
    sum measured 2.9x the error of a float32 GEMM (7x123 at batch 431 on an AVX2 machine), over DESIGN.md's 2x.
    """
    acc_dtype = torch.float64 if dense.dtype == torch.float32 else dense.dtype
    out = dense.new_zeros(n_rows, dense.shape[1], dtype=acc_dtype)
    for s in _chunks(values.numel(), dense.shape[1]):
        out.index_add_(0, rows[s], (values[s, None] * dense[cols[s]]).to(acc_dtype))
    return out.to(dense.dtype)


def _entry_dots(a, b, rows, cols):
    """``out[i] = a[rows[i]] · b[cols[i]]`` (dot over the batch)."""
    out = a.new_empty(cols.numel())
    for s in _chunks(cols.numel(), a.shape[1]):
        out[s] = (a[rows[s]] * b[cols[s]]).sum(-1)
    return out


def csr_spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """``out[r] = Σ_{i in row r} values[i] · dense[col_indices[i]]``; dense (n_cols, B) → out (n_rows, B)."""
    return _scatter_products(values, row_ids(row_offsets), col_indices.long(), dense, row_offsets.numel() - 1)


def csr_sddmm(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """``out[i] = a[row(i)] · b[col_indices[i]]`` (dot over the batch); a (n_rows, B), b (n_cols, B)."""
    return _entry_dots(a, b, row_ids(row_offsets), col_indices.long())


def bsr_spmm(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """Block version of csr_spmm: values (nnzb, bh, bw); dense (n_block_cols·bw, B) → (n_block_rows·bh, B)."""
    nnzb, bh, bw = values.shape
    n_block_rows = row_offsets.numel() - 1
    batch = dense.shape[1]
    out = dense.new_zeros(n_block_rows, bh, batch)
    dense_blocks = dense.view(t_row_offsets.numel() - 1, bw, batch)
    rows = row_ids(row_offsets)
    cols = col_indices.long()
    for s in _chunks(nnzb, batch * bh * bw):
        out.index_add_(0, rows[s], torch.bmm(values[s], dense_blocks[cols[s]]))
    return out.view(n_block_rows * bh, batch)


def bsr_sddmm(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """Block version of csr_sddmm: out[k] = a_rows(k) @ b_rows(k)ᵀ, (nnzb, bh, bw)."""
    n_block_rows = row_offsets.numel() - 1
    n_block_cols = t_row_offsets.numel() - 1
    batch = a.shape[1]
    a_blocks = a.view(n_block_rows, a.shape[0] // n_block_rows, batch)
    b_blocks = b.view(n_block_cols, b.shape[0] // n_block_cols, batch)
    rows = row_ids(row_offsets)
    cols = col_indices.long()
    out = a.new_empty(cols.numel(), a_blocks.shape[1], b_blocks.shape[1])
    for s in _chunks(cols.numel(), batch * a_blocks.shape[1] * b_blocks.shape[1]):
        out[s] = torch.bmm(a_blocks[rows[s]], b_blocks[cols[s]].transpose(1, 2))
    return out


def dense_from_csr(values, row_offsets, col_indices, n_cols):
    """The dense matrix a CSR operand stands for (csr_to_dense). Dense fallback and tests, never a sparse path."""
    out = values.new_zeros(row_offsets.numel() - 1, n_cols)
    out[row_ids(row_offsets), col_indices.long()] = values
    return out


def csr_values_from_dense(dense, row_offsets, col_indices):
    """The entries of ``dense`` at the stored positions, in CSR order (csr_from_dense)."""
    return dense[row_ids(row_offsets), col_indices.long()]


# ------------------------------------------------------------------------------------------ convolution
# A sparse Conv2d is a sparse GEMM over the unfolded input (im2col): the weight viewed as
# (C_out, C_in/groups · kH · kW) is the CSR matrix, and with groups, output channel o of group g reads the
# unfolded rows of group g only. The reference unfolds the whole input (memory: kH·kW times the input), so
# it suits tests and the fallback on devices without a kernel, not large layers.

def _unfolded_columns(row_offsets, col_indices, n_cols, groups):
    """(row, unfolded-input row) of every entry: the column plus its group's offset, n_cols per group."""
    rows = row_ids(row_offsets)
    rows_per_group = (row_offsets.numel() - 1) // groups
    return rows, col_indices.long() + (rows // rows_per_group) * n_cols


def _unfold_feature_major(x, kernel_size, stride, padding, dilation):
    """im2col of x (N, C, H, W) as (C·kH·kW, N·L), L = output pixels."""
    u = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return u.transpose(0, 1).reshape(u.shape[1], -1)


def csr_conv2d(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, bias,
               kernel_size, stride, padding, dilation, groups, output_size):
    """y (N, C_out, OH, OW) = conv2d(x, W) + bias, W given by its kept values; work ∝ kept weights."""
    n, n_rows = x.shape[0], row_offsets.numel() - 1
    rows, cols = _unfolded_columns(row_offsets, col_indices, t_row_offsets.numel() - 1, groups)
    u = _unfold_feature_major(x, kernel_size, stride, padding, dilation)
    out = _scatter_products(values, rows, cols, u, n_rows).view(n_rows, n, *output_size).transpose(0, 1)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous()


def csr_conv2d_input_grad(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                          t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """dx (N, C_in, H, W) of y = conv2d(x, W) given dy = grad (N, C_out, OH, OW): Wᵀ on the unfolded grid, folded."""
    n, n_cols = grad.shape[0], t_row_offsets.numel() - 1
    rows, cols = _unfolded_columns(row_offsets, col_indices, n_cols, groups)
    g = grad.transpose(0, 1).reshape(grad.shape[1], -1)  # (C_out, N·L)
    du = _scatter_products(values, cols, rows, g, n_cols * groups)  # (C_in·kH·kW, N·L)
    du = du.view(du.shape[0], n, grad.shape[2] * grad.shape[3]).transpose(0, 1)  # n may be 0
    return torch.nn.functional.fold(du, tuple(input_size), kernel_size, dilation=dilation, padding=padding,
                                    stride=stride)


def csr_conv2d_weight_grad(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                           kernel_size, stride, padding, dilation, groups):
    """dW at the kept weights only (nnz,): each a dot of dy's channel with the unfolded input row it multiplies."""
    rows, cols = _unfolded_columns(row_offsets, col_indices, t_row_offsets.numel() - 1, groups)
    u = _unfold_feature_major(x, kernel_size, stride, padding, dilation)
    g = grad.transpose(0, 1).reshape(grad.shape[1], -1)
    return _entry_dots(g, u, rows, cols)
