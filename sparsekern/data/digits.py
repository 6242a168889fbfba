"""scikit-learn's handwritten digits: 1,797 real 8x8 images, 10 classes, shipped with scikit-learn.

The split is ``sparsekern.demo``'s, index for index, so results are comparable with the demo: stratified
70/15/15 train/val/test, two ``train_test_split`` calls with ``random_state=0`` (30% held out, then halved).
Pixels (0..16) are scaled to [0, 1]; ``image_size`` upscales bilinearly once, at load. mean/std are the
training split's, over all its pixels. Augmentation: small random crops, no flips (a mirrored digit is
another symbol, or none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import check_image_size
from .splits import ImageData, Split

NATIVE_SIZE = 8
MAX_PIXEL = 16.0
SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


def split_indices(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx, test_idx)``: the same calls as ``sparsekern.demo.load_splits``."""
    from sklearn.model_selection import train_test_split

    index = torch.arange(len(labels))
    held_out = VAL_FRACTION + TEST_FRACTION
    train_idx, rest_idx = train_test_split(index, test_size=held_out, stratify=labels, random_state=SPLIT_SEED)
    val_idx, test_idx = train_test_split(rest_idx, test_size=TEST_FRACTION / held_out,
                                         stratify=labels[rest_idx], random_state=SPLIT_SEED)
    return train_idx, val_idx, test_idx


def load_digits(*, image_size=None, val_size=None) -> ImageData:
    """The digits as float32 ``(N, 1, size, size)`` images in [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    size = check_image_size(image_size, "digits") or NATIVE_SIZE
    if val_size is not None:
        raise ValueError(f"val_size: digits has a fixed 70/15/15 split (the demo's); expected None, got {val_size!r}")
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / MAX_PIXEL
    labels = torch.tensor(digits.target, dtype=torch.int64)
    if size != NATIVE_SIZE:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    train_idx, val_idx, test_idx = split_indices(labels)
    train = images[train_idx]
    mean, std = train.mean().item(), train.std().item()
    return ImageData(
        name="digits", num_classes=10, in_channels=1, image_size=size, mean=(mean,), std=(std,),
        train=Split(train, labels[train_idx]), val=Split(images[val_idx], labels[val_idx]),
        test=Split(images[test_idx], labels[test_idx]),
        crop_padding=max(1, size // NATIVE_SIZE), flip=False)
