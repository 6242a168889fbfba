"""One training run: data, model, masks, recipe, optimiser, the epoch loop, checkpoints and metrics.

    result = train(TrainConfig(model="resnet32", dataset="cifar10", data_dir="data", mask="snip",
                               sparsity=0.98, recipe="tost"))

The run folder gets ``config.json``, ``metrics.jsonl`` / ``metrics.csv`` (one line per epoch),
``checkpoint.pt`` (the last epoch, to resume), ``best.pt`` (the best validation accuracy) and, once the run
has finished, ``result.json`` with the test accuracy of the best-validation checkpoint, as the paper reports.

Exact resume: the data order and augmentation of an epoch depend only on (seed, epoch), the learning rate
only on the epoch, the recipe's schedules only on the step; the checkpoint holds the rest (weights,
optimiser moments, RNG states). A run killed at any point and resumed ends as an uninterrupted run does.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..allocator import keep_freed_memory
from ..atomic_file import atomic_write
from ..nn import SparseConv2d, SparseLinear
from ..nn.sparsify import sparsify
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import Distributed

CHECKPOINT, BEST, RESULT, CONFIG, METRICS = "checkpoint.pt", "best.pt", "result.json", "config.json", "metrics"
# Fault injection for the crash-safety test: the process SIGKILLs itself after this many optimiser steps.
KILL_AFTER_STEPS_ENV = "SPARSEKERN_FAULT_KILL_AFTER_STEPS"


def train(config: TrainConfig, *, log=None) -> dict:
    """Run (or, with ``config.resume``, continue) one training; returns the result dict of ``result.json``."""
    config.validate()
    return _Run(config, log).execute()  # under torchrun the process group stays up for the next run


class _Run:
    def __init__(self, config: TrainConfig, log):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.keep_freed_memory:
            keep_freed_memory()  # before the first step allocates anything big (sparsekern/allocator.py)
        device_type = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        self.dist = Distributed.from_env(device_type)
        self.device = self.dist.device(device_type)
        self.log = log if log is not None else (print if self.dist.is_main else (lambda *a, **k: None))
        self.dir = config.run_dir()
        self.kill_after = int(os.environ.get(KILL_AFTER_STEPS_ENV, "0"))
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)

    # ---------------------------------------------------------------------------------------- set-up
    def execute(self) -> dict:
        c = self.config
        if os.path.isfile(os.path.join(self.dir, RESULT)) and c.resume:
            self._check_same_settings(saved_config(self.dir))
            self.log(f"{self.dir}: already finished; result.json kept")
            with open(os.path.join(self.dir, RESULT), encoding="utf-8") as f:
                return json.load(f)
        checkpoint = self._previous_checkpoint()
        if self.dist.is_main and checkpoint is None:  # a resumed run keeps the config.json it started with
            os.makedirs(self.dir, exist_ok=True)
            _write_json(os.path.join(self.dir, CONFIG), c.to_dict())
        self.dist.barrier()
        self.data = self._load_data()
        self.train_loader, self.val_loader, self.test_loader = self.data.loaders(
            c.batch_size, seed=c.seed, rank=self.dist.rank, world_size=self.dist.world_size, device=self.device,
            augment=c.augment, train_drop_last=self._last_batch_is_single())
        model, recipe, masks = self._build(checkpoint)
        self.model, self.recipe, self.masks = model, recipe, masks
        self.optimizer = self._optimizer(model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.history, self.best, start_epoch = [], {"val_acc": None, "epoch": 0}, 0
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.history, self.best, start_epoch = checkpoint["metrics"], checkpoint["best"], checkpoint["epoch"]
            set_rng_state(checkpoint["rng"], self.device)  # after the build, which seeds the RNG for the init
            if self.dist.is_main:
                self._write_metrics()
            self.log(f"resumed {self.dir} after epoch {start_epoch}")
        self.ddp_model = self.dist.wrap(model)
        self._describe()
        from ..data import loader_throughput

        self.train_loader.set_epoch(0)
        self.loader_rate = loader_throughput(self.train_loader, batches=min(20, len(self.train_loader)))
        self._loop(start_epoch)
        return self._finish()

    def _previous_checkpoint(self):
        path = os.path.join(self.dir, CHECKPOINT)
        if not self.config.resume:
            if os.path.exists(path):
                raise FileExistsError(f"out: {self.dir!r} already holds a run (checkpoint.pt); pass --resume to "
                                      f"continue it, or choose another --out")
            return None
        if not os.path.isfile(path):
            self.log(f"--resume: no checkpoint in {self.dir!r} yet; starting from the beginning")
            return None
        checkpoint = load_checkpoint(path)
        self._check_same_settings(checkpoint["config"])
        if checkpoint.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"resume: the run in {self.dir!r} ran in {checkpoint.get('world_size', 1)} process(es), "
                             f"now {self.dist.world_size}; the data shards and the batch would differ, so it "
                             f"would not continue exactly. Resume with the same number of processes")
        return checkpoint

    def _check_same_settings(self, saved: dict) -> None:
        check_same_settings(saved, self.config, self.dir)

    def _last_batch_is_single(self) -> bool:
        """Whether each rank's last training batch would hold one image (BatchNorm cannot normalise it): then
        that image is left out of each epoch instead."""
        per_rank = -(-len(self.data.train) // self.dist.world_size)
        single = per_rank % self.config.batch_size == 1
        if single:
            self.log(f"note: {per_rank} training images per process leave a last batch of 1 with batch size "
                     f"{self.config.batch_size}; it is dropped each epoch")
        return single

    def _load_data(self):
        from ..data import load_dataset

        c = self.config
        if c.download and self.dist.enabled and not self.dist.is_main:
            self.dist.barrier()  # rank 0 downloads first; the others then find the files
        data = load_dataset(c.dataset, c.data_dir, image_size=c.image_size, download=c.download,
                            val_size=c.val_size)
        if c.download and self.dist.enabled and self.dist.is_main:
            self.dist.barrier()
        return data

    def _build(self, checkpoint):
        """Model, recipe and masks: fresh (init, masks, recipe's init) or as saved (weights from ``checkpoint``)."""
        c = self.config
        if checkpoint is not None:
            return rebuild_model(checkpoint, c, self.data, self.device)
        torch.manual_seed(c.seed)
        model = _create_model(c, self.data, self.device)
        masks = self._compute_masks(model) if self.dist.is_main else None
        masks = _apply_masks(model, self.dist.broadcast_masks(masks, self.device), c, self.device)
        recipe = make_recipe(c)
        init_data = None
        if recipe.config.init == "gradinit":
            self.train_loader.set_epoch(0)
            init_data = self.train_loader
        recipe.prepare(model, None, data=init_data)
        return model, recipe, masks

    def _compute_masks(self, model) -> dict:
        from .. import masks as masks_lib

        c = self.config
        if c.masks_file:
            return masks_lib.load_masks(c.masks_file)
        if c.mask == "dense":
            return {}
        layers = masks_lib.prunable_layers(model, keep_first_conv_dense=c.keep_first_dense,
                                           keep_classifier_dense=c.keep_classifier_dense)
        block = (c.block_size, c.block_size) if c.block_size else None
        n_m = c.n_m_pair() if c.n_m else None
        self.train_loader.set_epoch(0)
        started = time.perf_counter()
        chosen = masks_lib.compute_masks(
            c.mask, model, c.sparsity, data=self.train_loader, batches=min(c.mask_batches, len(self.train_loader)),
            input_shape=(self.data.in_channels, self.data.image_size, self.data.image_size), seed=c.seed,
            layers=layers, scope=c.mask_scope, granularity=c.granularity, block_size=block, n_m=n_m)
        self.log(f"masks: {c.mask} at {c.sparsity:.1%} sparsity over {len(chosen)} layers "
                 f"({time.perf_counter() - started:.1f} s)")
        return chosen

    def _optimizer(self, model):
        c = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    def _lr_factor(self, epoch: int) -> float:
        c = self.config
        if c.lr_schedule == "constant":
            return 1.0
        if c.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, c.epochs) / c.epochs))
        return c.lr_gamma ** sum(epoch >= m for m in c.milestone_epochs())

    def _describe(self):
        c, d = self.config, self.data
        sparse = sum(isinstance(m, (SparseLinear, SparseConv2d)) for m in self.model.modules())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log(f"{c.run_name()}: {c.model} on {d.name} ({len(d.train)} train / {len(d.val)} val / {len(d.test)} "
                 f"test, {d.image_size}×{d.image_size}×{d.in_channels}), {sparse} sparse layers at "
                 f"{self._sparsity():.1%} sparsity, {trainable:,} trainable parameters, recipe {c.recipe}, "
                 f"device {self.device}, {torch.get_num_threads()} threads"
                 + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))

    def _sparsity(self) -> float:
        if not self.masks:
            return 0.0
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total

    # ------------------------------------------------------------------------------------------ loop
    def _loop(self, start_epoch: int):
        c = self.config
        steps_per_epoch = len(self.train_loader)
        total_steps = steps_per_epoch * c.epochs
        self.step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, c.epochs):
            started = time.perf_counter()
            train_loss, train_acc, images = self._train_epoch(epoch, total_steps)
            seconds = time.perf_counter() - started
            val_loss = val_acc = None  # rank 0 alone evaluates, decides the best epoch and writes files
            if len(self.data.val) and self.dist.is_main:
                val_loss, val_acc = self._evaluate(self.val_loader)
            alphas = self.recipe.alphas()
            record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                      "val_acc": val_acc, "lr": self.optimizer.param_groups[0]["lr"],
                      "alpha_neurons": alphas["ghost_neurons"], "alpha_skips": alphas["ghost_skips"],
                      "sparsity": self._sparsity(), "epoch_seconds": seconds, "images_per_second": images / seconds}
            self.scheduler.step()
            self.history.append(record)
            if self.dist.is_main:
                # Without a validation split there is nothing to select on: the last epoch is the "best".
                improved = val_acc is None or self.best["val_acc"] is None or val_acc > self.best["val_acc"]
                if improved:
                    self.best = {"val_acc": val_acc, "epoch": epoch + 1}
                state = self._state(epoch + 1)  # one snapshot (RNG included) for both files
                if improved:
                    save_checkpoint(os.path.join(self.dir, BEST), state)
                save_checkpoint(os.path.join(self.dir, CHECKPOINT), state)
                self._write_metrics()
            self.dist.barrier()
            self.log(f"epoch {epoch + 1}/{c.epochs}: train loss {train_loss:.4f} acc {train_acc:.4f}"
                     + (f", val loss {val_loss:.4f} acc {val_acc:.4f}" if val_acc is not None else "")
                     + f", lr {record['lr']:.4g}, {record['images_per_second']:.0f} img/s")

    def _train_epoch(self, epoch: int, total_steps: int):
        c = self.config
        self.train_loader.set_epoch(epoch)
        self.ddp_model.train()
        sums = [0.0, 0.0, 0.0]  # loss · n, correct, n
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, unit="batch",
                   disable=not (c.progress and self.dist.is_main))
        started = time.perf_counter()
        for x, y in bar:
            if self.recipe.step(min(self.step / total_steps, 1.0)):  # ghost branches left the model
                from ..recipe import drop_removed_parameters

                drop_removed_parameters(self.optimizer, self.model)
                self.ddp_model = self.dist.wrap(self.model)  # DDP must not wait for their gradients
                self.ddp_model.train()
            logits = self.ddp_model(x)
            loss = self.recipe.loss(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            n = y.numel()
            sums[0] += loss.item() * n
            sums[1] += (logits.argmax(1) == y).sum().item()
            sums[2] += n
            if bar.disable is False:
                rate = sums[2] / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}",
                                img_s=f"{rate * self.dist.world_size:.0f}")
            if self.kill_after and self.step >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        loss_sum, correct, count = self.dist.sum(sums, self.device)
        return loss_sum / count, correct / count, count

    @torch.no_grad()
    def _evaluate(self, loader, model=None):
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in loader:
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
        model.train(was_training)
        return loss_sum / count, correct / count

    # ------------------------------------------------------------------------------------------ state
    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "config": self.config.to_dict(), "masks": {k: v.cpu() for k, v in self.masks.items()},
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "recipe": self.recipe.state_dict(), "rng": rng_state(self.device),
                "best": dict(self.best), "metrics": list(self.history), "step": self.step,
                "world_size": self.dist.world_size}

    def _write_metrics(self):
        with atomic_write(os.path.join(self.dir, METRICS + ".jsonl"), text=True) as f:
            for record in self.history:
                f.write(json.dumps(record) + "\n")
        if self.history:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(self.history[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.history)
            with atomic_write(os.path.join(self.dir, METRICS + ".csv"), text=True) as f:
                f.write(buffer.getvalue())

    def _finish(self) -> dict:
        c = self.config
        self.recipe.step(1.0)  # ghosts that have faded out leave the final network (what finalize does)
        identical = self.dist.parameters_identical(self.model)
        if not identical:
            self.log("warning: the processes ended with different parameters; rank 0's are saved")
        final_test_loss = final_test_acc = test_loss = test_acc = None
        if self.dist.is_main:
            final_test_loss, final_test_acc = self._evaluate(self.test_loader)
            best_model = load_trained_model(os.path.join(self.dir, BEST), self.data, self.device)
            test_loss, test_acc = self._evaluate(self.test_loader, best_model)
        seconds = sum(r["epoch_seconds"] for r in self.history)
        last = self.history[-1]
        sparsity = self._sparsity() if c.masks_file else 0.0 if c.mask == "dense" else c.sparsity
        result = {"model": c.model, "dataset": c.dataset, "mask": "file" if c.masks_file else c.mask,
                  "sparsity": sparsity, "measured_sparsity": self._sparsity(), "recipe": c.recipe, "seed": c.seed,
                  "test_acc": test_acc, "test_loss": test_loss, "best_val_acc": self.best["val_acc"],
                  "best_epoch": self.best["epoch"], "final_val_acc": last["val_acc"],
                  "final_test_acc": final_test_acc, "final_test_loss": final_test_loss, "epochs": c.epochs,
                  "seconds": seconds, "seconds_per_epoch": seconds / len(self.history),
                  "world_size": self.dist.world_size,
                  "ranks_identical": identical, "run_dir": self.dir}
        train_rate = sorted(r["images_per_second"] for r in self.history)[len(self.history) // 2]
        result["loader_images_per_second"] = self.loader_rate * self.dist.world_size
        result["train_images_per_second"] = train_rate
        if self.dist.is_main:
            self.log(f"data loading: {result['loader_images_per_second']:,.0f} images/s alone vs "
                     f"{train_rate:,.0f} images/s of training"
                     + (" (the loader is the bottleneck)" if result["loader_images_per_second"] < 2 * train_rate
                        else ""))
            _write_json(os.path.join(self.dir, RESULT), result)
            chosen = "best validation" if self.best["val_acc"] is not None else "last epoch (no validation split)"
            result["selected_by"] = chosen
            self.log(f"done: test accuracy {test_acc:.4f} ({chosen} checkpoint, epoch {self.best['epoch']}); "
                     f"final model {final_test_acc:.4f}; {seconds / 60:.1f} min of training; results in {self.dir}")
        self.dist.barrier()
        return result


# Settings a resumed run must share with the run it continues (others, like threads or progress, may change).
_RESULT_AFFECTING = ("dataset", "image_size", "val_size", "augment", "model", "mask", "sparsity", "granularity",
                     "block_size", "n_m", "mask_scope", "keep_first_dense", "keep_classifier_dense", "mask_batches",
                     "masks_file", "recipe", "ghost_neurons", "ghost_skips", "init", "label_smoothing", "epsilon",
                     "ghost_fraction", "gradinit_iterations", "epochs", "batch_size", "optimizer", "lr", "momentum",
                     "weight_decay", "lr_schedule", "milestones", "lr_gamma", "seed", "backend", "deterministic")


def check_same_settings(saved: dict, config: TrainConfig, run_dir: str) -> None:
    """Raise if ``saved`` (a run's config.json) differs from ``config`` in a setting that changes results."""
    now = config.to_dict()
    changed = [k for k in _RESULT_AFFECTING if saved.get(k) != now.get(k)]
    if changed:
        raise ValueError(f"resume: the run in {run_dir!r} was started with different settings "
                         f"({', '.join(f'{k}: {saved.get(k)!r} → {now.get(k)!r}' for k in changed)}); "
                         f"resume with the same settings or choose another --out")


def saved_config(run_dir: str) -> dict:
    """A run folder's config.json, as written when the run started."""
    path = os.path.join(run_dir, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: holds result.json but no {CONFIG}; it was not written by "
                                f"sparsekern train, or was damaged: move it out of the sweep folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    return saved


def make_recipe(config: TrainConfig, *, fresh: bool = True):
    """The ToST object for ``config``: the preset, then any per-component switch; ``fresh=False`` skips
    the init (a resumed run or a reloaded checkpoint takes its weights from the file)."""
    from ..recipe import Schedule, ToST

    overrides = {}
    for name in ("ghost_neurons", "ghost_skips", "label_smoothing"):
        if getattr(config, name) is not None:
            overrides[name] = getattr(config, name)
    if config.init != "default":
        overrides["init"] = config.init
    overrides["epsilon"] = config.epsilon
    if config.recipe != "paper-code":  # tost's ghosts fade out, and so do ghosts switched on over "none"
        fade = Schedule("linear", 1.0, 0.0, config.ghost_fraction)
        overrides.update(neuron_schedule=fade, skip_schedule=fade)
    overrides["gradinit_options"] = {"iterations": config.gradinit_iterations}
    if not fresh:
        overrides["init"] = None
    return ToST(config.recipe, **overrides)


def _create_model(config: TrainConfig, data, device) -> nn.Module:
    from .. import models

    return models.create(config.model, num_classes=data.num_classes, input_size=data.image_size,
                         in_channels=data.in_channels).to(device)


def _apply_masks(model: nn.Module, masks: dict, config: TrainConfig, device) -> dict:
    """Sparsify ``model`` with ``masks`` (moved to ``device``, which is returned). With block granularity the
    layers whose weights the blocks tile exactly get the block layout (and its kernels); the others (a stem
    with one input channel, a 10-class classifier) were masked with partial edge blocks and keep CSR."""
    masks = {name: m.to(device) for name, m in masks.items()}
    block = (config.block_size, config.block_size) if config.granularity == "block" else None
    modules = dict(model.named_modules())
    tiled = {name: m for name, m in masks.items()
             if block is not None and _blocks_tile(modules.get(name.rpartition(".")[0]), block)}
    rest = {name: m for name, m in masks.items() if name not in tiled}
    if tiled:
        sparsify(model, tiled, block_size=block, backend=config.backend)
    if rest:
        sparsify(model, rest, backend=config.backend)
    return masks


def _blocks_tile(layer, block) -> bool:
    """Whether ``block`` (bh, bw) tiles ``layer``'s weight as the block layouts need: a Linear's (out, in), a
    Conv2d's (out, in) channels of a group at each kernel tap."""
    bh, bw = block
    if isinstance(layer, nn.Linear):
        return layer.out_features % bh == 0 and layer.in_features % bw == 0
    if isinstance(layer, nn.Conv2d):
        groups = layer.groups
        return (layer.out_channels // groups) % bh == 0 and (layer.in_channels // groups) % bw == 0
    return False


def rebuild_model(checkpoint: dict, config: TrainConfig, data, device):
    """``(model, recipe, masks)`` as saved in ``checkpoint``: same architecture, masks, ghosts (as at that
    epoch) and weights; the recipe's init is skipped, the weights come from the checkpoint."""
    model = _create_model(config, data, device)
    masks = _apply_masks(model, checkpoint["masks"], config, device)
    recipe = make_recipe(config, fresh=False)
    recipe.prepare(model, None)
    recipe.load_state_dict(checkpoint["recipe"], model)
    model.load_state_dict(checkpoint["model"])
    return model, recipe, masks


def load_trained_model(path: str, data, device="cpu") -> nn.Module:
    """Rebuild the model saved in a training checkpoint (``checkpoint.pt`` or ``best.pt``) for evaluation or
    export, in eval mode."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"], source=f"checkpoint {path!r}")
    return rebuild_model(checkpoint, config, data, device)[0].eval()


def _write_json(path: str, value: dict) -> None:
    with atomic_write(path, text=True) as f:
        json.dump(value, f, indent=2)
        f.write("\n")
