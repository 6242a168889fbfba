"""Places in a block where a ghost skip connection may run beside a conv + BatchNorm.

The training recipe (sparsekern.recipe.ghost_skips) adds, for each declared site, a dense 1×1 conv +
BatchNorm branch from the conv's input, scaled by ``ghost_alpha``, to the BatchNorm's output:
``bn(conv(x)) + α · bn_g(conv1x1_g(x))``. A block declares its sites in ``__init__`` and calls
``self.add_ghost(site, x, out)`` in ``forward``; with no branch attached that returns ``out`` itself, so a
block without ghosts computes exactly what it would without this class, and its ``state_dict`` has the
same keys (an empty site is a ``None`` submodule, which holds no state).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GhostSite:
    in_channels: int
    out_channels: int
    stride: int


class GhostSites(nn.Module):
    """Base class for blocks with ghost-skip sites (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.ghost_alpha = 0.0  # set by the recipe's schedule; a plain float, not state
        self.ghost_sites: dict[str, GhostSite] = {}

    def declare_ghost(self, site: str, in_channels: int, out_channels: int, stride: int = 1) -> None:
        """A site named ``site`` (the attribute the branch will live in): the conv's channels and stride.

        Site names start with "ghost": the initialisers recognise ghost branches by that prefix."""
        if not site.startswith("ghost"):
            raise ValueError(f"site: ghost-site names must start with 'ghost', got {site!r}")
        self.ghost_sites[site] = GhostSite(in_channels, out_channels, stride)
        self.add_module(site, None)

    def add_ghost(self, site: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        branch = self._modules[site]
        if branch is None:
            return out
        return out + self.ghost_alpha * branch(x)
