"""The main job: train the same MLP dense and at 95% sparsity on real handwritten digits, side by side.

    python -m sparsekern.demo            # or: sparsekern-demo
    python -m sparsekern.demo --help

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, 10 classes; ships with
scikit-learn, no download). A fixed stratified split (70% train, 15% val, 15% test; split seed 0,
independent of ``--seed``). Images are upscaled bilinearly to ``--image-size`` (default 32x32, so 1,024
inputs): this adds no information, it makes the input layer as big as a real image model's so that its
GEMMs cost something. Inputs are standardised with the training set's per-pixel mean and std.

Model: ``fc1: in -> hidden``, ReLU, ``fc2: hidden -> hidden``, ReLU, ``out: hidden -> 10``. The dense run
uses ``nn.Linear`` everywhere. The sparse run is a deep copy of the *same initial weights* in which fc1
and fc2 are swapped for ``SparseLinear`` (via ``sparsekern.sparsify``, i.e. ``SparseLinear.from_dense``)
with uniform random masks at ``--sparsity`` (one mask generator seeded with ``--seed``); at the default
sizes they hold 99.7% of the weights. The output layer (hidden x 10) stays dense in both runs: it holds
0.3% of the weights, too few for skipping them to pay, so sparsifying it would only cost accuracy.

Both runs use the same optimiser (fused Adam), learning rate, batch size, data order and seed; their epochs
alternate so that other load on the machine hits both alike. Reported: val and test accuracy of the final
model, and the median wall-clock time of a training epoch over the training set (evaluation excluded),
whole and split into forward+backward and optimiser steps, each with ``speedup = dense time / sparse time``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import sparsekern
from sparsekern.allocator import current_setting, keep_freed_memory
from sparsekern.masks import random_mask
from sparsekern.nn import BACKENDS, SparseLinear

SPLIT_SEED = 0            # the train/val/test split never changes with --seed
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SPARSE_LAYERS = ("fc1", "fc2")


@dataclass
class Splits:
    """Standardised float32 inputs ``(n, features)`` and int64 labels ``(n,)`` per split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.x_train.shape[1]


@dataclass
class EpochTime:
    """Wall-clock seconds of one training epoch, and the part of it spent in the optimizer."""

    total: float
    optimizer: float

    @property
    def compute(self) -> float:
        """Forward and backward passes (with batching and the loss): the part the sparse kernels run."""
        return self.total - self.optimizer


@dataclass
class RunResult:
    """What one training run measured."""

    name: str
    epochs: list[EpochTime] = field(default_factory=list)
    val_accuracy: float = 0.0
    test_accuracy: float = 0.0
    trainable: int = 0

    def median(self, part: str = "total") -> float:
        """Median over epochs of ``part`` ("total", "compute" or "optimizer"): robust to the first epoch's
        warm-up and to short bursts of other load."""
        return statistics.median(getattr(e, part) for e in self.epochs)

    def fastest(self) -> float:
        """The fastest epoch's total: the least disturbed by other processes on a shared machine."""
        return min(e.total for e in self.epochs)


# ------------------------------------------------------------------------------------------------ data

def upscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize ``(n, h, w)`` images to ``(n, size, size)``; a no-op when already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def load_splits(image_size: int) -> Splits:
    """The digits, split 70/15/15 (stratified, fixed), upscaled, flattened, standardised on train."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    index = torch.arange(len(labels))
    held_out = VAL_FRACTION + TEST_FRACTION
    train_idx, rest_idx = train_test_split(index, test_size=held_out, stratify=labels, random_state=SPLIT_SEED)
    val_idx, test_idx = train_test_split(rest_idx, test_size=TEST_FRACTION / held_out,
                                         stratify=labels[rest_idx], random_state=SPLIT_SEED)
    x = upscale(images, image_size).reshape(len(labels), -1)
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0).clamp_min(1e-6)  # constant border pixels would otherwise divide by zero
    x = (x - mean) / std
    return Splits(x[train_idx], labels[train_idx], x[val_idx], labels[val_idx], x[test_idx], labels[test_idx])


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches covering ``range(n)``; the order depends only on ``generator``'s state."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------- models

def build_dense_mlp(in_features: int, hidden: int, classes: int, seed: int) -> nn.Sequential:
    """The dense MLP, initialised by ``nn.Linear``'s default from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(in_features, hidden)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, hidden)),
        ("relu2", nn.ReLU()),
        ("out", nn.Linear(hidden, classes)),
    ]))


def random_masks(model: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Uniform random masks at ``sparsity`` for the weights of ``SPARSE_LAYERS``, all from one seed."""
    generator = torch.Generator().manual_seed(seed)
    return {f"{name}.weight": random_mask(getattr(model, name).weight.shape, sparsity, generator=generator)
            for name in SPARSE_LAYERS}


def build_sparse_mlp(dense: nn.Module, sparsity: float, seed: int, backend: str) -> nn.Module:
    """A copy of ``dense`` (same initial weights) with ``SPARSE_LAYERS`` swapped for ``SparseLinear``."""
    return sparsekern.sparsify(copy.deepcopy(dense), random_masks(dense, sparsity, seed), backend=backend)


def count_trainable(model: nn.Module) -> int:
    """Trainable scalars: for a SparseLinear, only its kept weights (and bias)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(model: nn.Module) -> str:
    """One line per linear layer: shape, kept weights, and which backend actually runs it."""
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            lines.append(f"  {name}: SparseLinear {module.in_features}->{module.out_features}, "
                         f"{module.nnz:,} kept ({module.density:.1%}), backend {module.backend!r} -> "
                         f"{module.resolved_backend()!r}")
        elif isinstance(module, nn.Linear):
            lines.append(f"  {name}: nn.Linear {module.in_features}->{module.out_features}, "
                         f"{module.weight.numel():,} weights (dense)")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- training

def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator, progress: bool, desc: str) -> tuple[float, EpochTime]:
    """One pass over ``(x, y)`` in shuffled batches; returns (mean loss, its wall-clock time)."""
    model.train()
    total_loss = 0.0
    optimizer_seconds = 0.0
    start = time.perf_counter()
    for index in tqdm(batches(len(y), batch_size, generator), desc=desc, leave=False, disable=not progress,
                      unit="batch"):
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        step_start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        optimizer_seconds += time.perf_counter() - step_start
        total_loss += loss.item() * len(index)
    return total_loss / len(y), EpochTime(time.perf_counter() - start, optimizer_seconds)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


class Run:
    """One model being trained: its optimiser, its own data-order generator, and what was measured."""

    def __init__(self, name: str, model: nn.Module, args: argparse.Namespace):
        self.model = model
        # fused: one multi-tensor kernel per step. The default per-tensor Adam takes ~20 ms a step on the
        # dense model's 6.3M weights here (about 7x the fused one), which would flatter the sparse model.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
        self.generator = torch.Generator().manual_seed(args.seed)  # the same data order for every model
        self.result = RunResult(name, trainable=count_trainable(model))


def train_side_by_side(runs: list[Run], data: Splits, args: argparse.Namespace) -> None:
    """Train every run for ``args.epochs``, alternating epochs between runs, one printed line per epoch.

    Alternating (rather than training one model after the other) exposes both models to the same machine
    load over time, so a busy neighbour process skews their times alike rather than one of them.
    """
    for epoch in range(1, args.epochs + 1):
        for run in runs:
            name = run.result.name
            loss, timing = train_epoch(run.model, run.optimizer, data.x_train, data.y_train, args.batch_size,
                                       run.generator, args.progress, desc=f"{name} epoch {epoch}/{args.epochs}")
            run.result.epochs.append(timing)
            val = accuracy(run.model, data.x_val, data.y_val)
            tqdm.write(f"  epoch {epoch:>2}/{args.epochs}  {name:<10} loss {loss:.4f}  val {val:6.2%}  "
                       f"{timing.total:.3f} s (fwd+bwd {timing.compute:.3f}, optimizer {timing.optimizer:.3f})")
    for run in runs:
        run.result.val_accuracy = accuracy(run.model, data.x_val, data.y_val)
        run.result.test_accuracy = accuracy(run.model, data.x_test, data.y_test)


# --------------------------------------------------------------------------------------------- report

def format_table(dense: RunResult, sparse: RunResult) -> str:
    """The side-by-side result table (Markdown). Times are medians over epochs; each speedup is the dense
    model's time divided by this model's, for the whole epoch and for each of its two parts."""
    rows = [("model", "trainable", "val acc", "test acc", "s/epoch", "speedup", "fwd+bwd s", "speedup",
             "optimizer s", "speedup")]
    for run in (dense, sparse):
        row = [run.name, f"{run.trainable:,}", f"{run.val_accuracy:.2%}", f"{run.test_accuracy:.2%}"]
        for part in ("total", "compute", "optimizer"):
            row += [f"{run.median(part):.3f}", f"{dense.median(part) / run.median(part):.2f}x"]
        rows.append(tuple(row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine_was_busy() -> bool:
    """True when the 1-minute load average exceeds the cores by more than this job's own threads could
    explain (it adds at most ``torch.get_num_threads()`` runnable threads, usually fewer)."""
    return os.getloadavg()[0] > max(os.cpu_count() or 1, torch.get_num_threads()) + 1


def timing_note(dense: RunResult, sparse: RunResult, busy: bool, spread: float = 1.5) -> str | None:
    """A warning when the times are not to be quoted: the machine was ``busy``, or a model's epoch times
    (after the first) varied by more than ``spread``x.

    Epochs of the same model do the same work, so a wide spread means other processes took the CPU. With
    every core busy, an OpenMP/MKL parallel region waits for its preempted threads, which can make every epoch
    many times slower, the dense and the sparse one alike, so the ratio then says little.
    """
    def varied(run: RunResult) -> bool:
        totals = [e.total for e in run.epochs[1:]]
        return len(totals) > 1 and max(totals) > spread * min(totals)

    noisy = [run for run in (dense, sparse) if varied(run)]
    if not noisy and not busy:
        return None
    reasons = []
    if busy:
        reasons.append(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    if noisy:
        reasons.append("epoch times varied: " + ", ".join(
            f"{run.name} {min(e.total for e in run.epochs[1:]):.3f}-{max(e.total for e in run.epochs[1:]):.3f} s"
            for run in noisy))
    return (f"note: other processes competed for the CPU ({'; '.join(reasons)}). The fastest epochs give a "
            f"speedup of {dense.fastest() / sparse.fastest():.2f}x. Re-run on an idle machine (or with --threads "
            f"1 beside other jobs) before quoting a figure.")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sparsekern.demo",
        description="Train the same MLP dense and sparse (SparseLinear, random masks) on scikit-learn's "
                    "handwritten digits, and compare accuracy and time per epoch.")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per model (default 20)")
    parser.add_argument("--sparsity", type=float, default=0.95,
                        help="fraction of fc1/fc2 weights pruned (default 0.95)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden width of fc1/fc2 (default 2048)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="upscale the 8x8 digits to this size; 8 keeps the originals (default 32)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size (default 128)")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initial weights, masks and data order (default 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch CPU threads (default: torch's choice, here {torch.get_num_threads()})")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="SparseLinear backend: auto (sparse kernels above the measured crossover "
                             "sparsity), sparse, or dense (masked dense GEMM fallback) (default auto)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they are also off when stderr is not a terminal)")
    parser.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                        help="leave glibc's allocator at its defaults, as `sparsekern train` does with the same "
                             "flag (sparsekern/allocator.py); by default freed memory is kept for reuse")
    args = parser.parse_args(argv)
    for name in ("epochs", "hidden", "image_size", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity: expected a number in [0, 1), got {args.sparsity}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a positive integer, got {args.threads}")
    args.progress = args.progress and sys.stderr.isatty()
    return args


def print_environment(args: argparse.Namespace, data: Splits) -> None:
    """Versions, threads, whether compiled kernels are loaded, the data, and a warning on a busy machine."""
    kernels = "yes" if sparsekern.extension_available else "no (every sparse op runs the PyTorch reference)"
    print(f"sparsekern {sparsekern.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"compiled kernels: {kernels}; allocator: {current_setting().description}")
    print(f"digits: {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test, "
          f"{args.image_size}x{args.image_size} = {data.in_features} inputs")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        print(f"note: load average {load:.1f} on {cores} cores before starting: other processes compete for the "
              f"CPU, so the times below are noisy")


def main(argv=None) -> int:
    """Entry point of ``python -m sparsekern.demo`` and the ``sparsekern-demo`` console script."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    started = time.perf_counter()
    data = load_splits(args.image_size)
    print_environment(args, data)

    dense = build_dense_mlp(data.in_features, args.hidden, 10, args.seed)
    sparse = build_sparse_mlp(dense, args.sparsity, args.seed, args.backend)  # copied before any training
    sparse_name = f"sparse{args.sparsity * 100:g}%"
    print(f"\ndense MLP:\n{describe(dense)}\n{sparse_name} MLP:\n{describe(sparse)}\n")

    epochs = f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}"
    print(f"training {epochs} each, alternating: fused Adam lr {args.lr}, batch {args.batch_size}, seed {args.seed}")
    runs = [Run("dense", dense, args), Run(sparse_name, sparse, args)]
    train_side_by_side(runs, data, args)

    results = [run.result for run in runs]
    print(f"\n{format_table(*results)}")
    print(f"\nval/test acc: the final model. s/epoch: wall-clock training time of an epoch ({len(data.y_train)} "
          f"samples), median over {epochs}; fwd+bwd: its forward and backward passes (the sparse kernels' "
          f"part); optimizer: its Adam steps (sized by the trainable weights). speedup = dense time / this "
          f"model's.")
    note = timing_note(*results, busy=machine_was_busy())
    if note:
        print(note)
    print(f"Total run time {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
