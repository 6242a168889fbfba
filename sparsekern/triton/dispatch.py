"""The block-sparse ops on CUDA tensors: ``sparsekern::bsr_spmm``, ``bsr_spmm_bt`` and ``bsr_sddmm`` run the
Triton kernels of this package.

Importing this module (``sparsekern.triton`` does, when triton imports; ``sparsekern._ops`` imports that)
registers ``bsr_spmm_cuda``, ``bsr_spmm_bt_cuda`` and ``bsr_sddmm_cuda`` for the CUDA dispatch key. The
autograd formulas of ``_ops.py`` sit on the Autograd key and call the ops again, so a CUDA ``bsr_linear``
(forward ``bsr_spmm_bt``; backward ``bsr_spmm_bt`` over the transposed layout and ``bsr_sddmm``) runs these
kernels in all three GEMMs. Everything else on CUDA (``permute``, ``transpose``, the CSR and conv ops) keeps
the reference, or whatever csrc/cuda registers.

Each function, for tensors of any device (the tests call them on CPU tensors under ``TRITON_INTERPRET=1``):

1. runs the reference's argument checks (``_ops._check_spmm`` / ``_check_spmm_bt`` / ``_check_sddmm``:
   shapes and dtypes, the same messages) and checks that every tensor is on the device of the values
   (the first operand for the SDDMM);
2. checks the layout's contents (``_ops._check_layout_values``) once per distinct layout storage
   (``sparsekern.gpu_checks.validate_layout_once``, also named here);
3. runs the Triton kernel when the dtype is float32, float16 or bfloat16 and both block sides are 16, 32,
   64 or 128; otherwise the **reference fallback** (``sparsekern.reference`` on the same device, float32
   accumulation for 16-bit dtypes): float64 (what gradcheck runs) and any other block size.
"""
from __future__ import annotations

import contextlib

import torch

from .. import _ops, reference
from ..gpu_checks import LAYOUT_NAMES, check_devices, clear_validated_layouts, validate_layout_once  # noqa: F401
from . import bsr_sddmm as _sddmm_kernels
from . import bsr_spmm as _spmm_kernels

TRITON_DTYPES = _spmm_kernels.SUPPORTED_DTYPES
TRITON_BLOCK_SIZES = _spmm_kernels.BLOCK_SIZES


def uses_triton(dtype: torch.dtype, bh: int, bw: int) -> bool:
    """Whether a call with this dtype and block shape runs a Triton kernel (else the reference fallback)."""
    return dtype in TRITON_DTYPES and bh in TRITON_BLOCK_SIZES and bw in TRITON_BLOCK_SIZES


def _on(device):
    """The kernel launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------------- the three ops

def bsr_spmm_cuda(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense):
    """``sparsekern::bsr_spmm`` for CUDA tensors: ``S @ dense``, values (nnzb, bh, bw), dense
    (n_block_cols·bw, B) → (n_block_rows·bh, B). Triton for float32/float16/bfloat16 with bh, bw in
    {16, 32, 64, 128}; otherwise the reference fallback."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    _ops._check_spmm(values, layout, dense, block=True)
    check_devices(values.device, "values", (*zip(LAYOUT_NAMES, layout), ("dense", dense)))
    validate_layout_once(layout)
    if not uses_triton(values.dtype, values.shape[1], values.shape[2]):
        return _reference_fallback_bsr_spmm(values, layout, dense)
    with _on(values.device):
        return _spmm_kernels.bsr_spmm(values, *layout, dense)


def bsr_spmm_bt_cuda(values, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv, dense,
                     bias):
    """``sparsekern::bsr_spmm_bt`` for CUDA tensors: ``(S @ dense)ᵀ + bias``, (B, n_block_rows·bh),
    batch-major: the layer's output, stored transposed and with the bias added by the kernel's epilogue.
    Triton for float32/float16/bfloat16 with bh, bw in {16, 32, 64, 128}; otherwise the reference fallback."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    _ops._check_spmm_bt(values, layout, dense, bias, block=True)
    check_devices(values.device, "values", (*zip(LAYOUT_NAMES, layout), ("dense", dense)))
    validate_layout_once(layout)
    if not uses_triton(values.dtype, values.shape[1], values.shape[2]):
        return _reference_fallback_bsr_spmm_bt(values, layout, dense, bias)
    with _on(values.device):
        return _spmm_kernels.bsr_spmm_bt(values, *layout, dense, bias)


def bsr_sddmm_cuda(a, b, row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv):
    """``sparsekern::bsr_sddmm`` for CUDA tensors: ``out[k] = a_rows(k) @ b_rows(k)ᵀ`` at the kept blocks,
    (nnzb, bh, bw), with bh, bw derived from the row counts. Triton for float32/float16/bfloat16 with bh, bw in
    {16, 32, 64, 128}; otherwise the reference fallback."""
    layout = (row_offsets, col_indices, t_row_offsets, t_col_indices, t_perm, t_perm_inv)
    _, bh, bw = _ops._check_sddmm(a, b, layout, block=True)
    check_devices(a.device, "a", (("b", b), *zip(LAYOUT_NAMES, layout)))
    validate_layout_once(layout)
    if not uses_triton(a.dtype, bh, bw):
        return _reference_fallback_bsr_sddmm(a, b, layout)
    with _on(a.device):
        return _sddmm_kernels.bsr_sddmm(a, b, *layout)


# ------------------------------------------------------------------------------- reference fallback
# What the CompositeExplicitAutograd reference of _ops.py computes, minus its per-call layout check (done
# once above): the CUDA key replaces that registration for CUDA tensors, so these must stand in for it.

def _reference_fallback_bsr_spmm(values, layout, dense):
    return reference.bsr_spmm(values, *layout, dense)


def _reference_fallback_bsr_spmm_bt(values, layout, dense, bias):
    out = reference.bsr_spmm(values, *layout, dense).t().contiguous()
    return out + bias if bias is not None else out


def _reference_fallback_bsr_sddmm(a, b, layout):
    return reference.bsr_sddmm(a, b, *layout)


# ------------------------------------------------------------------------------------- registration

IMPLS = {"bsr_spmm": bsr_spmm_cuda, "bsr_spmm_bt": bsr_spmm_bt_cuda, "bsr_sddmm": bsr_sddmm_cuda}

for _name, _impl in IMPLS.items():
    _ops._lib.impl(_name, _impl, "CUDA")
