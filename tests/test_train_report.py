"""sparsekern.train.report and .plots: summary statistics checked against the statistics module, the Markdown
table's numbers and layout, unfinished and truncated runs, valid PNGs without touching matplotlib's backend,
and clear errors."""
from __future__ import annotations

import csv
import json
import math
import os
import statistics

import pytest

from sparsekern.train.report import csv_rows, load_results, markdown_table, read_metrics, summarize, write_csv

MASKS = ("snip", "random")
SPARSITIES = (0.9, 0.98)
RECIPES = ("none", "tost")
SEEDS = (0, 1, 2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _acc(mask, sparsity, recipe, seed):
    """Known, distinct accuracies: the recipe adds 2 points, higher sparsity costs, seeds spread unevenly."""
    base = {"snip": 0.90, "random": 0.85}[mask] - (0.05 if sparsity == 0.98 else 0.0)
    return base + (0.02 if recipe == "tost" else 0.0) + (0.001, 0.004, -0.003)[seed]


def _result(mask, sparsity, recipe, seed, acc, model="resnet20", dataset="cifar10"):
    return {"model": model, "dataset": dataset, "mask": mask, "sparsity": sparsity, "recipe": recipe, "seed": seed,
            "test_acc": acc, "best_val_acc": acc, "best_epoch": 3, "final_val_acc": acc, "epochs": 4,
            "seconds": 12.5, "seconds_per_epoch": 3.125, "extra_key": [1, 2]}


def _write_run(root, name, result=None, metrics=None, metrics_text=None):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    if result is not None:
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump(result, f)
    if metrics is not None:
        metrics_text = "".join(json.dumps(m) + "\n" for m in metrics)
    if metrics_text is not None:
        with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
            f.write(metrics_text)
    return folder


def _epoch(epoch, val=True):
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": 0.2 * epoch,
            "val_loss": 2.2 / epoch if val else None, "val_acc": 0.18 * epoch if val else None,
            "lr": 0.1 / epoch, "alpha_neurons": 1.0 - 0.25 * epoch, "alpha_skips": 1.0 - 0.2 * epoch,
            "sparsity": 0.9, "epoch_seconds": 3.0, "images_per_second": 1000.0}


@pytest.fixture
def sweep(tmp_path):
    """2 masks × 2 sparsities × 2 recipes × 3 seeds, a dense reference of 3 seeds, and an unfinished run."""
    root = str(tmp_path / "sweep")
    for mask in MASKS:
        for s in SPARSITIES:
            for recipe in RECIPES:
                for seed in SEEDS:
                    _write_run(root, f"{mask}-{s}-{recipe}-{seed}",
                               _result(mask, s, recipe, seed, _acc(mask, s, recipe, seed)),
                               metrics=[_epoch(e) for e in range(1, 5)])
    for seed in SEEDS:
        _write_run(root, f"dense-{seed}", _result("dense", 0.0, "none", seed, 0.93 + 0.002 * seed))
    _write_run(root, "snip-0.9-tost-9-unfinished", None, metrics=[_epoch(1)])
    return root


def test_load_results_finds_finished_runs_only(sweep):
    results = load_results(sweep)
    assert len(results) == len(MASKS) * len(SPARSITIES) * len(RECIPES) * len(SEEDS) + 3
    assert all(os.path.isfile(os.path.join(r["run_dir"], "result.json")) for r in results)
    assert not any(r["run_dir"].endswith("unfinished") for r in results)
    assert results == load_results(sweep)  # reproducible order


def test_summary_statistics_match_the_statistics_module(sweep):
    rows = summarize(load_results(sweep))
    assert len(rows) == 1 + len(MASKS) * len(SPARSITIES)
    assert rows[0]["mask"] == "dense" and rows[0]["gain"] is None and list(rows[0]["recipes"]) == ["none"]
    assert [(r["mask"], r["sparsity"]) for r in rows[1:]] == [("random", 0.9), ("random", 0.98),
                                                              ("snip", 0.9), ("snip", 0.98)]
    for row in rows[1:]:
        values = {rec: [_acc(row["mask"], row["sparsity"], rec, s) for s in SEEDS] for rec in RECIPES}
        for rec in RECIPES:
            stat = row["recipes"][rec]
            assert stat["n"] == 3 and stat["seeds"] == list(SEEDS)
            assert stat["mean"] == pytest.approx(statistics.mean(values[rec]))
            assert stat["std"] == pytest.approx(statistics.stdev(values[rec]))
        assert row["gain"] == pytest.approx(statistics.mean(values["tost"]) - statistics.mean(values["none"]))
        se = math.sqrt(statistics.variance(values["tost"]) / 3 + statistics.variance(values["none"]) / 3)
        assert row["gain_se"] == pytest.approx(se)
    dense = rows[0]["recipes"]["none"]
    assert dense["mean"] == pytest.approx(statistics.mean([0.93, 0.932, 0.934]))


def test_single_seed_has_no_std_and_no_gain_se():
    results = [_result("snip", 0.9, "none", 0, 0.8), _result("snip", 0.9, "tost", 0, 0.85)]
    (row,) = summarize(results)
    assert row["recipes"]["none"]["std"] is None and row["recipes"]["tost"]["std"] is None
    assert row["gain"] == pytest.approx(0.05) and row["gain_se"] is None
    table = markdown_table(results)
    assert "| snip | 90% | 80.00 | 85.00 | +5.00 | 1 |" in table


def test_markdown_table_numbers_dense_first_and_legend(sweep):
    results = load_results(sweep)
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| mask | sparsity | default (mean ± std) | recipe (mean ± std) | gain | n |"
    assert lines[2].startswith("| dense | 0% | 93.20 ± 0.20 | – | – | 3 |")
    # snip at 90%: none 0.901, 0.904, 0.897 → 90.07 ± 0.35; tost +2 points; gain +2.00 ± sqrt(2·0.35²/3)
    none = [_acc("snip", 0.9, "none", s) for s in SEEDS]
    sd = statistics.stdev(none) * 100
    se = math.sqrt(2 * statistics.variance(none) / 3) * 100
    expected = (f"| snip | 90% | {statistics.mean(none) * 100:.2f} ± {sd:.2f} | "
                f"{statistics.mean(none) * 100 + 2:.2f} ± {sd:.2f} | +2.00 ± {se:.2f} | 3 |")
    assert expected == "| snip | 90% | 90.07 ± 0.35 | 92.07 ± 0.35 | +2.00 ± 0.29 | 3 |"
    assert expected in lines
    assert "| random | 98% | 80.07 ± 0.35 | 82.07 ± 0.35 | +2.00 ± 0.29 | 3 |" in lines
    legend = lines[-1]
    assert "best-validation checkpoint" in legend and "sample std" in legend and "standard error" in legend
    assert "###" not in table  # one (model, dataset) pair: no section headings


def test_markdown_table_fractions_without_percent(sweep):
    table = markdown_table(load_results(sweep), percent=False)
    assert "| snip | 90% | 0.9007 ± 0.0035 | 0.9207 ± 0.0035 | +0.0200 ± 0.0029 | 3 |" in table


def test_missing_cells_further_recipes_and_sections():
    results = [_result("snip", 0.9, "none", s, 0.8 + 0.01 * s) for s in SEEDS]
    results += [_result("erk", 0.95, "tost", s, 0.7) for s in (0, 1)]
    results += [_result("erk", 0.95, "paper-code", 0, 0.75)]
    results += [_result("snip", 0.9, "none", 0, 0.6, model="vgg16", dataset="cifar100")]
    table = markdown_table(results)
    lines = table.splitlines()
    assert "### resnet20 on cifar10" in lines and "### vgg16 on cifar100" in lines
    assert lines.index("### resnet20 on cifar10") < lines.index("### vgg16 on cifar100")
    header = "| mask | sparsity | default (mean ± std) | recipe (mean ± std) | paper code (mean ± std) | gain | n |"
    assert lines.count(header) == 2
    assert "| snip | 90% | 81.00 ± 1.00 | – | – | – | 3 |" in lines
    assert "| erk | 95% | – | 70.00 ± 0.00 | 75.00 | – | –/2/1 |" in lines
    assert "| snip | 90% | 60.00 | – | – | – | 1 |" in lines


def test_csv_rows_and_write_csv(sweep, tmp_path):
    results = load_results(sweep)
    rows = csv_rows(results)
    assert rows[0] == ["model", "dataset", "mask", "sparsity", "none_mean", "none_std", "none_n",
                       "tost_mean", "tost_std", "tost_n", "gain", "gain_se"]
    assert rows[1][2:4] == ["dense", "0.0"] and rows[1][7:] == ["", "", "0", "", ""]
    path = write_csv(tmp_path / "summary.csv", results)
    with open(path, newline="") as f:
        read = list(csv.reader(f))
    assert read == rows
    snip = next(r for r in read if r[2] == "snip" and r[3] == "0.9")
    assert float(snip[10]) == pytest.approx(0.02)


def test_duplicate_seed_and_bad_results_raise(tmp_path):
    dup = [_result("snip", 0.9, "none", 0, 0.8), _result("snip", 0.9, "none", 0, 0.81)]
    with pytest.raises(ValueError, match="second run.*seed 0"):
        summarize(dup)
    with pytest.raises(ValueError, match="'test_acc' expected a number in \\[0, 1\\]"):
        summarize([_result("snip", 0.9, "none", 0, 91.0)])
    bad = _result("snip", 0.9, "none", 0, 0.8)
    del bad["seed"]
    with pytest.raises(ValueError, match="results\\[0\\]: missing the key 'seed'"):
        summarize([bad])
    with pytest.raises(TypeError, match="results: expected a list"):
        summarize("runs")
    with pytest.raises(ValueError, match="no finished runs"):
        markdown_table([])


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        load_results(tmp_path / "missing")
    folder = _write_run(str(tmp_path), "broken")
    with open(os.path.join(folder, "result.json"), "w") as f:
        f.write('{"model": "resnet20", ')
    with pytest.raises(ValueError, match="broken.*result.json.*not valid JSON"):
        load_results(tmp_path)
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump({"model": "resnet20"}, f)
    with pytest.raises(ValueError, match="result.json: missing the key 'dataset'"):
        load_results(tmp_path)


def test_read_metrics_drops_truncated_last_line_but_not_a_corrupt_middle(tmp_path):
    good = "".join(json.dumps(_epoch(e)) + "\n" for e in (1, 2))
    folder = _write_run(str(tmp_path), "killed", metrics_text=good + '{"epoch": 3, "train_lo')
    records = read_metrics(folder)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == _epoch(1)
    folder = _write_run(str(tmp_path), "damaged", metrics_text=json.dumps(_epoch(1)) + "\n{oops\n" + good)
    with pytest.raises(ValueError, match="damaged.*metrics.jsonl, line 2"):
        read_metrics(folder)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(_write_run(str(tmp_path), "empty"))


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_accuracy_plot_is_a_png_and_leaves_the_backend_alone(sweep, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from sparsekern.train.plots import plot_accuracy_vs_sparsity

    before = matplotlib.get_backend()
    out = plot_accuracy_vs_sparsity(load_results(sweep), tmp_path / "acc.png", title="ResNet-20 on CIFAR-10")
    assert os.fspath(out) == os.fspath(tmp_path / "acc.png")
    _assert_png(out)
    assert matplotlib.get_backend() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # the atomic write cleaned up


def test_training_curves_png_default_path_and_no_val(sweep, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from sparsekern.train.plots import plot_training_curves

    before = matplotlib.get_backend()
    run = os.path.join(sweep, "snip-0.9-tost-0")
    out = plot_training_curves(run)
    assert out == os.path.join(run, "curves.png")
    _assert_png(out)
    no_val = _write_run(str(tmp_path), "no-val", metrics=[_epoch(e, val=False) for e in range(1, 4)])
    _assert_png(plot_training_curves(no_val, tmp_path / "no-val.png"))
    assert matplotlib.get_backend() == before


def test_nothing_to_plot_raises(tmp_path):
    pytest.importorskip("matplotlib")
    from sparsekern.train.plots import plot_accuracy_vs_sparsity, plot_training_curves

    with pytest.raises(ValueError, match="nothing to plot"):
        plot_accuracy_vs_sparsity([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="nothing to plot.*dense"):
        plot_accuracy_vs_sparsity([_result("dense", 0.0, "none", 0, 0.9)], tmp_path / "a.png")
    only_partial = _write_run(str(tmp_path), "partial", metrics_text='{"epoch": 1, "tra')
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_training_curves(only_partial)
    assert not os.path.exists(tmp_path / "a.png")
