"""Random pruning: uniform random masks at an exact sparsity, and random scores for any mask builder."""
from __future__ import annotations

import torch
from torch import nn

from .prunable import resolve_layers, weight_of


def random_mask(shape, sparsity: float, *, generator: torch.Generator | None = None, device=None,
                block_size=None) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``round((1 - sparsity) * numel)`` True entries.

    With ``block_size=(bh, bw)`` the mask is made of whole blocks (a random block mask at that sparsity);
    ``bh``/``bw`` must divide the 2-D shape.
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1], got {sparsity!r}")
    shape = tuple(int(s) for s in shape)
    if block_size is not None:
        bh, bw = (block_size, block_size) if isinstance(block_size, int) else block_size
        if len(shape) != 2 or shape[0] % bh or shape[1] % bw:
            raise ValueError(f"block_size: {bh}x{bw} blocks must tile the 2-D shape, got shape {shape}")
        grid = random_mask((shape[0] // bh, shape[1] // bw), sparsity, generator=generator, device=device)
        return grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    numel = 1
    for s in shape:
        numel *= s
    kept = round((1.0 - float(sparsity)) * numel)
    order = torch.randperm(numel, generator=generator)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[:kept]] = True
    return mask.view(shape).to(device)


def random_scores(model: nn.Module, layers=None, *, seed: int | None = None,
                  generator: torch.Generator | None = None) -> dict:
    """Weight name → i.i.d. uniform scores: with ``build_masks`` (scope ``"layer"`` for uniform per-layer
    sparsity, or a sparsity dict from ``erk_densities`` for ERK) they give random masks at any granularity.

    ``seed`` (or a ``generator``) makes them reproducible; the global RNG is used otherwise.
    """
    if seed is not None and generator is not None:
        raise ValueError("seed, generator: pass one of them, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    scores = {}
    for name, layer in resolve_layers(model, layers).items():
        weight = weight_of(layer)  # drawn on the CPU (the generator's device), then moved to the weight's
        scores[name] = torch.rand(tuple(weight.shape), generator=generator, dtype=torch.float64).to(weight.device)
    return scores
