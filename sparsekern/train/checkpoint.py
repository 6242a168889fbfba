"""Training checkpoints: everything needed to continue a run exactly, written atomically, loaded with
``weights_only=True``.

A checkpoint is a plain dict of tensors and Python values (no pickled classes), so it loads in the safe
unpickler: the model's and optimizer's state_dicts, the scheduler's, the masks, the recipe's schedule state,
every RNG state, the epoch and the metrics so far (the metrics file is rewritten from them on resume, so a
run killed between writing the two never repeats or loses an epoch's line).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..atomic_file import atomic_write

FORMAT = "sparsekern-train-checkpoint"
VERSION = 1


def rng_state(device=None) -> dict:
    """The torch, numpy and Python RNG states, and the CUDA one of ``device`` (only this process's GPU)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss": py_gauss}}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device=None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically: the old file stays whole until the new
    one is complete on disk."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_write(path) as f:
        torch.save(payload, f)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not just the unpickler's message
        raise ValueError(f"checkpoint: {path!r} could not be read as a sparsekern checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path!r} is not a sparsekern training checkpoint (format tag "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint: {path!r} has version {state.get('version')}, this sparsekern reads "
                         f"version {VERSION}")
    return state
