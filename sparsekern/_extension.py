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


def has_compiled_kernels(device_type: str) -> bool:
    """True when a compiled (not reference) kernel serves ``device_type`` ("cpu", "cuda")."""
    return AVAILABLE and device_type == "cpu"
