"""Keep freed memory in the process, so training steps stop paying page faults for their own tensors.

glibc hands every allocation above its mmap threshold (128 KB, raised dynamically up to 32 MB) to a fresh
``mmap`` and returns it to the kernel on free, and trims the top of the heap when more than 128 KB is
free there. A training step frees its activations and allocates them again on the next step, so every
step faults every page of them in anew: on a 2-core Xeon, a dense CIFAR ResNet-18 64-channel 32×32 conv
at batch 64 took 11,000-20,000 page faults per forward+backward (oneDNN's scratch buffers and outputs),
and the step ran 30 % faster without them (``benchmarks/results``, the ``Allocator`` line of each header).

:func:`keep_freed_memory` raises both thresholds, so freed blocks stay in the heap and the next step reuses
pages that are already mapped. The price: the process keeps its peak memory until it exits, instead of
returning freed memory to the system. The training CLI and the benchmark runner call it unless told not
to (``--no-keep-freed-memory``); a library user can call it at the top of a training script. Without
glibc (macOS, musl, Windows) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import dataclass

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks above this still get their own mmap: a tensor this large is rare in a step, and keeping such blocks
# would pin a gigabyte per free. glibc accepts up to HEAP_MAX_SIZE / 2 on some versions (32 MB on 64-bit):
# fall back to that when the larger value is refused.
_MMAP_THRESHOLD = 1 << 30
_MMAP_THRESHOLD_FALLBACK = 32 << 20
_TRIM_THRESHOLD = (1 << 31) - 1  # the largest int: never trim the heap top


@dataclass(frozen=True)
class AllocatorSetting:
    """What :func:`keep_freed_memory` did: ``applied`` and a line saying what, for logs and benchmark headers."""

    applied: bool
    description: str


_state: AllocatorSetting | None = None


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory() -> AllocatorSetting:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the first result)."""
    global _state
    if _state is not None:
        return _state
    libc = _glibc()
    if libc is None:
        _state = AllocatorSetting(False, "system default (not glibc: nothing to change)")
        return _state
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = _MMAP_THRESHOLD
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
        mmap_threshold = _MMAP_THRESHOLD_FALLBACK
        if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
            _state = AllocatorSetting(False, "glibc default (mallopt refused the thresholds)")
            return _state
    trim_ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _state = AllocatorSetting(
        True, f"glibc, freed memory kept (mallopt M_MMAP_THRESHOLD={mmap_threshold >> 20} MiB, "
              f"M_TRIM_THRESHOLD={'max' if trim_ok else 'default (refused)'})")
    return _state


def current_setting() -> AllocatorSetting:
    """What is in effect: keep_freed_memory()'s result, or the system default if it was not called."""
    return _state if _state is not None else AllocatorSetting(False, "system default (freed memory returned)")
