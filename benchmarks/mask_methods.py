"""Accuracy of every mask method at one sparsity, on the embedded digits data, same training for all.

    python -m benchmarks.mask_methods                    # 98 %, 3 seeds, 15 epochs: about a minute on 2 cores

The network is the demo's MLP (sparsekern.demo: 256 → 512 → 512 → 10 on 16×16 digits); every method
prunes all three Linear layers of the same initial weights to the same overall sparsity, and the pruned
networks are trained identically (SGD 0.05, momentum 0.9, weight decay 1e-4, batch 64) with sparsekern's
sparse layers. Reported: test accuracy per seed and its mean, the per-layer densities each method chose,
and the time to score and build the masks. Writes benchmarks/results/mask_methods_digits.md and .csv.
This measures the mask methods, not the kernels: the training recipe is not applied.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from .run import log, set_thread_env

MODULE = "benchmarks.mask_methods"
METHODS = ("dense", "random", "random-erk", "magnitude", "snip", "grasp", "synflow", "magnitude-block4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, default=0.98, help="fraction of weights pruned (default 0.98)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (initial weights, masks, batches); default 3")
    p.add_argument("--epochs", type=int, default=15, help="training epochs per network (default 15)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if not 0.0 <= args.sparsity < 1.0:
        p.error(f"--sparsity: expected a number in [0, 1), got {args.sparsity}")
    return args


def build_masks_for(method, dense, sparsity, seed, data, masks):
    """The masks ``method`` gives the dense network (None for the dense baseline), by
    ``sparsekern.masks.compute_masks`` (each method's own scope: per layer for the random ones)."""
    if method == "dense":
        return None
    loader = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in range(0, 1024, 128)]
    name, extra = {"random-erk": ("erk", {}),
                   "magnitude-block4": ("magnitude", {"granularity": "block", "block_size": 4})}.get(method, (method, {}))
    return masks.compute_masks(name, dense, sparsity, data=loader, batches=len(loader),
                               input_shape=(data.in_features,), seed=seed, **extra)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    import torch

    import sparsekern
    from sparsekern import masks
    from sparsekern.demo import accuracy, build_dense_mlp, load_splits, train_epoch

    from .common import environment, machine_section, markdown_table, write_csv

    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    data = load_splits(16)
    rows = []
    for seed in range(args.seeds):
        dense = build_dense_mlp(data.in_features, 512, 10, seed)
        for method in args.methods:
            start = time.perf_counter()
            chosen = build_masks_for(method, dense, args.sparsity, seed, data, masks)
            scoring_s = time.perf_counter() - start
            model = copy.deepcopy(dense) if chosen is None else sparsekern.sparsify(copy.deepcopy(dense), chosen)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
            generator = torch.Generator().manual_seed(seed)
            for _ in range(args.epochs):
                train_epoch(model, optimizer, data.x_train, data.y_train, 64, generator, False, method)
            densities = ({n: 1.0 for n in masks.prunable_layers(dense)} if chosen is None
                         else {n: float(m.float().mean()) for n, m in chosen.items()})
            row = {"method": method, "seed": seed, "test_accuracy": accuracy(model, data.x_test, data.y_test),
                   "scoring_s": scoring_s, **{f"density_{n}": d for n, d in densities.items()}}
            rows.append(row)
            log(f"seed {seed} {method:17s} test {row['test_accuracy']:.3f}  masks in {scoring_s:.2f} s  "
                f"densities {', '.join(f'{d:.2%}' for d in densities.values())}")

    layer_names = [k for k in rows[0] if k.startswith("density_")]
    table = []
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        accs = [r["test_accuracy"] for r in mine]
        table.append([method, f"{statistics.mean(accs):.3f}", ", ".join(f"{a:.3f}" for a in accs),
                      *(f"{statistics.mean(r[k] for r in mine):.2%}" for k in layer_names),
                      f"{statistics.median(r['scoring_s'] for r in mine):.2f}"])
    headers = ["method", "test acc (mean)", "per seed", *(k[len("density_"):] for k in layer_names),
               "masks (s, median)"]
    collapsed = []
    for method in args.methods:
        empty = sorted({k[len("density_"):] for r in rows if r["method"] == method for k in layer_names if r[k] == 0})
        if empty:
            collapsed.append(f"**{method}** pruned whole layers ({', '.join(empty)}): layer collapse, the "
                             f"network can only output a constant.")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "mask_methods_digits.csv", rows, list(rows[0].keys()))
    text = "\n\n".join([
        f"# Mask methods at {args.sparsity:.0%} sparsity: digits MLP, {args.epochs} epochs, {args.seeds} seeds",
        machine_section(env, {"Network": "256 → 512 → 512 → 10 MLP (sparsekern.demo), all 3 Linear layers pruned; "
                                         "SGD 0.05, momentum 0.9, wd 1e-4, batch 64; test split of 270 digits"},
                        module=MODULE),
        markdown_table(headers, table, "l" + "r" * (len(headers) - 1)),
        "Densities are of each layer's weights (the overall density is the same for every method). "
        "Scores for SNIP and GraSP use the first 1024 training digits in 8 batches; SynFlow runs 100 rounds.",
        *collapsed,
    ]) + "\n"
    (out / "mask_methods_digits.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
