"""The block-sparse Conv2d ops on CUDA tensors: ``sparsekern::bsr_conv2d``, ``bsr_conv2d_input_grad`` and
``bsr_conv2d_weight_grad`` run the implicit-GEMM Triton kernels of ``bsr_conv2d.py``.

Importing this module (``sparsekern.triton`` does, beside ``dispatch``) registers the three functions below
for the CUDA dispatch key. The registry (``sparsekern/_ops_conv_bsr.py``) defines the schemas, the checks,
the reference and the autograd formulas (each op's gradient is written with the three ops), so a CUDA
``bsr_conv2d`` runs these kernels in its forward and in both halves of its backward.

Each function, for tensors of any device (the tests call them on CPU tensors under ``TRITON_INTERPRET=1``):

1. runs the registry's argument checks (``_check_bsr_conv`` / ``_check_bsr_conv_input_grad`` /
   ``_check_bsr_conv_weight_grad``: shapes, dtypes and the geometry, the same messages as on the CPU) and
   checks that every tensor is on the device of the first operand;
2. checks the layout's contents once per distinct layout storage (``gpu_checks.validate_layout_once``);
3. runs the Triton kernel when the dtype is float32, float16 or bfloat16, both block sides are 16, 32, 64
   or 128 and ``groups == 1``; otherwise the **reference fallback** (``sparsekern.reference`` on the same
   device): float64 (gradcheck), other block sizes, grouped convolutions.
"""
from __future__ import annotations

import importlib

import torch

from .. import _ops, _ops_conv_bsr, reference
from ..gpu_checks import LAYOUT_NAMES, check_devices, validate_layout_once
from .dispatch import _on

# By module path: the package's attribute ``bsr_conv2d`` is the kernel function, which shadows the module.
_conv_kernels = importlib.import_module(".bsr_conv2d", __package__)

TRITON_DTYPES = _conv_kernels.SUPPORTED_DTYPES
TRITON_BLOCK_SIZES = _conv_kernels.BLOCK_SIZES


# The kernels index pixels (n, oh, ow) with int32 (element offsets are int64): beyond this, the reference.
MAX_PIXELS = 2 ** 31 - 1


def uses_triton(dtype: torch.dtype, bh: int, bw: int, groups: int, pixels: int = 0) -> bool:
    """Whether a conv call with this dtype, block shape, groups and pixel count (the larger of N·H·W and
    N·OH·OW) runs a Triton kernel (else the reference)."""
    return (dtype in TRITON_DTYPES and bh in TRITON_BLOCK_SIZES and bw in TRITON_BLOCK_SIZES
            and int(groups) == 1 and pixels <= MAX_PIXELS)


def _pixels(x, y_shape) -> int:
    return max(x.shape[0] * x.shape[2] * x.shape[3], y_shape[0] * y_shape[2] * y_shape[3])


def bsr_conv2d_cuda(x, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, bias,
                    kernel_size, stride, padding, dilation, groups):
    """``sparsekern::bsr_conv2d`` for CUDA tensors: y (N, C_out, OH, OW) = conv2d(x, W) + bias, W tap-major
    block-sparse (values (nnzb, bh, bw)). Triton for float32/float16/bfloat16, bh, bw in {16, 32, 64, 128} and
    groups == 1; otherwise the reference fallback."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    shape = _ops_conv_bsr._check_bsr_conv(x, values, layout, bias, kernel_size, stride, padding, dilation,
                                          groups)
    check_devices(x.device, "x", (("values", values), *zip(LAYOUT_NAMES, layout), ("bias", bias)))
    validate_layout_once(layout)
    if not uses_triton(values.dtype, values.shape[1], values.shape[2], groups, _pixels(x, shape)):
        return _reference_fallback_bsr_conv2d(x, values, layout, bias, kernel_size, stride, padding, dilation,
                                              groups, shape[2:])
    with _on(x.device):
        return _conv_kernels.bsr_conv2d(x, values, *layout, bias, kernel_size, stride, padding, dilation, groups)


def bsr_conv2d_input_grad_cuda(grad, values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                               t_perm_inv, input_size, kernel_size, stride, padding, dilation, groups):
    """``sparsekern::bsr_conv2d_input_grad`` for CUDA tensors: dx (N, C_in, H, W) given dy = grad. Triton
    (a gather through the transpose metadata, no atomics) under the same conditions as the forward."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    dx_shape = _ops_conv_bsr._check_bsr_conv_input_grad(grad, values, layout, input_size, kernel_size, stride,
                                                        padding, dilation, groups)
    check_devices(grad.device, "grad", (("values", values), *zip(LAYOUT_NAMES, layout)))
    validate_layout_once(layout)
    if not uses_triton(values.dtype, values.shape[1], values.shape[2], groups, _pixels(grad, dx_shape)):
        return _reference_fallback_bsr_conv2d_input_grad(grad, values, layout, input_size, kernel_size, stride,
                                                         padding, dilation, groups)
    with _on(grad.device):
        return _conv_kernels.bsr_conv2d_input_grad(grad, values, *layout, input_size, kernel_size, stride,
                                                   padding, dilation, groups)


def bsr_conv2d_weight_grad_cuda(grad, x, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm,
                                t_perm_inv, kernel_size, stride, padding, dilation, groups):
    """``sparsekern::bsr_conv2d_weight_grad`` for CUDA tensors: dL/dW at the kept blocks, (nnzb, bh, bw).
    Triton (a deterministic split-pixel SDDMM) under the same conditions as the forward."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    _, bh, bw = _ops_conv_bsr._check_bsr_conv_weight_grad(grad, x, layout, kernel_size, stride, padding,
                                                          dilation, groups)
    check_devices(grad.device, "grad", (("x", x), *zip(LAYOUT_NAMES, layout)))
    validate_layout_once(layout)
    if not uses_triton(x.dtype, bh, bw, groups, _pixels(x, grad.shape)):
        return _reference_fallback_bsr_conv2d_weight_grad(grad, x, layout, kernel_size, stride, padding,
                                                          dilation, groups)
    with _on(grad.device):
        return _conv_kernels.bsr_conv2d_weight_grad(grad, x, *layout, kernel_size, stride, padding, dilation,
                                                    groups)


# ------------------------------------------------------------------------------- reference fallback
# What the registry's CompositeExplicitAutograd reference computes, minus its per-call layout check (done
# once above): the CUDA key replaces that registration for CUDA tensors.

def _reference_fallback_bsr_conv2d(x, values, layout, bias, kernel_size, stride, padding, dilation, groups,
                                   output_size):
    return reference.bsr_conv2d(x, values, *layout, bias, kernel_size, stride, padding, dilation, groups,
                                output_size)


def _reference_fallback_bsr_conv2d_input_grad(grad, values, layout, input_size, kernel_size, stride, padding,
                                              dilation, groups):
    return reference.bsr_conv2d_input_grad(grad, values, *layout, input_size, kernel_size, stride, padding,
                                           dilation, groups)


def _reference_fallback_bsr_conv2d_weight_grad(grad, x, layout, kernel_size, stride, padding, dilation, groups):
    return reference.bsr_conv2d_weight_grad(grad, x, *layout, kernel_size, stride, padding, dilation, groups)


# ------------------------------------------------------------------------------------- registration

IMPLS = {"bsr_conv2d": bsr_conv2d_cuda, "bsr_conv2d_input_grad": bsr_conv2d_input_grad_cuda,
         "bsr_conv2d_weight_grad": bsr_conv2d_weight_grad_cuda}

for _name, _impl in IMPLS.items():
    _ops._lib.impl(_name, _impl, "CUDA")
