"""Triton kernels for the block-sparse ops: ``bsr_spmm`` (S @ dense), ``bsr_spmm_t`` (Sᵀ @ dense, the input
gradient, read through the layout's transpose without re-sorting) and ``bsr_sddmm`` (the weight gradient at
the kept blocks).

Importing this package never fails: ``AVAILABLE`` says whether triton could be imported, and without it the
three functions raise a RuntimeError saying so. They are plain functions with the arguments of
``sparsekern.reference``; nothing is registered with the op dispatcher here (that comes with GPU testing).

On a machine without a GPU, set ``TRITON_INTERPRET=1`` *before* triton is first imported to run the kernels
on CPU tensors under Triton's interpreter (slow; for tests). float64 is not supported (float32, float16,
bfloat16, all with float32 accumulation); blocks must be 16, 32 or 64 on each side.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError as error:  # the package itself must import without triton
    AVAILABLE = False
    _IMPORT_ERROR = error
else:
    AVAILABLE = True
    _IMPORT_ERROR = None

if AVAILABLE:
    from .bsr_sddmm import bsr_sddmm
    from .bsr_spmm import bsr_spmm, bsr_spmm_t
else:
    def _unavailable(name):
        def stub(*args, **kwargs):
            raise RuntimeError(f"sparsekern.triton.{name}: triton is not installed ({_IMPORT_ERROR})")
        stub.__name__ = name
        return stub

    bsr_spmm = _unavailable("bsr_spmm")
    bsr_spmm_t = _unavailable("bsr_spmm_t")
    bsr_sddmm = _unavailable("bsr_sddmm")

__all__ = ["AVAILABLE", "bsr_spmm", "bsr_spmm_t", "bsr_sddmm"]
