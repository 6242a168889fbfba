"""Which launch configurations the Triton kernels try, and how the list is cut down per call.

A config names the *largest* tile a program may use (``BLOCK_M`` rows of an output block, ``BLOCK_K`` (or
``BLOCK_N``) along the block's other side, ``BLOCK_B`` batch columns) plus ``num_warps``/``num_stages``. The
kernels shrink the block-side tiles to the block (a 128 cap on a 16-wide block is a 16 tile), so one list
serves every block size in {16, 32, 64, 128}; ``prune`` then drops, per call:

* duplicates: configs that become the same tile after that shrinking (on 16x16 blocks most of the list),
  which would otherwise be compiled and benchmarked once each for nothing;
* configs whose pipelined tiles would not fit in the GPU's shared memory, which Triton would compile and
  only then reject. The estimate is ``num_stages`` copies of both operands' tiles; what Triton really
  allocates depends on the architecture (AOT compiles of every config for sm_80 and sm_90 measured from
  ``num_stages - 1`` copies up to about twice the estimate for some 16-bit tiles on sm_90), so it is a
  filter for the hopeless, not a guarantee: a config that still does not fit fails to launch inside the
  autotuner, which times it as infinitely slow and moves on. If none passes, the smallest is kept, so the
  autotuner is never left without a config; the first config of each list fits every GPU.

Three regimes, fixed when the kernel modules are imported:

* ``TRITON_INTERPRET=1``: the one ``FIXED`` config of each kernel (the interpreter cannot benchmark, and
  runs every program in Python, so a list would only cost time);
* ``SPARSEKERN_TRITON_AUTOTUNE=0``: the same single config on a GPU: no compile-and-benchmark sweep per new
  shape (what the tests use: they check results, the benchmarks measure speed);
* otherwise the full list, autotuned per shape.
"""
from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE = not INTERPRET and os.environ.get("SPARSEKERN_TRITON_AUTOTUNE", "1") != "0"

# When the device cannot be asked: 99 KB, the smallest opt-in shared memory per block of the GPUs Triton
# targets (sm_86/sm_89; A100 has 163 KB, H100/H200 227 KB).
_FALLBACK_SHARED_BYTES = 99 * 1024


def config(num_warps: int, num_stages: int, **tiles) -> triton.Config:
    return triton.Config(tiles, num_warps=num_warps, num_stages=num_stages)


def choose(fixed: triton.Config, tuned: list[triton.Config]) -> list[triton.Config]:
    """The list handed to ``triton.autotune``: ``[fixed]`` under the interpreter or with autotuning off."""
    return list(tuned) if AUTOTUNE else [fixed]


def capped(cap: int, side: int) -> int:
    """The tile a ``cap`` gives on a block side of ``side`` (both powers of two): what the kernels compute."""
    return min(cap, side)


def max_shared_bytes(args) -> int:
    """Shared memory per block on the device of the first tensor among ``args`` (a launch's arguments)."""
    try:
        from triton.runtime import driver
        tensor = next(v for v in args.values() if hasattr(v, "device") and hasattr(v, "data_ptr"))
        return int(driver.active.utils.get_device_properties(tensor.device.index)["max_shared_mem"])
    except Exception:  # no driver (e.g. an AOT compile check), or an API that moved: be conservative
        return _FALLBACK_SHARED_BYTES


def make_prune(shape_of):
    """An ``early_config_prune`` for ``triton.autotune``.

    ``shape_of(config, args)`` (``args``: the launch's named arguments, constexprs included) returns the
    config's effective tile as a hashable tuple and its shared-memory estimate in bytes, or None where the
    arguments needed are missing (older Triton passes no constexprs): then nothing is pruned.
    """
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        seen, kept, smallest = set(), [], None
        limit = None
        for c in configs:
            shape = shape_of(c, args)
            if shape is None:
                return configs
            tile, shared = shape
            key = (tile, c.num_warps, c.num_stages)
            if key in seen:
                continue
            seen.add(key)
            if smallest is None or shared < smallest[1]:
                smallest = (c, shared)
            if limit is None:
                limit = max_shared_bytes(args)
            if shared <= limit:
                kept.append(c)
        return kept or [smallest[0]]
    return prune

