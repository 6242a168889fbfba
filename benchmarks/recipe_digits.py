"""What the training recipe gains: default training vs ToST on the same sparse network, embedded digits.

    python -m benchmarks.recipe_digits                 # ResNet-20, 98 % random masks, 3 seeds

Every run starts from the same initial weights and the same mask (per seed), and trains with the paper's
optimiser settings scaled to the small data (SGD lr 0.1, momentum 0.9, weight decay 2e-4, batch 64,
cosine learning-rate decay); only the recipe differs:
- ``none``: the masks and the model's own init, plain cross-entropy (what users get by default);
- ``tost``: ghost soft neurons and ghost skips fading out over the first 30 %, sparsity-aware init
  (``--init``: GradInit, the paper's LRsI, or masked fan-in), label smoothing ε/(C − 1) with ε = 0.1.
Reported: the test accuracy at the end (mean and per seed) and the time per epoch. Writes
benchmarks/results/recipe_digits.md and .csv. The digits are 1,797 small images, so absolute accuracies say
little about CIFAR; the comparison is the point.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from .run import log, set_thread_env

MODULE = "benchmarks.recipe_digits"
MASKS = ("random", "synflow", "snip", "magnitude")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", help="a sparsekern.models name (default resnet20)")
    p.add_argument("--masks", default="random", help=f"comma-separated mask methods of {','.join(MASKS)}")
    p.add_argument("--sparsity", type=float, default=0.98, help="fraction of weights pruned (default 0.98)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    p.add_argument("--image-size", type=int, default=16, help="digits upscaled to this size (default 16)")
    p.add_argument("--init", default="gradinit", choices=("gradinit", "fan_in"), help="ToST's init")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    args.masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    bad = [m for m in args.masks if m not in MASKS]
    if bad:
        p.error(f"--masks: unknown {bad}; choose from {', '.join(MASKS)}")
    if not 0.0 <= args.sparsity < 1.0:
        p.error(f"--sparsity: expected a number in [0, 1), got {args.sparsity}")
    return args


def make_masks(method, model, sparsity, seed, loader, image_size, masks):
    return masks.compute_masks(method, model, sparsity, data=loader, batches=len(loader),
                               input_shape=(1, image_size, image_size), seed=seed)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    import torch

    from sparsekern import masks, models
    from sparsekern.demo import load_splits
    from sparsekern.recipe import ToST, drop_removed_parameters

    from .common import environment, machine_section, markdown_table, write_csv

    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    data = load_splits(args.image_size)
    size = args.image_size

    def images(x):
        return x.view(-1, 1, size, size)

    x_train, y_train = images(data.x_train), data.y_train
    x_test, y_test = images(data.x_test), data.y_test
    loader = [(x_train[i:i + 128], y_train[i:i + 128]) for i in range(0, 1024, 128)]
    batch = 64
    steps_per_epoch = -(-len(y_train) // batch)
    total_steps = steps_per_epoch * args.epochs

    def run(model, recipe, seed):
        gen = torch.Generator().manual_seed(seed)
        params = lambda: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
        opt = torch.optim.SGD(params(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        start = time.perf_counter()
        step = 0
        for _ in range(args.epochs):
            model.train()
            for idx in torch.randperm(len(y_train), generator=gen).split(batch):
                lr = 0.05 * (1 + torch.cos(torch.tensor(step / total_steps * torch.pi)).item())  # cosine from 0.1
                if recipe.step(step / total_steps):  # ghost branches left the model
                    drop_removed_parameters(opt, model)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                recipe.loss(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
                step += 1
        seconds = (time.perf_counter() - start) / args.epochs
        model = recipe.finalize(model).eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).double().mean().item()
        return acc, seconds

    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        dense = models.create(args.model, num_classes=10, input_size=size, in_channels=1)
        for method in args.masks:
            chosen = make_masks(method, dense, args.sparsity, seed, loader, size, masks)
            for name in ("none", "tost"):
                recipe = ToST(name) if name == "none" else ToST(name, init=args.init)
                torch.manual_seed(seed)
                model = recipe.prepare(copy.deepcopy(dense), chosen, data=loader)
                acc, seconds = run(model, recipe, seed)
                rows.append({"model": args.model, "masks": method, "recipe": name, "seed": seed,
                             "test_accuracy": acc, "seconds_per_epoch": seconds})
                log(f"seed {seed} {method:9s} {name:5s} test {acc:.3f}  {seconds:.2f} s/epoch")

    table = []
    for method in args.masks:
        for name in ("none", "tost"):
            mine = [r for r in rows if r["masks"] == method and r["recipe"] == name]
            accs = [r["test_accuracy"] for r in mine]
            table.append([method, name, f"{statistics.mean(accs):.3f}", ", ".join(f"{a:.3f}" for a in accs),
                          f"{statistics.median(r['seconds_per_epoch'] for r in mine):.2f}"])
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "recipe_digits.csv", rows, list(rows[0].keys()))
    text = "\n\n".join([
        f"# Default training vs the ToST recipe: {args.model} at {args.sparsity:.0%} sparsity on digits "
        f"({size}×{size}), {args.epochs} epochs, {args.seeds} seeds",
        machine_section(env, {"Training": "SGD lr 0.1 (cosine decay), momentum 0.9, wd 2e-4, batch 64, 1,257 train "
                                          "/ 270 test digits; every prunable layer pruned; ToST init "
                                          f"{args.init}"}, module=MODULE),
        markdown_table(["masks", "recipe", "test acc (mean)", "per seed", "s / epoch (median)"], table,
                       "llrrr"),
    ]) + "\n"
    (out / "recipe_digits.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
