"""The training loop end to end on the embedded digits: every recipe switch and mask method for one epoch,
the run folder's files, exact resume after SIGKILL, DDP with 2 CPU processes, and the compare sweep."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from sparsekern.cli import main
from sparsekern.train.checkpoint import load_checkpoint
from sparsekern.train.config import TrainConfig
from sparsekern.train.trainer import KILL_AFTER_STEPS_ENV, load_trained_model, train

# Small and quick: ResNet-20 on the native 8×8 digits, one epoch of 20 batches.
QUICK = dict(dataset="digits", model="resnet20", image_size=8, epochs=1, batch_size=64, lr_schedule="cosine",
             threads=1, progress=False, gradinit_iterations=2)
TIMING = {"epoch_seconds", "images_per_second"}
# The subprocess tests check the harness (resume, DDP, the sweep), which does not depend on the kernels; on the
# slower reference ops (the CI's second pass) they would only add minutes, so they run with the extension only.
harness_only = pytest.mark.skipif(os.environ.get("SPARSEKERN_NO_EXT", "0") not in ("", "0"),
                                  reason="harness test: run with the compiled kernels only")


def quick(tmp_path, **settings):
    return TrainConfig.from_dict({**QUICK, "out": str(tmp_path / "run"), **settings})


def check_run_folder(run_dir, config):
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "checkpoint.pt", "best.pt", "result.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    result = json.load(open(os.path.join(run_dir, "result.json")))
    lines = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in lines] == list(range(1, config.epochs + 1))
    assert 0.0 <= result["test_acc"] <= 1.0 and result["best_epoch"] >= 1
    return result, lines


@pytest.mark.parametrize("settings", [
    dict(recipe="none", mask="random", sparsity=0.9),
    dict(recipe="tost", mask="random", sparsity=0.9, init="fan_in"),
    dict(recipe="tost", mask="snip", sparsity=0.95),                      # GradInit (2 steps)
    dict(recipe="paper-code", mask="grasp", sparsity=0.9, init="fan_in"),
    dict(recipe="tost", mask="synflow", sparsity=0.9, init="fan_in", no_ghosts=True),
    dict(recipe="tost", mask="erk", sparsity=0.9, init="fan_in", ghost_skips=False),
    dict(recipe="tost", mask="magnitude", sparsity=0.8, init="fan_in", ghost_neurons=False, label_smoothing=False),
    dict(recipe="none", mask="dense", sparsity=0.0),
    dict(recipe="none", mask="random", sparsity=0.9, granularity="channel"),
    dict(recipe="none", mask="random", sparsity=0.9, granularity="block", block_size=4),
])
def test_one_epoch(tmp_path, settings):
    settings = dict(settings)
    if settings.pop("no_ghosts", False):
        settings.update(ghost_neurons=False, ghost_skips=False)
    config = quick(tmp_path, **settings)
    result = train(config, log=lambda *a, **k: None)
    result_file, lines = check_run_folder(config.run_dir(), config)
    assert result_file["test_acc"] == result["test_acc"]
    expected = 0.0 if config.mask == "dense" else config.sparsity
    assert abs(result["measured_sparsity"] - expected) < 0.02
    assert lines[0]["sparsity"] == result["measured_sparsity"]
    # The best checkpoint rebuilds into the model that was evaluated, with pruned weights exactly zero.
    from sparsekern.data import load_dataset

    model = load_trained_model(os.path.join(config.run_dir(), "best.pt"), load_dataset("digits", image_size=8))
    masks = load_checkpoint(os.path.join(config.run_dir(), "best.pt"))["masks"]
    for name, mask in masks.items():
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        weight = layer.to_dense().weight
        assert torch.all(weight[~mask] == 0) and weight[mask].abs().sum() > 0
        if config.granularity == "block":
            # Block layouts where the blocks tile the weight (every 16- to 64-channel conv); CSR for the stem
            # (1 input channel) and the 10-class classifier, whose masks have partial edge blocks.
            tiles = name not in ("conv1.weight", "fc.weight")
            assert layer.block_size == ((4, 4) if tiles else None), name


def test_ghosts_fade_out_and_leave(tmp_path):
    config = quick(tmp_path, recipe="tost", mask="random", sparsity=0.9, init="fan_in", epochs=3, ghost_fraction=0.5)
    train(config, log=lambda *a, **k: None)
    lines = [json.loads(line) for line in open(os.path.join(config.run_dir(), "metrics.jsonl"))]
    alphas = [r["alpha_skips"] for r in lines]
    assert 0 < alphas[0] < 1 and alphas[-1] == 0.0 and alphas == sorted(alphas, reverse=True)
    state = load_checkpoint(os.path.join(config.run_dir(), "checkpoint.pt"))["model"]
    assert not any("ghost" in k for k in state)  # removed branches are gone from the final network


def test_existing_run_is_not_overwritten(tmp_path):
    config = quick(tmp_path)
    train(config, log=lambda *a, **k: None)
    with pytest.raises(FileExistsError, match="--resume"):
        train(quick(tmp_path), log=lambda *a, **k: None)
    with pytest.raises(ValueError, match="sparsity"):
        train(quick(tmp_path, resume=True, sparsity=0.5, epochs=2), log=lambda *a, **k: None)


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cifar-10" in err and str(tmp_path) in err


# ----------------------------------------------------------------------------------- exact resume
def run_cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sparsekern", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def cli_args(out, epochs=2):
    return ["train", "--model", "resnet20", "--image-size", "8", "--epochs", str(epochs), "--batch-size", "64",
            "--mask", "random", "--sparsity", "0.9", "--recipe", "tost", "--init", "fan_in", "--ghost-fraction",
            "0.75", "--threads", "1", "--no-progress", "--out", str(out)]


@harness_only
def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL mid-epoch 2 (the ghosts still present), resume: same weights, optimiser state and metrics as a
    run never interrupted; the ghost skips leave after the kill point (step 27 of 40), at 75 % of training."""
    whole = run_cli(cli_args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    steps_per_epoch = -(-1257 // 64)
    killed = run_cli(cli_args(tmp_path / "killed"), {KILL_AFTER_STEPS_ENV: str(steps_per_epoch + 7)})
    assert killed.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert at_kill["epoch"] == 1 and any("ghost" in k for k in at_kill["model"])  # ghosts still in the model
    resumed = run_cli(cli_args(tmp_path / "killed") + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout

    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys() and not any("ghost" in k for k in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for p, q in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(p["momentum_buffer"], q["momentum_buffer"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])
    ra, rb = (json.load(open(tmp_path / d / "result.json")) for d in ("whole", "killed"))
    assert ra["test_acc"] == rb["test_acc"] and ra["final_test_acc"] == rb["final_test_acc"]


# ------------------------------------------------------------------------------------------- DDP
@harness_only
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "sparsekern", *cli_args(out)[:-2], "--mask", "snip", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.load(open(out / "result.json"))
    assert result["world_size"] == 2 and result["ranks_identical"] is True
    lines = open(out / "metrics.jsonl").read().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    assert proc.stdout.count("done: test accuracy") == 1


# --------------------------------------------------------------------------------------- compare
@harness_only
def test_compare_sweep_table_and_skip(tmp_path, capsys):
    root = tmp_path / "sweep"
    args = ["compare", "--masks", "random", "--sparsities", "0.9", "--recipes", "none,tost", "--seeds", "2",
            "--init", "fan_in", "--model", "resnet20", "--image-size", "8", "--epochs", "1", "--threads", "1",
            "--no-progress", "--out", str(root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| random |" in out and "dense" in out and "plot:" in out
    assert (root / "table.md").is_file() and (root / "accuracy_vs_sparsity.png").is_file()
    runs = [d for d in os.listdir(root) if (root / d / "result.json").is_file()]
    assert len(runs) == 6  # (dense + 2 recipes) × 2 seeds
    assert all((root / d / "curves.png").is_file() for d in runs)
    assert main(args) == 0  # everything finished: nothing retrained
    assert "(6 already finished)" in capsys.readouterr().out
    # The same folder with a setting the run names do not show: an error before anything trains, not a
    # table of 1-epoch runs reported as 2-epoch ones.
    before = {d: os.path.getmtime(root / d / "result.json") for d in runs}
    assert main(args[:-2] + ["--epochs", "2"] + args[-2:]) == 2
    err = capsys.readouterr().err
    assert "different settings (epochs: 1 → 2)" in err and str(root) in err
    assert {d: os.path.getmtime(root / d / "result.json") for d in runs} == before


def test_no_validation_split_selects_the_last_epoch(tmp_path, monkeypatch):
    import sparsekern.data as data_module
    from sparsekern.data import Split

    real = data_module.load_dataset

    def without_val(*args, **kwargs):
        d = real(*args, **kwargs)
        d.val = Split(d.val.images[:0], d.val.labels[:0])
        return d

    monkeypatch.setattr(data_module, "load_dataset", without_val)
    lines = []
    result = train(quick(tmp_path, epochs=2), log=lines.append)
    assert result["best_val_acc"] is None and result["best_epoch"] == 2
    assert result["selected_by"].startswith("last epoch") and result["test_acc"] == result["final_test_acc"]
    assert any("no validation split" in line for line in lines)


def test_a_last_batch_of_one_is_dropped(tmp_path):
    lines = []
    train(quick(tmp_path, batch_size=157), log=lines.append)  # 1,257 = 8 × 157 + 1
    assert any("last batch of 1" in line for line in lines)


@pytest.mark.parametrize("dataset", ["cifar10", "tinyimagenet"])
def test_train_cli_on_files_in_the_real_formats(tmp_path, dataset, capsys):
    """The CLI end to end on small files in the real CIFAR-10 / TinyImageNet layouts (RGB, 32 / 64 px, crop
    and flip): the data's shape reaches the model and the run finishes with a test accuracy."""
    from test_data import make_cifar, make_tiny

    if dataset == "cifar10":
        root, val = make_cifar(tmp_path, "cifar10", "archive"), "10"
    else:
        root, val = make_tiny(tmp_path).parent, "3"
    out = tmp_path / "run"
    assert main(["train", "--dataset", dataset, "--data-dir", str(root), "--val-size", val, "--model", "resnet20",
                 "--epochs", "1", "--batch-size", "16", "--mask", "snip", "--sparsity", "0.9", "--recipe", "tost",
                 "--init", "fan_in", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    size = "32×32×3" if dataset == "cifar10" else "64×64×3"
    assert size in printed and "data loading:" in printed
    result = json.load(open(out / "result.json"))
    assert result["dataset"] == dataset and 0.0 <= result["test_acc"] <= 1.0
