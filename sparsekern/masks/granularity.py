"""The units a mask keeps or prunes as a whole, over a weight's 2-D view ``(out, in · kH · kW)``.

- ``unstructured``: single weights;
- ``block``: ``bh × bw`` tiles of the 2-D view (the last row / column of tiles may be partial). For a conv
  weight ``(out, in, kH, kW)`` the view is tap-major, ``(out, kH · kW · in)`` (column ``t · in + c`` for tap
  ``t``): a tile is ``bh`` output × ``bw`` input channels at one kernel tap when ``bw`` divides ``in``, the
  blocks ``SparseConv2d(block_size=(bh, bw))`` takes;
- ``channel``: whole output channels (filters, or a Linear's rows);
- ``kernel``: all ``kH × kW`` taps of one (output, input) channel pair (single weights for a Linear).

A unit's score reduces its element scores with ``mean`` (the builder's default), ``sum`` or ``l2``. N:M is not a unit
choice (it keeps the best N of every M consecutive weights, a local rule): see builder.py.
"""
from __future__ import annotations

import math

import torch

GRANULARITIES = ("unstructured", "block", "channel", "kernel", "n:m")
REDUCTIONS = ("sum", "mean", "l2")


class Units:
    """Unit scores of one weight, and the way back from kept units to an element mask."""

    def __init__(self, shape: tuple, granularity: str, block_size: tuple[int, int] | None = None):
        self.shape = tuple(shape)
        self.granularity = granularity
        rows = self.shape[0] if self.shape else 1
        self.view = (rows, math.prod(self.shape[1:]) if len(self.shape) > 1 else 1)
        # Conv blocks tile the tap-major view (see the module docstring); everything else the row-major one.
        self.tap_major = granularity == "block" and len(self.shape) > 2
        if granularity == "block":
            self.block = block_size
        elif granularity == "channel":
            self.block = (1, self.view[1])
        elif granularity == "kernel":
            taps = math.prod(self.shape[2:]) if len(self.shape) > 2 else 1
            self.block = (1, taps)
        else:  # unstructured
            self.block = (1, 1)
        bh, bw = self.block
        self.grid = (-(-self.view[0] // bh), -(-self.view[1] // bw))  # ceil division: partial edge tiles

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]

    def sizes(self) -> torch.Tensor:
        """Weights per unit (int64, flattened grid order): edge tiles hold fewer."""
        bh, bw = self.block
        if self.count == 0:
            return torch.zeros(0, dtype=torch.int64)
        rows = torch.full((self.grid[0],), bh, dtype=torch.int64)
        cols = torch.full((self.grid[1],), bw, dtype=torch.int64)
        rows[-1] = self.view[0] - bh * (self.grid[0] - 1)
        cols[-1] = self.view[1] - bw * (self.grid[1] - 1)
        return (rows[:, None] * cols[None, :]).flatten()

    def scores(self, element_scores: torch.Tensor, reduce: str) -> torch.Tensor:
        """One score per unit (float64, flattened grid order)."""
        s = self._to_view(element_scores.detach().to(torch.float64))
        if self.block == (1, 1):
            return s.flatten()
        tiles = self._tiles(s, 0.0)  # (grid_r, bh, grid_c, bw), zero padded
        if reduce == "l2":
            total = tiles.square().sum(dim=(1, 3)).sqrt()
        else:
            total = tiles.sum(dim=(1, 3))
        if reduce == "mean":
            total = total / self.sizes().view(self.grid).to(total.dtype)
        return total.flatten()

    def all_of(self, element_flags: torch.Tensor) -> torch.Tensor:
        """Per unit: are all its weights flagged (a unit may be kept only if every weight of it may)."""
        flags = self._to_view(element_flags)
        if self.block == (1, 1):
            return flags.flatten().clone()
        return self._tiles(flags, True).all(dim=(1, 3)).flatten()

    def expand(self, kept_units: torch.Tensor) -> torch.Tensor:
        """Bool element mask of the weight's shape from a bool vector over the units."""
        bh, bw = self.block
        grid = kept_units.view(self.grid)
        full = grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[: self.view[0], : self.view[1]]
        if self.tap_major:  # (out, kH·kW·in) back to (out, in, kH, kW)
            full = full.reshape(self.shape[0], *self.shape[2:], self.shape[1]).movedim(-1, 1)
        return full.reshape(self.shape).clone(memory_format=torch.contiguous_format)

    def _to_view(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(self.shape)
        return (t.movedim(1, -1) if self.tap_major else t).reshape(self.view)

    def _tiles(self, t: torch.Tensor, fill) -> torch.Tensor:
        bh, bw = self.block
        padded = t.new_full((self.grid[0] * bh, self.grid[1] * bw), fill)
        padded[: self.view[0], : self.view[1]] = t
        return padded.view(self.grid[0], bh, self.grid[1], bw)


def check_granularity(granularity: str, block_size, n_m, reduce: str) -> tuple:
    """Validated (granularity, block_size, n_m): block_size as (bh, bw), n_m as (n, m)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    if granularity == "block":
        if block_size is None:
            raise ValueError("block_size: granularity 'block' needs block_size=(bh, bw) (or an int for square)")
        block_size = _positive_pair(block_size, "block_size")
    elif block_size is not None:
        raise ValueError(f"block_size: only used with granularity 'block', got granularity {granularity!r}")
    if granularity == "n:m":
        if n_m is None:
            raise ValueError("n_m: granularity 'n:m' needs n_m=(n, m), e.g. (2, 4)")
        n_m = _positive_pair(n_m, "n_m")
        if n_m[0] > n_m[1]:
            raise ValueError(f"n_m: expected n <= m, got {n_m}")
    elif n_m is not None:
        raise ValueError(f"n_m: only used with granularity 'n:m', got granularity {granularity!r}")
    return granularity, block_size, n_m


def _positive_pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name}: expected two positive ints (or one), got {value!r}")
    return pair
