"""The unstructured sparse Conv2d on CUDA tensors: ``sparsekern::csr_conv2d``, ``csr_conv2d_input_grad`` and
``csr_conv2d_weight_grad`` lowered onto the CSR GEMM ops (im2col), so they run the CUDA C++ kernels of
csrc/cuda/ (``csr_spmm``, ``csr_sddmm``) in all three GEMMs of the layer.

Why a lowering: the CUDA C++ kernels exist for the Linear family's CSR GEMMs, and a convolution is such a GEMM
over the unfolded input. With U = im2col(x) feature-major, ``(C_in·kH·kW, N·L)`` (L = OH·OW; the row order
c·kH·kW + kh·kW + kw of ``F.unfold`` is exactly the column order of the CSR conv layout):

    forward          y  = csr_spmm(W, U)                 (C_out, N·L) -> (N, C_out, OH, OW), + bias
    input gradient   dx = col2im(csr_spmm(Wᵀ, dY))       dY = grad as (C_out, N·L); Wᵀ: the CSC-ordered
                                                         values (permute) on the transposed layout
    weight gradient  dW = csr_sddmm(dY, U)               (nnz,): only at the kept weights

Only the kept weights are multiplied (nnz · N · L multiply-adds per GEMM); the unfold and fold are copies.
groups > 1 keeps the reference (``sparsekern.reference``; a grouped conv is a block-diagonal GEMM the CSR
kernels would only see as one wide matrix with per-group column offsets, which the lowering does not build).

Memory: U is kH·kW times the input (ResNet-18's first 3x3 layer at batch 128 in float32: ~300 MB), so the
batch is processed in chunks of whole samples whose unfolded matrix stays under ``CHUNK_BYTES`` (256 MiB; at
least one sample per chunk however large it is; the input gradient holds two such buffers at its peak, see
there). The forward and the input gradient write each chunk into the preallocated output; the weight
gradient sums the chunks' dot products in a fixed order (chunk 0, 1, ...) in the reference's accumulation
dtype (``reference._compute_dtype``: float32 for float32, float16 and bfloat16, float64 for float64), so the
result is deterministic. For float16/bfloat16 the results round more often than the reference's single
rounding: each GEMM's output is rounded to the dtype (the forward before the bias is added, the input
gradient before col2im sums the taps, the weight gradient per chunk); the tolerance rule allows for it.

Registered for the CUDA dispatch key only (``_ops.py`` imports this module): CPU tensors keep the compiled
CPU conv kernels (csrc/cpu/conv2d_*.cpp), other devices the reference. The functions themselves take
tensors of any device; the tests call them on CPU tensors, where the inner csr_spmm / csr_sddmm run the CPU
kernels (or the reference without the extension). Each one, like ``triton/dispatch.py``'s:

1. runs the registry's argument checks (``_ops_conv._check_conv`` / ``_check_conv_input_grad`` /
   ``_check_conv_weight_grad``: shapes, dtypes, geometry, the same messages) and checks that every tensor is
   on the device of the first argument;
2. checks the layout's contents (``_ops._check_layout_values``) once per layout storage (``check_once``);
3. lowers onto the GEMM ops for groups == 1, else runs the **reference fallback**.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _ops, _ops_conv, reference
from .gpu_checks import LAYOUT_NAMES, check_devices, validate_layout_once

# Bound on one chunk's unfolded matrix (bytes): U in the forward and the weight gradient, the unfolded
# gradient Wᵀ dY in the input gradient. Read at call time, so tests can shrink it.
CHUNK_BYTES = 256 << 20


# ------------------------------------------------------------------------------------------- helpers

def _chunks(n: int, rows: int, pixels: int, element_size: int):
    """(start, stop) of consecutive sample chunks whose (rows, samples·pixels) matrix fits in CHUNK_BYTES."""
    per_sample = max(1, rows * pixels * element_size)
    step = max(1, CHUNK_BYTES // per_sample)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _unfold(x, kernel_size, stride, padding, dilation, output_size):
    """im2col of x (n, C, H, W), any strides, as the feature-major (C·kH·kW, n·OH·OW) matrix.

    One gather pass: a strided view (C, kH, kW, n, OH, OW) of the (padded) input, copied by reshape straight
    into the GEMM's layout. ``F.unfold`` would give (n, C·kH·kW, L) and need a second copy of the same size
    to move the sample index next to the pixels, with both copies alive at once.
    """
    ph, pw = padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))  # input-sized, kH·kW times smaller than the result
    n, c = x.shape[:2]
    sn, sc, sh, sw = x.stride()
    kh, kw = kernel_size
    oh, ow = output_size
    view = x.as_strided((c, kh, kw, n, oh, ow),
                        (sc, dilation[0] * sh, dilation[1] * sw, sn, stride[0] * sh, stride[1] * sw),
                        x.storage_offset())
    u = view.reshape(c * kh * kw, n * oh * ow)  # a copy, unless the view already is that matrix (1x1, n=1)
    # The GEMM kernels want unit column stride (the CUDA ones would copy otherwise, the CPU ones pack anyway).
    return u if u.shape[1] <= 1 or u.stride(1) == 1 else u.contiguous()


def _feature_major_grad(grad):
    """dY (n, C_out, OH, OW) as (C_out, n·OH·OW): output-sized, one copy (none for one contiguous sample)."""
    return grad.transpose(0, 1).reshape(grad.shape[1], -1)


# ------------------------------------------------------------------------------------------- the three ops

def csr_conv2d_im2col(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv,
                      bias, kernel_size, stride, padding, dilation, groups):
    """``sparsekern::csr_conv2d`` as ``csr_spmm`` over the unfolded input: y (N, C_out, OH, OW) contiguous =
    conv2d(x, W) + bias; x (N, C_in, H, W) of any strides, values (nnz,) of W viewed as (C_out, C_in·kH·kW).

    csr_spmm, not csr_spmm_bt: the output must be NCHW-contiguous (the op's contract, and its fake's). The
    feature-major product (C_out, n·L) is NCHW with the two outer dimensions swapped, so putting it in place
    is a copy of contiguous runs of L pixels per (channel, sample), fused with the bias add. csr_spmm_bt with
    the batch n·L would store (n·L, C_out), i.e. NHWC (its shared-memory transpose works the wrong way for
    this output), and turning that into NCHW is a second real transpose (channel <-> pixel) of the output.
    """
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    shape = _ops_conv._check_conv(x, values, layout, bias, kernel_size, stride, padding, dilation, groups)
    check_devices(x.device, "x", (("values", values), *zip(LAYOUT_NAMES, layout), ("bias", bias)))
    validate_layout_once(layout)
    if groups != 1:
        return _reference_fallback_csr_conv2d(x, values, layout, bias, kernel_size, stride, padding, dilation,
                                              groups, shape[2:])
    n, c_out, oh, ow = shape
    pixels = oh * ow
    rows = t_row_offsets.shape[0] - 1  # C_in·kH·kW
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    for start, stop in _chunks(n, rows, pixels, x.element_size()):
        u = _unfold(x[start:stop], kernel_size, stride, padding, dilation, (oh, ow))
        y = _ops.csr_spmm(values, *layout, u).view(c_out, stop - start, pixels).transpose(0, 1)
        dst = out[start:stop].view(stop - start, c_out, pixels)
        if bias is None:
            dst.copy_(y)
        else:
            torch.add(y, bias.view(1, c_out, 1), out=dst)
    return out


def csr_conv2d_input_grad_im2col(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                 t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """``sparsekern::csr_conv2d_input_grad`` as ``csr_spmm`` on the transposed layout, then col2im: dx
    (N, C_in, H, W) contiguous of y = conv2d(x, W), given dy = grad (N, C_out, OH, OW) of any strides.

    Wᵀ is W's values put in CSC order (``permute`` by t_perm) on the transposed layout: the precomputed
    transpose metadata, no re-sort. The fold sums the overlapping patches (in float32 for float16 and
    bfloat16, whose per-tap products csr_spmm has already rounded to the dtype). col2im makes its (n, C_in·kH·kW, L) input
    contiguous, a second chunk-sized buffer next to the GEMM's output: this op's peak is two chunks.
    """
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    shape = _ops_conv._check_conv_input_grad(grad, values, layout, input_size, kernel_size, stride, padding,
                                             dilation, groups)
    check_devices(grad.device, "grad", (("values", values), *zip(LAYOUT_NAMES, layout)))
    validate_layout_once(layout)
    if groups != 1:
        return _reference_fallback_csr_conv2d_input_grad(grad, values, layout, input_size, kernel_size, stride,
                                                         padding, dilation, groups)
    n = shape[0]
    pixels = grad.shape[2] * grad.shape[3]
    rows = t_row_offsets.shape[0] - 1  # C_in·kH·kW
    values_t = _ops._transposed_values(values, layout, False)
    layout_t = _ops._transposed(layout)
    compute = reference._compute_dtype(grad.dtype)
    fold_args = (list(input_size), list(kernel_size), list(dilation), list(padding), list(stride))
    out = torch.empty(shape, dtype=grad.dtype, device=grad.device)
    for start, stop in _chunks(n, rows, pixels, grad.element_size()):
        du = _ops.csr_spmm(values_t, *layout_t, _feature_major_grad(grad[start:stop]))  # (C_in·kH·kW, n·L)
        du = du.view(rows, stop - start, pixels).transpose(0, 1)
        if compute == grad.dtype or grad.is_cuda:
            # Folded straight into this chunk's part of the output. CUDA's col2im gathers each pixel's terms
            # in the accumulate type (float32 for the 16-bit types) and rounds once by itself.
            torch.ops.aten.col2im.out(du, *fold_args, out=out[start:stop])
        else:  # the CPU col2im adds into its output in the dtype: fold a float32 copy instead
            out[start:stop] = torch.ops.aten.col2im(du.to(compute), *fold_args)
    return out


def csr_conv2d_weight_grad_im2col(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                  t_perm_inv, kernel_size, stride, padding, dilation, groups):
    """``sparsekern::csr_conv2d_weight_grad`` as ``csr_sddmm`` of dY with the unfolded input: dW (nnz,) at the
    kept weights only, each the dot over N·L of a gradient channel with the unfolded row it multiplies.

    Several chunks: their dots are summed in chunk order in ``reference._compute_dtype(dtype)`` (float32 for
    float32 and the 16-bit types, float64 for float64), each chunk's already rounded to the dtype by the GEMM,
    then rounded again at the end; one chunk is returned as computed.
    """
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    _ops_conv._check_conv_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups)
    check_devices(grad.device, "grad", (("x", x), *zip(LAYOUT_NAMES, layout)))
    validate_layout_once(layout)
    if groups != 1:
        return _reference_fallback_csr_conv2d_weight_grad(grad, x, layout, kernel_size, stride, padding,
                                                          dilation, groups)
    n, _, oh, ow = grad.shape
    rows = t_row_offsets.shape[0] - 1
    chunks = list(_chunks(n, rows, oh * ow, x.element_size()))
    total = None
    for start, stop in chunks:
        u = _unfold(x[start:stop], kernel_size, stride, padding, dilation, (oh, ow))
        dots = _ops.csr_sddmm(_feature_major_grad(grad[start:stop]), u, *layout)
        if len(chunks) == 1:
            return dots
        if total is None:
            total = dots.to(reference._compute_dtype(x.dtype), copy=True)
        else:
            total.add_(dots)
    if total is None:  # an empty batch: every dot product is empty, 0
        return torch.zeros(col_indices.shape[0], dtype=x.dtype, device=x.device)
    return total.to(x.dtype)


# ------------------------------------------------------------------------------- reference fallback
# What the CompositeExplicitAutograd references of _ops_conv.py compute, minus their per-call layout check
# (done once above): the CUDA key replaces that registration for CUDA tensors, so these stand in for it.

def _reference_fallback_csr_conv2d(x, values, layout, bias, kernel_size, stride, padding, dilation, groups,
                                   output_size):
    return reference.csr_conv2d(x, values, *layout, bias, kernel_size, stride, padding, dilation, groups,
                                output_size)


def _reference_fallback_csr_conv2d_input_grad(grad, values, layout, input_size, kernel_size, stride, padding,
                                              dilation, groups):
    return reference.csr_conv2d_input_grad(grad, values, *layout, input_size, kernel_size, stride, padding,
                                           dilation, groups)


def _reference_fallback_csr_conv2d_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups):
    return reference.csr_conv2d_weight_grad(grad, x, *layout, kernel_size, stride, padding, dilation, groups)


# ------------------------------------------------------------------------------------- registration

IMPLS = {"csr_conv2d": csr_conv2d_im2col, "csr_conv2d_input_grad": csr_conv2d_input_grad_im2col,
         "csr_conv2d_weight_grad": csr_conv2d_weight_grad_im2col}

for _name, _impl in IMPLS.items():
    _ops._lib.impl(_name, _impl, "CUDA")
