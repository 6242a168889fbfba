"""The results table of a sweep: finished run folders in, a paper-style Markdown table and a CSV out.

A run folder is finished when it holds ``result.json``; ``metrics.jsonl`` holds one JSON object per epoch.
Runs are grouped into cells of (model, dataset, mask, sparsity); within a cell each recipe gets the mean and
sample standard deviation (ddof=1) of ``test_acc`` over its seeds, and the recipe's gain is
``mean(tost) - mean(none)`` with the standard error of that difference, ``sqrt(s_a²/n_a + s_b²/n_b)``.

Conventions:
- A single seed has ``std`` None (a sample std of one value is undefined; 0 would claim a precision there is
  none), and then the gain has ``gain_se`` None too. The table shows such a mean without ``±``.
- Sparsities are grouped after rounding to 6 decimals, so 0.9 and 0.9000000001 are the same cell.
- Rows are sorted by model, dataset, then mask ("dense" first, the others alphabetically), then sparsity.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics

from ..atomic_file import atomic_write, check_path

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
DENSE = "dense"
DEFAULT_RECIPE = "none"   # default training, the baseline of the gain
RECIPE = "tost"           # the recipe whose gain the table reports
KNOWN_RECIPES = ("none", "tost", "paper-code", "custom")  # column order; unknown recipes follow alphabetically
RECIPE_TITLES = {"none": "default", "tost": "recipe", "paper-code": "paper code", "custom": "custom"}
DASH = "–"                # an empty cell
SPARSITY_DECIMALS = 6
REQUIRED_KEYS = {"model": str, "dataset": str, "mask": str, "sparsity": (int, float), "recipe": str,
                 "seed": int, "test_acc": (int, float)}


def load_results(root) -> list[dict]:
    """Every ``result.json`` under ``root`` (searched recursively), each as its dict plus ``"run_dir"``.

    Folders without ``result.json`` are unfinished runs and are skipped. The order is that of the sorted paths,
    so it does not depend on the file system.
    """
    root = check_path(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"root: {root!r} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"root: expected a folder of run folders, got the file {root!r}")
    results = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()  # os.walk visits in this order; sorting it makes the result order reproducible
        if RESULT_FILE not in files:
            continue
        path = os.path.join(folder, RESULT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(result, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
        _check_result(result, path)
        result["run_dir"] = folder
        results.append(result)
    return results


def read_metrics(run_dir) -> list[dict]:
    """The per-epoch records of ``run_dir/metrics.jsonl``, in file order.

    A last line that does not parse is a write cut short by a killed run and is dropped; a bad line before it
    means the file is damaged, and raises ValueError naming the file and the line. Blank lines are skipped.
    """
    run_dir = check_path(run_dir)
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run_dir: {METRICS_FILE} not found in {run_dir!r}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for k, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(numbered) - 1:
                break  # the partial last line of a run killed while writing
            raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def summarize(results) -> list[dict]:
    """One row per (model, dataset, mask, sparsity) cell.

    Each row: ``model``, ``dataset``, ``mask``, ``sparsity``; ``recipes``, a dict from recipe name to
    ``{"mean", "std", "n", "seeds"}`` over ``test_acc`` (only the recipes the cell has; ``std`` is the sample
    std, None for a single seed); ``gain`` = mean(tost) − mean(none), None unless both are present; ``gain_se``
    = sqrt(s_a²/n_a + s_b²/n_b), the standard error of that difference, None unless both have ≥ 2 seeds.
    All values are fractions in [0, 1], not percent. Two runs of one cell, recipe and seed raise ValueError:
    averaging a repeat would weigh that seed twice.
    """
    if isinstance(results, (str, bytes, dict)) or not hasattr(results, "__iter__"):
        raise TypeError(f"results: expected a list of result dicts, got {type(results).__name__}")
    cells: dict[tuple, dict[str, dict[int, tuple]]] = {}
    for i, result in enumerate(results):
        where = _where(result, i)
        if not isinstance(result, dict):
            raise TypeError(f"{where}: expected a dict, got {type(result).__name__}")
        _check_result(result, where)
        key = (result["model"], result["dataset"], result["mask"], round(float(result["sparsity"]), SPARSITY_DECIMALS))
        seeds = cells.setdefault(key, {}).setdefault(result["recipe"], {})
        seed = result["seed"]
        if seed in seeds:
            raise ValueError(f"{where}: a second run of {_cell_text(key)}, recipe {result['recipe']!r}, seed {seed} "
                             f"(the first is {seeds[seed][1]}); remove one of them")
        seeds[seed] = (float(result["test_acc"]), where)

    rows = []
    for key in sorted(cells, key=_cell_order):
        model, dataset, mask, sparsity = key
        recipes = {}
        for recipe in sorted(cells[key], key=_recipe_order):
            by_seed = cells[key][recipe]
            values = [by_seed[s][0] for s in sorted(by_seed)]
            recipes[recipe] = {"mean": statistics.mean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else None,
                               "n": len(values), "seeds": sorted(by_seed)}
        gain = gain_se = None
        if DEFAULT_RECIPE in recipes and RECIPE in recipes:
            a, b = recipes[RECIPE], recipes[DEFAULT_RECIPE]
            gain = a["mean"] - b["mean"]
            if a["std"] is not None and b["std"] is not None:
                gain_se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
        rows.append({"model": model, "dataset": dataset, "mask": mask, "sparsity": sparsity, "recipes": recipes,
                     "gain": gain, "gain_se": gain_se})
    return rows


def markdown_table(results, *, percent=True) -> str:
    """The paper-style table: a row per (mask, sparsity), the dense reference first, then a legend line.

    Columns: mask, sparsity, default (mean ± std), recipe (mean ± std), a column for each further recipe
    present (paper code, custom, ...), gain, n. Accuracies are in percent with 2 decimals (``percent=False``:
    fractions with 4 decimals). With several (model, dataset) pairs there is one section per pair, each under
    a ``###`` heading. Missing cells show "–".
    """
    if not isinstance(percent, bool):
        raise TypeError(f"percent: expected a bool, got {type(percent).__name__}")
    rows = summarize(results)
    if not rows:
        raise ValueError("results: no finished runs to tabulate")
    pairs = list(dict.fromkeys((row["model"], row["dataset"]) for row in rows))
    recipes = _columns(rows)
    scale, digits, unit = (100.0, 2, "%") if percent else (1.0, 4, "")
    header = ["mask", "sparsity", *(f"{RECIPE_TITLES.get(r, r)} (mean ± std)" for r in recipes), "gain", "n"]
    out = []
    for model, dataset in pairs:
        if len(pairs) > 1:
            out += [f"### {model} on {dataset}", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---", "---:", *(["---:"] * (len(header) - 2))]) + "|")
        for row in rows:
            if (row["model"], row["dataset"]) != (model, dataset):
                continue
            cells = [row["mask"], _sparsity_text(row["sparsity"])]
            cells += [_stat_text(row["recipes"].get(r), scale, digits) for r in recipes]
            cells.append(_gain_text(row["gain"], row["gain_se"], scale, digits))
            cells.append(_n_text([row["recipes"].get(r) for r in recipes]))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(_legend(unit))
    return "\n".join(out) + "\n"


def csv_rows(results) -> list[list[str]]:
    """The summary as CSV rows, the header first: model, dataset, mask, sparsity, then ``<recipe>_mean``,
    ``<recipe>_std``, ``<recipe>_n`` for each recipe column, then gain and gain_se. Fractions, not percent;
    an unknown value is an empty cell. "none" and "tost" columns are always there, others when present."""
    rows = summarize(results)
    recipes = _columns(rows)
    header = ["model", "dataset", "mask", "sparsity"]
    for r in recipes:
        header += [f"{r}_mean", f"{r}_std", f"{r}_n"]
    header += ["gain", "gain_se"]
    table = [header]
    for row in rows:
        line = [row["model"], row["dataset"], row["mask"], _number(row["sparsity"])]
        for r in recipes:
            stat = row["recipes"].get(r)
            line += ["", "", "0"] if stat is None else [_number(stat["mean"]), _number(stat["std"]), str(stat["n"])]
        line += [_number(row["gain"]), _number(row["gain_se"])]
        table.append(line)
    return table


def write_csv(path, results) -> str:
    """Write ``csv_rows(results)`` to ``path`` atomically (whole new file or the old one untouched); returns
    the path."""
    path = check_path(path)
    rows = csv_rows(results)
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    with atomic_write(path, text=True) as f:
        f.write(buffer.getvalue())
    return path


def _check_result(result: dict, where: str) -> None:
    """The keys the summary needs, with the right types: a bad run fails naming its file, not deep in a sort."""
    for key, kind in REQUIRED_KEYS.items():
        if key not in result:
            raise ValueError(f"{where}: missing the key {key!r}")
        value = result[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "a number"
            raise ValueError(f"{where}: {key!r} expected {expected}, got {value!r}")
    if not 0.0 <= result["sparsity"] < 1.0:
        raise ValueError(f"{where}: 'sparsity' expected a number in [0, 1), got {result['sparsity']!r}")
    if not 0.0 <= result["test_acc"] <= 1.0:  # also rejects NaN
        raise ValueError(f"{where}: 'test_acc' expected a number in [0, 1], got {result['test_acc']!r}")


def _where(result, index: int) -> str:
    if isinstance(result, dict) and isinstance(result.get("run_dir"), (str, os.PathLike)):
        return os.path.join(os.fspath(result["run_dir"]), RESULT_FILE)
    return f"results[{index}]"


def _cell_order(key: tuple) -> tuple:
    model, dataset, mask, sparsity = key
    return (model, dataset, mask != DENSE, mask, sparsity)


def _recipe_order(recipe: str) -> tuple:
    return (KNOWN_RECIPES.index(recipe), "") if recipe in KNOWN_RECIPES else (len(KNOWN_RECIPES), recipe)


def _columns(rows: list[dict]) -> list[str]:
    """Default and recipe always (the table's point is comparing them), further recipes when some row has one."""
    present = {r for row in rows for r in row["recipes"]} | {DEFAULT_RECIPE, RECIPE}
    return sorted(present, key=_recipe_order)


def _cell_text(key: tuple) -> str:
    model, dataset, mask, sparsity = key
    return f"{model} / {dataset} / mask {mask!r} / sparsity {sparsity:g}"


def _sparsity_text(sparsity: float) -> str:
    return f"{sparsity * 100:.4g}%"  # 4 significant digits: "90%", "99.5%", without 90.00000000000001


def _stat_text(stat, scale: float, digits: int) -> str:
    if stat is None:
        return DASH
    mean = f"{stat['mean'] * scale:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std'] * scale:.{digits}f}"


def _gain_text(gain, gain_se, scale: float, digits: int) -> str:
    if gain is None:
        return DASH
    text = f"{gain * scale:+.{digits}f}"
    return text if gain_se is None else f"{text} ± {gain_se * scale:.{digits}f}"


def _n_text(stats: list) -> str:
    """One number when every present recipe has the same seed count, else the counts per column, "/"-joined."""
    counts = [s["n"] for s in stats if s is not None]
    if len(set(counts)) == 1:
        return str(counts[0])
    return "/".join(DASH if s is None else str(s["n"]) for s in stats)


def _legend(unit: str) -> str:
    points = " (percentage points)" if unit else ""
    return (f"Accuracy{' in %' if unit else ''}: test accuracy of the best-validation checkpoint, "
            f"mean ± sample std (ddof=1) over seeds; no ± for a single seed. "
            f"default = recipe 'none', recipe = 'tost'. gain = mean(recipe) − mean(default){points}, ± its standard error sqrt(s_a²/n_a + s_b²/n_b). "
            f"n = seeds (per column when they differ). {DASH} = no finished runs.")


def _number(value) -> str:
    return "" if value is None else repr(float(value))
