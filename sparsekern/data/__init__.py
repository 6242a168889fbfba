"""Image datasets held in memory, and a batch iterator that shuffles, shards, augments and normalises.

    from sparsekern.data import load_dataset
    data = load_dataset("cifar10", "/data", download=True)      # or "digits" (embedded), "tinyimagenet"
    train, val, test = data.loaders(128, seed=0, rank=0, world_size=1, device="cuda")
    for epoch in range(epochs):
        train.set_epoch(epoch)                                     # order and augmentation fixed by (seed, epoch)
        for x, y in train: ...
"""
from .loader import BatchLoader, loader_throughput
from .registry import DATASETS, load_dataset
from .splits import ImageData, Split

__all__ = ["load_dataset", "DATASETS", "ImageData", "Split", "BatchLoader", "loader_throughput"]
