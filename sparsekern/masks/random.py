"""Uniform random masks: each weight equally likely to be kept, exactly round((1-sparsity)·n) kept."""
from __future__ import annotations

import torch


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
