"""How a validation split is held out of a dataset's training images, the same way on every run.

Both selections are drawn from their own ``torch.Generator().manual_seed(0)`` (never the global RNG), so
the split is fixed by the data alone and does not move with a training run's ``--seed``. The returned index
sets are sorted, so both splits keep the file order of the images they hold.
"""
from __future__ import annotations

import numbers

import torch

HOLDOUT_SEED = 0


def check_val_size(val_size, n_train: int, dataset: str, default: int) -> int:
    """``val_size`` (None = ``default``) as an int in ``[0, n_train)``: at least one image must stay train."""
    if val_size is None:
        val_size = default
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral):
        raise TypeError(f"val_size: expected an int or None, got {type(val_size).__name__}")
    if not 0 <= val_size < n_train:
        raise ValueError(f"val_size: expected 0 <= val_size < {n_train} (the {dataset} training images), "
                         f"got {val_size}")
    return int(val_size)


def random_holdout(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: a fixed permutation of ``range(n)`` (generator seeded with 0); its last
    ``val_size`` entries are val, the rest train."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    cut = n - val_size
    return order[:cut].sort().values, order[cut:].sort().values


def stratified_holdout(labels: torch.Tensor, val_size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)`` with val holding ``val_size // num_classes`` images of every class (the first
    ``val_size % num_classes`` classes one more), picked per class in class order from one generator seeded
    with 0; each class keeps at least one training image."""
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    base, extra = divmod(val_size, num_classes)
    val_parts = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        k = base + (1 if c < extra else 0)
        if k >= len(members):
            raise ValueError(f"val_size: {val_size} asks {k} validation images of class {c}, which has only "
                             f"{len(members)} training images; expected fewer")
        val_parts.append(members[torch.randperm(len(members), generator=generator)[:k]])
    val_idx = torch.cat(val_parts).sort().values if val_parts else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx
