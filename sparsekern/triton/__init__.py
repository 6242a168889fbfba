"""Triton kernels for the block-sparse ops, and their registration for CUDA tensors.

Kernels (plain functions with the arguments of ``sparsekern.reference``): ``bsr_spmm`` (S @ dense),
``bsr_spmm_t`` (Sᵀ @ dense, the input gradient, read through the layout's transpose without re-sorting),
``bsr_spmm_bt`` ((S @ dense)ᵀ + bias, batch-major, the layer's forward output) and ``bsr_sddmm`` (the weight
gradient at the kept blocks); for a block-sparse Conv2d (weight viewed tap-major, ``bsr_conv2d.py``),
``bsr_conv2d`` (forward, bias included), ``bsr_conv2d_input_grad`` and ``bsr_conv2d_weight_grad``, implicit
GEMMs that gather the input pixels in the kernel (no im2col buffer; groups == 1). float32, float16 and
bfloat16, all with float32 accumulation; blocks of 16, 32, 64 or 128 on each side, rectangular ones included.
float64 is not supported by the kernels.

Registered for the CUDA dispatch key (``dispatch.py`` and ``dispatch_conv.py``, imported here when triton
imports, and this package is imported by ``sparsekern._ops``, so ``import sparsekern`` registers them):
``sparsekern::bsr_spmm``, ``bsr_spmm_bt``, ``bsr_sddmm``, ``bsr_conv2d``, ``bsr_conv2d_input_grad`` and
``bsr_conv2d_weight_grad``. On CUDA tensors those run the kernels above when the dtype and the block shape are
supported (and, for the conv ops, groups == 1), and otherwise **fall back to the reference**
(``sparsekern.reference``) on the GPU: float64 (gradcheck), other block sizes (e.g. 8x8), grouped
convolutions. ``bsr_spmm_t`` is not an op: the registry's backward takes ``bsr_spmm_bt`` over the transposed
layout (after ``permute``). Not registered here, so on CUDA still the reference (or csrc/cuda): ``permute``,
``transpose``, every CSR op and the CSR convolutions.

Importing this package never fails: ``AVAILABLE`` says whether triton (and the kernels) could be imported;
without it the kernel functions raise a RuntimeError saying why and nothing is registered (CUDA tensors then
run the reference, as every op does without a kernel; a triton that imports but cannot load the kernels also
warns). The conv registration is separate: should it fail (``CONV_REGISTERED`` False, with a warning), the
Linear ops keep their kernels.

On a machine without a GPU, set ``TRITON_INTERPRET=1`` *before* triton is first imported to run the kernels
(and the ``dispatch`` functions, called directly) on CPU tensors under Triton's interpreter (slow; for tests).
``SPARSEKERN_TRITON_AUTOTUNE=0`` replaces the autotuning sweep on a GPU by one fixed config (``tuning.py``).
"""
from __future__ import annotations

import warnings

try:
    import triton  # noqa: F401
except ImportError as error:  # the package itself must import without triton
    AVAILABLE = False
    _IMPORT_ERROR = error
else:
    AVAILABLE = True
    _IMPORT_ERROR = None

if AVAILABLE:
    try:
        from . import dispatch  # noqa: F401  (registers the CUDA kernels of the bsr ops)
        from .bsr_conv2d import bsr_conv2d, bsr_conv2d_input_grad, bsr_conv2d_weight_grad
        from .bsr_sddmm import bsr_sddmm
        from .bsr_spmm import bsr_spmm, bsr_spmm_bt, bsr_spmm_t
    except Exception as error:  # a triton too old or broken for the kernels: say so, keep sparsekern usable
        warnings.warn(f"sparsekern.triton: the Triton kernels could not be loaded, CUDA tensors run the "
                      f"reference ops: {type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
        AVAILABLE = False
        _IMPORT_ERROR = error

CONV_REGISTERED = False
if AVAILABLE:
    try:
        from . import dispatch_conv  # noqa: F401  (registers the CUDA kernels of the bsr conv ops)
    except Exception as error:  # e.g. a registry without the bsr conv schemas: the Linear kernels stay
        warnings.warn(f"sparsekern.triton: the block-sparse Conv2d kernels could not be registered, CUDA "
                      f"tensors run the reference conv ops: {type(error).__name__}: {error}", RuntimeWarning,
                      stacklevel=2)
    else:
        CONV_REGISTERED = True

if not AVAILABLE:
    def _unavailable(name):
        def stub(*args, **kwargs):
            raise RuntimeError(f"sparsekern.triton.{name}: triton is not available ({_IMPORT_ERROR})")
        stub.__name__ = name
        return stub

    bsr_spmm = _unavailable("bsr_spmm")
    bsr_spmm_t = _unavailable("bsr_spmm_t")
    bsr_spmm_bt = _unavailable("bsr_spmm_bt")
    bsr_sddmm = _unavailable("bsr_sddmm")
    bsr_conv2d = _unavailable("bsr_conv2d")
    bsr_conv2d_input_grad = _unavailable("bsr_conv2d_input_grad")
    bsr_conv2d_weight_grad = _unavailable("bsr_conv2d_weight_grad")

__all__ = ["AVAILABLE", "CONV_REGISTERED", "bsr_spmm", "bsr_spmm_t", "bsr_spmm_bt", "bsr_sddmm", "bsr_conv2d",
           "bsr_conv2d_input_grad", "bsr_conv2d_weight_grad"]
