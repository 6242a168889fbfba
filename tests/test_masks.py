"""sparsekern.masks.random_mask: exact kept count, determinism under a seeded generator, block structure."""
from __future__ import annotations

import pytest
import torch

from sparsekern import BSRLayout
from sparsekern.masks import random_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(7, 123), (1, 1), (1, 50), (50, 1), (3, 4, 5), (1000,)], ids=str)
def test_exact_kept_count(shape, sparsity):
    mask = random_mask(shape, sparsity)
    numel = 1
    for s in shape:
        numel *= s
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape
    assert int(mask.sum()) == round((1 - sparsity) * numel)


def test_same_seed_same_mask_and_different_seed_different_mask():
    a = random_mask((40, 50), 0.8, generator=torch.Generator().manual_seed(123))
    b = random_mask((40, 50), 0.8, generator=torch.Generator().manual_seed(123))
    c = random_mask((40, 50), 0.8, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The generator, not the global RNG, decides.
    torch.manual_seed(0)
    d = random_mask((40, 50), 0.8, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, d)


def test_kept_positions_are_spread_uniformly():
    """Each position is kept with probability 1 - sparsity: over 400 draws every row and column gets its share."""
    gen = torch.Generator().manual_seed(0)
    counts = sum(random_mask((8, 10), 0.75, generator=gen).double() for _ in range(400))
    freq = counts / 400
    assert abs(freq.mean().item() - 0.25) < 1e-12
    # Binomial(400, 0.25): sd 0.0217 per cell; a per-row mean over 10 cells has sd ~0.007.
    assert (freq.mean(1) - 0.25).abs().max().item() < 0.04
    assert (freq.mean(0) - 0.25).abs().max().item() < 0.04
    assert freq.min().item() > 0.1 and freq.max().item() < 0.4


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("block_size", [(2, 3), (4, 4), 4, (1, 8), (16, 16)], ids=str)
def test_block_structure(block_size, sparsity):
    bh, bw = (block_size, block_size) if isinstance(block_size, int) else block_size
    shape = (bh * 5, bw * 6)
    mask = random_mask(shape, sparsity, block_size=block_size, generator=torch.Generator().manual_seed(7))
    assert tuple(mask.shape) == shape and mask.dtype == torch.bool
    grid = mask.view(5, bh, 6, bw).permute(0, 2, 1, 3)
    # Whole blocks only: every block all kept or all pruned.
    assert torch.equal(grid.any(dim=(2, 3)), grid.all(dim=(2, 3)))
    assert int(grid.all(dim=(2, 3)).sum()) == round((1 - sparsity) * 30)
    BSRLayout.from_mask(mask, (bh, bw)).validate()


def test_device_argument():
    mask = random_mask((4, 5), 0.5, device="cpu")
    assert mask.device == torch.device("cpu")
    mask = random_mask((4, 6), 0.5, device="cpu", block_size=2)
    assert mask.device == torch.device("cpu")


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan")])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\], got"):
        random_mask((4, 4), sparsity)


def test_block_size_must_tile_shape():
    with pytest.raises(ValueError, match=r"block_size: 3x3 blocks must tile the 2-D shape, got shape \(4, 6\)"):
        random_mask((4, 6), 0.5, block_size=3)
    with pytest.raises(ValueError, match=r"block_size: 2x2 blocks must tile the 2-D shape, got shape \(4, 4, 4\)"):
        random_mask((4, 4, 4), 0.5, block_size=2)
