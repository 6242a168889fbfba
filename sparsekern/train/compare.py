"""``sparsekern compare``: a sweep of mask methods × sparsities × recipes × seeds (plus a dense reference),
run one after another into one folder, then the paper-style table and plots built from the finished runs.

Resumable by construction: each run has its own folder under the sweep folder; a finished run
(``result.json`` present) is skipped, an interrupted one continues from its last checkpoint. Either must have
been started with the sweep's settings, or the sweep stops with an error that names what differs.
"""
from __future__ import annotations

import os
from dataclasses import replace

from tqdm import tqdm

from .config import TrainConfig
from .trainer import RESULT, check_same_settings, saved_config, train


def sweep_configs(base: TrainConfig, *, masks, sparsities, recipes, seeds, dense: bool, root: str) -> list:
    """The runs of a sweep, dense reference first (default training only), then mask × sparsity × recipe × seed."""
    runs = []
    combos = [("dense", 0.0, "none")] if dense else []
    combos += [(m, s, r) for m in masks for s in sparsities for r in recipes]
    for seed in seeds:
        for mask, sparsity, recipe in combos:
            config = replace(base, mask=mask, sparsity=sparsity, recipe=recipe, seed=seed, resume=True, out=None)
            config.out = os.path.join(root, config.run_name())
            config.validate()
            runs.append(config)
    return runs


def run_sweep(runs: list, root: str, *, log=print, progress: bool = True, verbose: bool = False) -> list:
    """Train every run not finished yet (sequentially); returns the results of all runs."""
    from .report import load_results

    os.makedirs(root, exist_ok=True)
    finished = [c for c in runs if os.path.isfile(os.path.join(c.run_dir(), RESULT))]
    todo = [c for c in runs if c not in finished]
    # A finished run is reused only if it ran with this sweep's settings: its folder name does not hold
    # them all (epochs, which layers are pruned, ...), and a table mixing two settings would be wrong
    # without saying so. Checked before any training starts.
    for config in finished:
        check_same_settings(saved_config(config.run_dir()), config, config.run_dir())
    log(f"compare: {len(runs)} runs in {root} ({len(runs) - len(todo)} already finished)")
    bar = tqdm(todo, desc="compare", unit="run", disable=not progress)
    for config in bar:
        bar.set_postfix_str(config.run_name())
        quiet = replace(config, progress=progress and verbose)
        result = train(quiet, log=log if verbose else (lambda *a, **k: None))
        if result["test_acc"] is not None:  # None on the ranks other than 0 under torchrun
            log(f"  {config.run_name()}: test {result['test_acc']:.4f} (best val epoch {result['best_epoch']}), "
                f"{result['seconds_per_epoch']:.2f} s/epoch")
    wanted = {os.path.abspath(c.run_dir()) for c in runs}
    return [r for r in load_results(root) if os.path.abspath(r["run_dir"]) in wanted]


def write_report(results: list, root: str, *, title: str) -> dict:
    """table.md, summary.csv, accuracy_vs_sparsity.png and each run's curves.png; returns their paths."""
    from ..atomic_file import atomic_write
    from .plots import plot_accuracy_vs_sparsity, plot_training_curves
    from .report import markdown_table, write_csv

    table = markdown_table(results)
    paths = {"table": os.path.join(root, "table.md"), "csv": os.path.join(root, "summary.csv"),
             "plot": os.path.join(root, "accuracy_vs_sparsity.png")}
    with atomic_write(paths["table"], text=True) as f:
        f.write(f"# {title}\n\n{table}\n")
    write_csv(paths["csv"], results)
    plot_accuracy_vs_sparsity(results, paths["plot"], title=title)
    for r in results:
        plot_training_curves(r["run_dir"])
    paths["text"] = table
    return paths
