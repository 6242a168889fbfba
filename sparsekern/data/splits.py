"""What a loaded dataset is: image splits in memory plus what a trainer needs to normalise and augment them.

A ``Split`` holds all its images in one ``(N, C, H, W)`` tensor (uint8 0..255, or float32 in [0, 1]) and its
labels in one int64 ``(N,)`` tensor: the datasets here fit in memory, and slicing one tensor is far faster
than assembling samples one by one. ``ImageData`` bundles the three splits with the per-channel statistics
and augmentation settings of its dataset, and builds the ``BatchLoader``s for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .loader import BatchLoader

EVAL_BATCH_SIZE = 256  # evaluation keeps no activations for backward, so bigger batches are cheap


@dataclass
class Split:
    """Images ``(N, C, H, W)`` (uint8 0..255 or float32 in [0, 1]) and their int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"images: expected a torch.Tensor, got {type(self.images).__name__}")
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(self.labels).__name__}")
        if self.images.dim() != 4:
            raise ValueError(f"images: expected a 4-D (N, C, H, W) tensor, got shape {tuple(self.images.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"images: expected dtype uint8 or float32, got {self.images.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"labels: expected a 1-D int64 tensor, got {self.labels.dim()}-D {self.labels.dtype}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"labels: expected one per image ({len(self.images)}), got {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    """A dataset ready to train on: three splits, per-channel mean/std on the [0, 1] pixel scale, and the
    augmentation it is usually trained with (``crop_padding`` pixels of zero padding for random crops, 0 =
    no crop; ``flip`` = random horizontal flips)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split
    crop_padding: int
    flip: bool

    def loaders(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu",
                eval_batch_size: int | None = None, augment: bool = True, train_drop_last: bool = False):
        """``(train_loader, val_loader, test_loader)``.

        Train: shuffled, augmented with this dataset's crop/flip (when ``augment``) and sharded over
        ``world_size`` ranks. Val and test: in order, never augmented, not sharded: every rank evaluates the
        whole split (small enough, and no cross-rank reduction can go wrong). ``eval_batch_size`` defaults to
        ``max(batch_size, 256)``. ``train_drop_last`` drops each rank's last, smaller training batch (a
        batch of one image breaks BatchNorm).
        """
        if eval_batch_size is None:
            eval_batch_size = max(batch_size, EVAL_BATCH_SIZE) if isinstance(batch_size, int) else batch_size
        common = dict(mean=self.mean, std=self.std, device=device)
        train = BatchLoader(self.train, batch_size, shuffle=True, augment=augment, crop_padding=self.crop_padding,
                            flip=self.flip, seed=seed, rank=rank, world_size=world_size, drop_last=train_drop_last,
                            **common)
        val = BatchLoader(self.val, eval_batch_size, **common)
        test = BatchLoader(self.test, eval_batch_size, **common)
        return train, val, test
