"""Batches from a split held in memory: shuffle, shard, augment and normalise whole batches at once.

No ``DataLoader`` and no worker processes: the datasets here fit in memory, and indexing one tensor and
augmenting the batch with a few tensor ops is much faster than collating per-sample Python work.

Reproducibility: the order and the augmentation of an epoch are drawn from private generators seeded from
``(seed, epoch)`` (plus the rank for augmentation), never from the global torch RNG and never from earlier
epochs, so a run resumed at epoch ``e`` (``set_epoch(e)``) sees exactly the batches of the original run.
The random draws are made on the CPU even for a GPU ``device``, so they are the same on every device.
"""
from __future__ import annotations

import itertools
import math
import numbers
import time

import torch

_MASK64 = (1 << 64) - 1
_ORDER_STREAM = 0    # the epoch's permutation: the same on every rank, so the shards fit together
_AUGMENT_STREAM = 1  # crops and flips: different per rank, or every rank would crop its shard alike


def stream_seed(*values: int) -> int:
    """A 63-bit seed that mixes all of ``values``, so nearby ``(seed, epoch)`` pairs give unrelated streams
    (seeding with ``seed + epoch`` would make seed 1 epoch 0 replay seed 0 epoch 1)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (v & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 29
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 32
    return h >> 1  # Generator.manual_seed takes any int below 2**64; 63 bits keeps clear of sign quirks


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _channel_values(values, name: str, channels: int) -> tuple[float, ...]:
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (float(values),) * channels  # one number for every channel
    try:
        values = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{name}: expected a float or a sequence of {channels} floats, "
                        f"got {type(values).__name__}") from None
    if len(values) != channels:
        raise ValueError(f"{name}: expected {channels} values (one per channel), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected finite values, got {values}")
    return values


class BatchLoader:
    """Iterate ``(x, y)`` batches of ``split``: x float32 ``(B, C, H, W)`` normalised per channel with
    ``mean``/``std`` (given on the [0, 1] scale; uint8 images are divided by 255 first), y int64 ``(B,)``,
    both on ``device``.

    ``shuffle``: a new permutation every epoch (call ``set_epoch`` before each). ``augment``: a random crop
    after ``crop_padding`` pixels of zero padding and, with ``flip``, a horizontal flip with p=0.5, drawn per
    image. ``world_size > 1``: like ``DistributedSampler``, the permutation is padded by repeating its start
    to a multiple of ``world_size`` and rank ``r`` takes ``order[r::world_size]``, so every rank has the same
    number of batches. ``drop_last`` drops this rank's last, incomplete batch. ``len()`` = batches per epoch.
    """

    def __init__(self, split, batch_size: int, *, mean, std, shuffle: bool = False, augment: bool = False,
                 crop_padding: int = 0, flip: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, device="cpu"):
        images, labels = getattr(split, "images", None), getattr(split, "labels", None)
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError(f"split: expected a Split with images and labels tensors, got {type(split).__name__}")
        if images.dim() != 4:
            raise ValueError(f"split: expected (N, C, H, W) images, got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"split: expected uint8 or float32 images, got {images.dtype}")
        self.split = split
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        channels = images.shape[1]
        self.mean = _channel_values(mean, "mean", channels)
        self.std = _channel_values(std, "std", channels)
        if min(self.std) <= 0:
            raise ValueError(f"std: expected positive values, got {self.std}")
        self.crop_padding = _check_int(crop_padding, "crop_padding", 0)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({self.world_size}), got {self.rank}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.shuffle, self.augment, self.flip, self.drop_last = bool(shuffle), bool(augment), bool(flip), \
            bool(drop_last)
        self.device = torch.device(device)
        self.epoch = 0
        shape = (1, channels, 1, 1)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(shape)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields."""
        self.epoch = _check_int(epoch, "epoch", 0)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (before ``drop_last``), padding included."""
        return math.ceil(len(self.split.labels) / self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in the order they are batched."""
        n = len(self.split.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(stream_seed(_ORDER_STREAM, self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            missing = self.num_samples * self.world_size - n
            if missing and n:
                # repeat the start (several times over if the split is tiny) so all ranks get equal shares
                order = torch.cat([order, order.repeat(math.ceil(missing / n))[:missing]])
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self):
        order = self.indices()
        generator = None
        if self.augment and (self.crop_padding or self.flip):
            generator = torch.Generator().manual_seed(
                stream_seed(_AUGMENT_STREAM, self.seed, self.epoch, self.rank))
        images, labels = self.split.images, self.split.labels
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start:start + self.batch_size]
            # gather on the host in the stored dtype (uint8: 4x fewer bytes to move), then work on device;
            # index_select copies whole rows, several times faster than images[idx] on uint8
            x = images.index_select(0, idx).to(self.device, non_blocking=True)
            y = labels.index_select(0, idx).to(self.device, non_blocking=True)
            if generator is not None:
                x = self._augment(x, generator)
            yield self._normalise(x), y

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop of the zero-padded image and random horizontal flip, per image, in one gather.

        Done on the raw pixels: a zero pixel is 0 on the [0, 1] scale too, so this equals padding the
        [0, 1] image before normalising (torchvision's RandomCrop then Normalize).
        """
        b, c, h, w = x.shape
        p = self.crop_padding
        dev = x.device
        # draws on the CPU generator (the same numbers on every device), index arithmetic on x's device
        if p:
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(dev)
        else:
            dy = dx = torch.zeros(b, dtype=torch.long, device=dev)
        cols = torch.arange(w, device=dev).expand(b, w)
        if self.flip:
            flipped = torch.randint(0, 2, (b,), generator=generator).bool().to(dev)
            cols = torch.where(flipped[:, None], w - 1 - cols, cols)
        rows = dy[:, None] + torch.arange(h, device=dev)          # (b, h): rows of the padded image
        cols = dx[:, None] + cols                                 # (b, w): columns, reversed if flipped
        wp = w + 2 * p
        flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w)
        if p:  # zeros plus one copy: faster than F.pad's generic path on uint8
            padded = x.new_zeros((b, c, h + 2 * p, wp))
            padded[:, :, p:p + h, p:p + w] = x
        else:
            padded = x
        out = torch.gather(padded.reshape(b, c, -1), 2, flat.expand(b, c, h * w))
        return out.view(b, c, h, w)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255)
        # else float32: x came from index_select (or the gather), a fresh tensor, so the in-place ops
        # below never write into the split's own storage
        return x.sub_(self._mean).div_(self._std)


def loader_throughput(loader, batches: int | None = None) -> float:
    """Images per second of pure iteration over ``loader`` (its current epoch; at most ``batches`` batches,
    default the whole epoch), waiting for a GPU to finish so the time is real."""
    if batches is not None:
        batches = _check_int(batches, "batches", 1)
    images = 0
    device = None
    start = time.perf_counter()
    for x, _ in itertools.islice(loader, batches):
        images += len(x)
        device = x.device
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    if images == 0:
        raise ValueError("loader: expected at least one batch to time, got none (empty split?)")
    return images / max(elapsed, 1e-9)
