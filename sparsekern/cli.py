"""The ``sparsekern`` command (also ``python -m sparsekern``).

    sparsekern compare                      # the main job: default training vs the recipe on the digits
    sparsekern train --dataset cifar10 --data-dir data --model resnet32 --mask snip --sparsity 0.98 --recipe tost
    sparsekern train --config run.yaml --epochs 10      # a config file, with flags overriding it
    torchrun --nproc_per_node=2 -m sparsekern train ... # data-parallel (gloo on CPU, NCCL on GPU)
    sparsekern demo                         # dense vs sparse MLP timing on the digits
"""
from __future__ import annotations

import argparse
import os
import sys

from .train.config import DATASET_DEFAULTS, MASK_METHODS, RECIPES, add_config_arguments, config_from_args
COMPARE_DEFAULTS = {"masks": "random,snip", "sparsities": "0.9,0.95,0.98", "recipes": "none,tost", "seeds": "2"}

EPILOG = ("Defaults are the paper's CIFAR protocol (ResNet-32, SGD lr 0.1, momentum 0.9, weight decay 2e-4, "
          "batch 128, 182 epochs, lr × 0.1 at epochs 90 and 135). On the embedded digits dataset these change: "
          + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in DATASET_DEFAULTS["digits"].items())
          + ". Settings come from, in increasing priority: these defaults, --config FILE (YAML or JSON, keys as "
            "the flags without dashes), the flags given.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsekern", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split(
                                         "\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,demo}")

    train = sub.add_parser("train", help="train one model (dense or sparse, default or recipe)",
                           description="Train one model and report the test accuracy of its best-validation "
                                       "checkpoint.", epilog=EPILOG)
    train.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (flags override it)")
    add_config_arguments(train)

    compare = sub.add_parser(
        "compare", help="sweep mask methods × sparsities × {default, recipe} × seeds; table and plots",
        description="Train every combination (sequentially; finished runs are skipped, interrupted ones "
                    "resume), then print the paper-style table (mean ± std test accuracy, the recipe's gain) and "
                    "save it with a plot of accuracy vs sparsity.", epilog=EPILOG)
    compare.add_argument("--config", metavar="FILE", help="YAML or JSON file of base settings (flags override it)")
    sweep = compare.add_argument_group("sweep")
    sweep.add_argument("--masks", default=None,
                       help=f"comma-separated mask methods of {','.join(m for m in MASK_METHODS if m != 'dense')} "
                            f"(default: {COMPARE_DEFAULTS['masks']})")
    sweep.add_argument("--sparsities", default=None,
                       help=f"comma-separated sparsities (default: {COMPARE_DEFAULTS['sparsities']})")
    sweep.add_argument("--recipes", default=None,
                       help=f"comma-separated recipes of {','.join(RECIPES)} (default: {COMPARE_DEFAULTS['recipes']})")
    sweep.add_argument("--seeds", default=None,
                       help=f"a number N (seeds 0..N-1) or a comma-separated list (default: {COMPARE_DEFAULTS['seeds']})")
    sweep.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                       help="also train the dense reference (default: on)")
    sweep.add_argument("--verbose", action="store_true", help="print every run's epochs")
    add_config_arguments(compare, skip=("mask", "sparsity", "recipe", "seed", "resume"))

    sub.add_parser("demo", help="time a dense and a 95%%-sparse MLP side by side (python -m sparsekern.demo)",
                   add_help=False)
    return parser


def _list(text: str, name: str, convert=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name}: expected a comma-separated list, got {text!r}")
    try:
        return [convert(t) for t in items]
    except ValueError:
        raise ValueError(f"--{name}: could not read {text!r} as a list of {convert.__name__}") from None


def run_train(args) -> int:
    from .train.trainer import train

    result = train(config_from_args(args))
    return 0 if result else 1


def run_compare(args) -> int:
    from .train.compare import run_sweep, sweep_configs, write_report

    base = config_from_args(args)
    masks = _list(args.masks or COMPARE_DEFAULTS["masks"], "masks")
    bad = [m for m in masks if m not in MASK_METHODS or m == "dense"]
    if bad:
        raise ValueError(f"--masks: unknown {bad}; expected some of {', '.join(m for m in MASK_METHODS if m != 'dense')}")
    recipes = _list(args.recipes or COMPARE_DEFAULTS["recipes"], "recipes")
    if [r for r in recipes if r not in RECIPES]:
        raise ValueError(f"--recipes: expected some of {', '.join(RECIPES)}, got {recipes}")
    sparsities = _list(args.sparsities or COMPARE_DEFAULTS["sparsities"], "sparsities", float)
    seeds_text = args.seeds or COMPARE_DEFAULTS["seeds"]
    seeds = list(range(int(seeds_text))) if "," not in seeds_text and seeds_text.strip().isdigit() \
        else _list(seeds_text, "seeds", int)
    root = base.out or f"runs/compare-{base.model}-{base.dataset}"
    runs = sweep_configs(base, masks=masks, sparsities=sparsities, recipes=recipes, seeds=seeds, dense=args.dense,
                         root=root)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone reports
    results = run_sweep(runs, root, progress=base.progress and main_process, verbose=args.verbose,
                        log=print if main_process else (lambda *a, **k: None))
    if not main_process:
        return 0
    title = (f"{base.model} on {base.dataset}: default training vs the recipe, {base.epochs} epochs, "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    paths = write_report(results, root, title=title)
    print(f"\n{title}\n\n{paths['text']}\n")
    print(f"table: {paths['table']}\nplot: {paths['plot']}\nper-run curves: {root}/*/curves.png")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return run_train(args) if args.command == "train" else run_compare(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"sparsekern {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsparsekern {args.command}: interrupted; the last finished epoch is checkpointed: run the same "
              f"command with --resume{' (compare resumes by itself)' if args.command == 'compare' else ''} to "
              f"continue", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # joined by the first run under torchrun
            dist.destroy_process_group()
