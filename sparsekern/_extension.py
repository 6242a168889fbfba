"""Loads the compiled kernels (``sparsekern._C``) if this install has them.

The package works without them: every op then runs its pure-PyTorch reference (``reference.py``).
``SPARSEKERN_NO_EXT=1`` at install time builds no extension; at run time it skips loading one.
"""
from __future__ import annotations

import os

LOAD_ERROR: str | None = None


def _load() -> bool:
    global LOAD_ERROR
    if os.environ.get("SPARSEKERN_NO_EXT", "0") not in ("", "0"):
        LOAD_ERROR = "disabled by SPARSEKERN_NO_EXT"
        return False
    try:
        from . import _C  # noqa: F401  (registers the TORCH_LIBRARY_IMPL kernels on import)
    except ImportError as exc:
        LOAD_ERROR = str(exc)
        return False
    return True


AVAILABLE = _load()


# The ops whose kernels stand for a layer family's: a layer runs compiled code on a CUDA device when each of
# these ops has a kernel registered for the CUDA dispatch key (CUDA C++ from csrc/cuda/ for unstructured
# layers, Triton from sparsekern/triton/dispatch.py for block layers). The unstructured Conv2d is a Python
# lowering (conv_im2col.py) registered for CUDA in every install, also one without CUDA kernels, where it
# would run the reference GEMMs: it counts only together with the CUDA kernels of the GEMMs it calls.
_FAMILY_OPS = {
    "csr": ("csr_spmm_bt",),
    "bsr": ("bsr_spmm_bt",),
    "conv2d_csr": ("csr_conv2d", "csr_conv2d_input_grad", "csr_conv2d_weight_grad", "csr_spmm", "csr_sddmm"),
    "conv2d_bsr": ("bsr_conv2d", "bsr_conv2d_input_grad", "bsr_conv2d_weight_grad"),
}


def _has_cuda_kernel(op: str) -> bool:
    import torch
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{op}", "CUDA")
    except RuntimeError:  # the op is not defined (a family whose registry module this build lacks)
        return False


def has_compiled_kernels(device_type: str, layout_kind: str = "csr") -> bool:
    """True when a compiled (not reference) kernel serves layers of ``layout_kind`` on ``device_type``
    ("cpu", "cuda"; any other device: False).

    Layout kinds: "csr", "bsr" (SparseLinear), "conv2d_csr" (unstructured SparseConv2d), "conv2d_bsr"
    (block-sparse SparseConv2d). On CPU: whether the compiled extension is loaded (it serves every kind). On
    CUDA: "csr" and "bsr" when ``csr_spmm_bt`` / ``bsr_spmm_bt`` have a CUDA kernel; "conv2d_csr" when the
    im2col lowering of the three csr_conv2d ops is registered for CUDA *and* ``csr_spmm`` and ``csr_sddmm``
    have CUDA kernels (so a CPU-only or ``SPARSEKERN_NO_EXT`` build says False); "conv2d_bsr" when
    the three ``bsr_conv2d`` ops have CUDA kernels (Triton); an unknown kind on CUDA: False."""
    if device_type == "cpu":
        return AVAILABLE
    if device_type != "cuda" or layout_kind not in _FAMILY_OPS:
        return False
    return all(_has_cuda_kernel(op) for op in _FAMILY_OPS[layout_kind])
