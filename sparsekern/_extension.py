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


# The op whose kernel stands for a layer family's: a layer runs compiled code on a device when this op has a
# kernel registered for that device's dispatch key (CUDA C++ from csrc/cuda/ for unstructured layers, Triton
# from sparsekern/triton/dispatch.py for block layers).
_FAMILY_OPS = {"csr": "csr_spmm_bt", "bsr": "bsr_spmm_bt", "conv2d_csr": "csr_conv2d"}


def has_compiled_kernels(device_type: str, layout_kind: str = "csr") -> bool:
    """True when a compiled (not reference) kernel serves layers of ``layout_kind`` ("csr", "bsr" for
    SparseLinear, "conv2d_csr" for SparseConv2d) on ``device_type`` ("cpu", "cuda")."""
    if device_type == "cpu":
        return AVAILABLE
    if device_type != "cuda" or layout_kind not in _FAMILY_OPS:
        return False
    import torch
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekern::{_FAMILY_OPS[layout_kind]}", "CUDA")
