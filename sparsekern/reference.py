"""Pure-PyTorch versions of every sparsekern op: the fallback kernel when no compiled kernel is registered
for a device, and the oracle the tests compare the kernels against.

Conventions shared by all ops (see ``_ops.py``): a sparse matrix ``S`` of shape ``(n_rows, n_cols)`` is given
by its kept values and layout tensors (``layout.py``); dense operands are *feature-major*, i.e. an
activation batch of ``B`` samples is stored as ``(features, B)``. Then the three GEMMs of a sparse Linear
are ``Yᵀ = W Xᵀ`` (spmm), ``dXᵀ = Wᵀ dYᵀ`` (spmm on the transposed layout) and
``dW = (dYᵀ X) ⊙ M`` (sddmm: a dot product over the batch at every kept position).

These never form a dense ``S``; they gather rows of the dense operand per kept entry, in chunks so the
temporary stays bounded.

Precision: the result has the inputs' dtype. float16 and bfloat16 are computed with float32 products and
float32 sums and rounded once at the end, as the GPU kernels (tensor cores) do; float32 sums of many
products in float64 (see ``_scatter_products``); float64 in float64.
"""
from __future__ import annotations

import torch

from .layout import row_ids

# Kept entries processed per step: bounds the (chunk, B) temporary to a few MB for typical batches.
_CHUNK_ELEMENTS = 1 << 22

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products and sums are formed in: float32 for the 16-bit types, else the dtype itself."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _chunks(nnz: int, batch: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, batch))
    for start in range(0, nnz, step):
        yield slice(start, min(nnz, start + step))


def _scatter_products(values, rows, cols, dense, n_rows, out_dtype=None):
    """``out[rows[i]] += values[i] · dense[cols[i]]`` over all entries i; out (n_rows, B), of ``out_dtype``
    (default: dense's; a caller that sums further before rounding asks for ``_compute_dtype``).

    float32 sums run in float64: index_add_ adds a row's products one after another, and that serial float32
    sum measured 2.9x the error of a float32 GEMM (7x123 at batch 431 on an AVX2 machine), over DESIGN.md's 2x.
    float16/bfloat16 products and sums run in float32 (each product of two 16-bit numbers is exact there).
    """
    compute = _compute_dtype(dense.dtype)
    acc_dtype = torch.float64 if dense.dtype == torch.float32 else compute
    out = dense.new_zeros(n_rows, dense.shape[1], dtype=acc_dtype)
    for s in _chunks(values.numel(), dense.shape[1]):
        products = values[s, None].to(compute) * dense[cols[s]].to(compute)
        out.index_add_(0, rows[s], products.to(acc_dtype))
    return out.to(out_dtype or dense.dtype)


def _entry_dots(a, b, rows, cols):
    """``out[i] = a[rows[i]] · b[cols[i]]`` (dot over the batch); float32 sums for 16-bit inputs."""
    compute = _compute_dtype(a.dtype)
    out = a.new_empty(cols.numel())
    for s in _chunks(cols.numel(), a.shape[1]):
        out[s] = (a[rows[s]].to(compute) * b[cols[s]].to(compute)).sum(-1)  # one rounding, at the store
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
    compute = _compute_dtype(dense.dtype)  # a row's block products are summed in float32 for 16-bit inputs
    out = dense.new_zeros(n_block_rows, bh, batch, dtype=compute)
    dense_blocks = dense.view(t_row_offsets.numel() - 1, bw, batch)
    rows = row_ids(row_offsets)
    cols = col_indices.long()
    for s in _chunks(nnzb, batch * bh * bw):
        out.index_add_(0, rows[s], torch.bmm(values[s].to(compute), dense_blocks[cols[s]].to(compute)))
    return out.view(n_block_rows * bh, batch).to(dense.dtype)


def bsr_sddmm(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """Block version of csr_sddmm: out[k] = a_rows(k) @ b_rows(k)ᵀ, (nnzb, bh, bw)."""
    n_block_rows = row_offsets.numel() - 1
    n_block_cols = t_row_offsets.numel() - 1
    batch = a.shape[1]
    a_blocks = a.view(n_block_rows, a.shape[0] // n_block_rows, batch)
    b_blocks = b.view(n_block_cols, b.shape[0] // n_block_cols, batch)
    rows = row_ids(row_offsets)
    cols = col_indices.long()
    compute = _compute_dtype(a.dtype)
    out = a.new_empty(cols.numel(), a_blocks.shape[1], b_blocks.shape[1])
    for s in _chunks(cols.numel(), batch * a_blocks.shape[1] * b_blocks.shape[1]):
        out[s] = torch.bmm(a_blocks[rows[s]].to(compute), b_blocks[cols[s]].transpose(1, 2).to(compute))
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
    compute = _compute_dtype(x.dtype)  # the bias joins the float32 sum of 16-bit inputs: one rounding
    out = _scatter_products(values, rows, cols, u, n_rows, compute).view(n_rows, n, *output_size).transpose(0, 1)
    if bias is not None:
        out = out + bias.to(compute).view(1, -1, 1, 1)
    return out.to(x.dtype).contiguous()


def csr_conv2d_input_grad(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                          t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """dx (N, C_in, H, W) of y = conv2d(x, W) given dy = grad (N, C_out, OH, OW): Wᵀ on the unfolded grid, folded."""
    n, n_cols = grad.shape[0], t_row_offsets.numel() - 1
    rows, cols = _unfolded_columns(row_offsets, col_indices, n_cols, groups)
    g = grad.transpose(0, 1).reshape(grad.shape[1], -1)  # (C_out, N·L)
    # fold sums overlapping patches: in float32 too for 16-bit inputs, rounded once after it.
    du = _scatter_products(values, cols, rows, g, n_cols * groups, _compute_dtype(grad.dtype))  # (C_in·kH·kW, N·L)
    du = du.view(du.shape[0], n, grad.shape[2] * grad.shape[3]).transpose(0, 1)  # n may be 0
    return torch.nn.functional.fold(du, tuple(input_size), kernel_size, dilation=dilation, padding=padding,
                                    stride=stride).to(grad.dtype)


def csr_conv2d_weight_grad(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                           kernel_size, stride, padding, dilation, groups):
    """dW at the kept weights only (nnz,): each a dot of dy's channel with the unfolded input row it multiplies."""
    rows, cols = _unfolded_columns(row_offsets, col_indices, t_row_offsets.numel() - 1, groups)
    u = _unfold_feature_major(x, kernel_size, stride, padding, dilation)
    g = grad.transpose(0, 1).reshape(grad.shape[1], -1)
    return _entry_dots(g, u, rows, cols)


# ------------------------------------------------------------------------------ block-sparse convolution
# The weight viewed tap-major, ``W.permute(0, 2, 3, 1).reshape(C_out, kH·kW·C_in/groups)`` (column
# t·Cg + c for tap t = kh·kW + kw and channel c of the group), is a BSR matrix of (bh, bw) blocks with bw
# dividing Cg: each block column is one tap and bw consecutive input channels, the K-slice an implicit-GEMM
# kernel loads. The reference unfolds the input into the same tap-major order and multiplies block by block.

def activation_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor in that layout (and not also plain contiguous), else contiguous: the
    memory format of a block conv op's output that follows ``t`` (y follows x, dx follows grad)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _unfold_tap_major(x, kernel_size, stride, padding, dilation, groups):
    """im2col of x (N, C, H, W) as (groups·kH·kW·Cg, N·L), rows g·(kH·kW·Cg) + t·Cg + c."""
    u = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    n, _, pixels = u.shape
    taps = kernel_size[0] * kernel_size[1]
    u = u.view(n, groups, x.shape[1] // groups, taps, pixels).transpose(2, 3)  # (N, G, T, Cg, L)
    return u.permute(1, 2, 3, 0, 4).reshape(x.shape[1] * taps, n * pixels)


def _fold_tap_major(du, n, pixels, channels, input_size, kernel_size, stride, padding, dilation, groups):
    """The inverse arrangement of _unfold_tap_major, then col2im (sums overlapping patches)."""
    taps = kernel_size[0] * kernel_size[1]
    du = du.view(groups, taps, channels // groups, n, pixels).permute(3, 0, 2, 1, 4)  # (N, G, Cg, T, L)
    du = du.reshape(n, channels * taps, pixels)
    return torch.nn.functional.fold(du, tuple(input_size), kernel_size, dilation=dilation, padding=padding,
                                    stride=stride)


def _block_coordinates(row_offsets, col_indices, t_row_offsets, groups):
    """(block row, block of the tap-major unfolded input) of every kept block: the block column plus its
    group's offset (a group's output channels read only its own unfolded rows)."""
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    rows = row_ids(row_offsets)
    block_rows_per_group = n_block_rows // groups
    return rows, col_indices.long() + (rows // block_rows_per_group) * n_block_cols


def bsr_conv2d(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, bias,
               kernel_size, stride, padding, dilation, groups, output_size):
    """y (N, C_out, OH, OW) = conv2d(x, W) + bias for the tap-major block-sparse W; work ∝ kept blocks."""
    nnzb, bh, bw = values.shape
    n, n_block_rows = x.shape[0], row_offsets.numel() - 1
    rows, cols = _block_coordinates(row_offsets, col_indices, t_row_offsets, groups)
    compute = _compute_dtype(x.dtype)
    u = _unfold_tap_major(x, kernel_size, stride, padding, dilation, groups)
    u_blocks = u.view(u.shape[0] // bw, bw, u.shape[1])
    out = x.new_zeros(n_block_rows, bh, u.shape[1], dtype=compute)
    for s in _chunks(nnzb, u.shape[1] * bh * bw):
        out.index_add_(0, rows[s], torch.bmm(values[s].to(compute), u_blocks[cols[s]].to(compute)))
    out = out.view(n_block_rows * bh, n, *output_size).transpose(0, 1)
    if bias is not None:
        out = out + bias.to(compute).view(1, -1, 1, 1)
    return out.to(x.dtype).contiguous(memory_format=activation_format(x))


def bsr_conv2d_input_grad(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                          t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """dx (N, C_in, H, W) of y = bsr_conv2d(x, W) given dy = grad: Wᵀ block by block on the unfolded grid,
    folded."""
    nnzb, bh, bw = values.shape
    n, n_block_rows = grad.shape[0], row_offsets.numel() - 1
    n_block_cols = t_row_offsets.numel() - 1
    rows, cols = _block_coordinates(row_offsets, col_indices, t_row_offsets, groups)
    compute = _compute_dtype(grad.dtype)
    g = grad.transpose(0, 1).reshape(grad.shape[1], -1)  # (C_out, N·L)
    g_blocks = g.view(n_block_rows, bh, g.shape[1])
    du = grad.new_zeros(groups * n_block_cols, bw, g.shape[1], dtype=compute)
    for s in _chunks(nnzb, g.shape[1] * bh * bw):
        du.index_add_(0, cols[s], torch.bmm(values[s].transpose(1, 2).to(compute), g_blocks[rows[s]].to(compute)))
    channels = groups * n_block_cols * bw // (kernel_size[0] * kernel_size[1])
    dx = _fold_tap_major(du, n, grad.shape[2] * grad.shape[3], channels, input_size, kernel_size, stride,
                         padding, dilation, groups)
    return dx.to(grad.dtype).contiguous(memory_format=activation_format(grad))


def bsr_conv2d_weight_grad(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                           kernel_size, stride, padding, dilation, groups):
    """dW at the kept blocks only (nnzb, bh, bw): dy's block row times the unfolded block column it multiplies."""
    n_block_rows, n_block_cols = row_offsets.numel() - 1, t_row_offsets.numel() - 1
    bh = grad.shape[1] // n_block_rows
    rows, cols = _block_coordinates(row_offsets, col_indices, t_row_offsets, groups)
    compute = _compute_dtype(x.dtype)
    u = _unfold_tap_major(x, kernel_size, stride, padding, dilation, groups)
    bw = u.shape[0] // (groups * n_block_cols)
    u_blocks = u.view(groups * n_block_cols, bw, u.shape[1])
    g_blocks = grad.transpose(0, 1).reshape(n_block_rows, bh, u.shape[1])
    out = x.new_empty(cols.numel(), bh, bw)
    for s in _chunks(cols.numel(), u.shape[1] * bh * bw):
        out[s] = torch.bmm(g_blocks[rows[s]].to(compute), u_blocks[cols[s]].transpose(1, 2).to(compute))
    return out
