"""The argument checks every GPU implementation of an op runs before it launches (Triton in
``sparsekern/triton/dispatch*.py``, the CUDA lowering in ``conv_im2col.py``), written once.

- ``check_devices``: every tensor on the device of the first operand; a kernel handed a pointer into another
  device's memory would read garbage or fault, so this is a clear ValueError instead.
- ``validate_layout_once``: a layout's contents must be checked before a kernel reads through them (offsets
  running 0..nnz, indices in range and sorted, and, since the transposed products read ``values`` through
  ``t_perm``, the transpose half a permutation describing the same positions: ``CSRLayout.validate``), but
  reading them syncs with the GPU, so not on every call: once per layout storage (``check_once.py`` says how a
  check is remembered). Every GPU path uses the same tag and tensors, so they share their verdicts.
"""
from __future__ import annotations

from .check_once import check_once
from .check_once import clear as clear_checks
from .layout import check_transpose_metadata

LAYOUT_NAMES = ("row_offsets", "col_indices", "t_row_offsets", "t_col_indices", "t_perm", "t_perm_inv")


def check_devices(device, where, named) -> None:
    """ValueError naming the first of ``named`` ((name, tensor or None) pairs) not on ``device``."""
    for name, t in named:
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (where {where} is), got one on {t.device}")


def validate_layout_once(layout) -> None:
    """``_ops._check_layout_values(*layout)`` and ``layout.check_transpose_metadata`` (ValueError on a corrupt
    layout), skipped for a layout whose tensors passed them before and have not been written to or freed
    since."""
    from . import _ops  # _ops imports the modules that import this one

    def check():
        _ops._check_layout_values(*layout)
        check_transpose_metadata(*layout)

    check_once("layout", tuple(layout), check)


def clear_validated_layouts() -> None:
    """Forget every checked layout (tests; or after writing a layout's memory behind PyTorch's back)."""
    clear_checks()
