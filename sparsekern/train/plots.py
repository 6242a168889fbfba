"""Plots of a sweep (accuracy vs sparsity) and of one run (training curves), saved as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg`` directly, never through
pyplot: no global backend is chosen or changed, no window opens, and a user's own pyplot session is untouched.
The PNG is rendered into memory first and then written atomically, so a crash never leaves half an image.

The sparsity axis is the density (1 − sparsity) on a log scale, reversed so sparsity grows to the right, and
labelled with the sparsities: 90%, 95% and 98% sparsity are densities 10%, 5% and 2%, evenly spread on a log
axis, whereas on a linear sparsity axis they crowd into the last tenth of the plot.
"""
from __future__ import annotations

import io
import math
import os

from ..atomic_file import atomic_write, check_path
from .report import DEFAULT_RECIPE, DENSE, METRICS_FILE, RECIPE, read_metrics, summarize

CURVES_FILE = "curves.png"
DPI = 150
RECIPE_STYLES = {"none": ("--", "o"), "tost": ("-", "s"), "paper-code": ("-.", "^"), "custom": (":", "D")}
OTHER_STYLE = (":", "v")
KNOWN_MASKS = ("random", "snip", "grasp", "synflow", "magnitude", "erk")  # fixed colours across plots
DODGE = 0.012  # log10 units between a cell's series, so error bars of one sparsity do not hide each other


def plot_accuracy_vs_sparsity(results, path, *, title=None) -> str:
    """Test accuracy (%) against sparsity: a colour per mask method, default training dashed, the recipe solid,
    error bars = sample std over seeds, the dense reference a dotted horizontal line. One panel per
    (model, dataset) pair. Returns ``path``."""
    path = check_path(path)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title: expected a str or None, got {type(title).__name__}")
    rows = summarize(results)
    sparse_rows = [row for row in rows if row["mask"] != DENSE]
    if not sparse_rows:
        raise ValueError("results: nothing to plot, no finished runs of a sparse mask "
                         f"({len(rows) - len(sparse_rows)} dense cell(s) only)" if rows else
                         "results: nothing to plot, no finished runs")
    Figure, Line2D = _matplotlib()
    pairs = list(dict.fromkeys((row["model"], row["dataset"]) for row in sparse_rows))
    masks = _mask_colours(sorted({row["mask"] for row in sparse_rows}))
    recipes = sorted({r for row in rows for r in row["recipes"]}, key=_recipe_key)

    fig = Figure(figsize=(6.4 * len(pairs) + 2.2, 4.8), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (model, dataset) in zip(axes, pairs):
        pair_rows = [row for row in rows if (row["model"], row["dataset"]) == (model, dataset)]
        _draw_sweep(ax, pair_rows, masks, recipes)
        ax.set_title(f"{model} on {dataset}" if title is None or len(pairs) > 1 else title)
    if title is not None and len(pairs) > 1:
        fig.suptitle(title)

    handles = [Line2D([], [], color=colour, lw=2, label=mask) for mask, colour in masks.items()]
    handles += [Line2D([], [], color="0.3", ls=_style(r)[0], marker=_style(r)[1], label=_recipe_label(r))
                for r in recipes]
    if any(row["mask"] == DENSE for row in rows):
        handles.append(Line2D([], [], color="black", ls=":", label="dense reference"))
    fig.legend(handles=handles, loc="outside right upper")
    _save(fig, path)
    return path


def plot_training_curves(run_dir, path=None) -> str:
    """Loss (train/val) and accuracy (train/val) per epoch from ``run_dir/metrics.jsonl``, with the learning
    rate and the ghost α on a small third panel. Saved to ``path`` (default ``run_dir/curves.png``); returns
    the path written."""
    run_dir = check_path(run_dir)
    path = os.path.join(run_dir, CURVES_FILE) if path is None else check_path(path)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"run_dir: nothing to plot, {os.path.join(run_dir, METRICS_FILE)} has no complete epoch")
    for i, record in enumerate(records):
        epoch = record.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"run_dir: {METRICS_FILE} record {i + 1} has 'epoch' {epoch!r}, expected an int")
    Figure, _ = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in records]

    def series(key, scale=1.0):
        values = [_float(record.get(key)) for record in records]
        return [v * scale for v in values] if any(not math.isnan(v) for v in values) else None

    fig = Figure(figsize=(10, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1.4))
    ax_loss, ax_acc, ax_small = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    marker = "o" if len(epochs) <= 30 else None  # markers on short runs show each epoch; on long runs they clutter

    for ax, key, scale, label in ((ax_loss, "loss", 1.0, "loss"), (ax_acc, "acc", 100.0, "accuracy (%)")):
        for split, colour in (("train", "C0"), ("val", "C1")):
            values = series(f"{split}_{key}", scale)
            if values is not None:
                ax.plot(epochs, values, color=colour, marker=marker, ms=3, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=label.split(" ")[0])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()

    lr = series("lr")
    if lr is not None:
        ax_small.plot(epochs, lr, color="C2", marker=marker, ms=3, label="lr")
    ax_small.set(xlabel="epoch", ylabel="learning rate")
    ax_small.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_small.grid(True, alpha=0.3)
    ax_alpha = ax_small.twinx()  # α lives in [0, 1], the lr often orders of magnitude lower: its own axis
    for key, ls in (("alpha_neurons", "-"), ("alpha_skips", "--")):
        values = series(key)
        if values is not None:
            ax_alpha.plot(epochs, values, color="C3", ls=ls, marker=marker, ms=3, label=f"ghost α ({key[6:]})")
    ax_alpha.set(ylabel="ghost α", ylim=(-0.05, 1.05))
    lines = ax_small.lines + ax_alpha.lines
    if lines:
        ax_small.legend(lines, [line.get_label() for line in lines], loc="best", fontsize="small")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)) or run_dir)
    _save(fig, path)
    return path


def _draw_sweep(ax, rows: list[dict], masks: dict, recipes: list) -> None:
    """One panel: a line per (mask, recipe), the dense reference as a dotted line with its ±std band."""
    sparse = [row for row in rows if row["mask"] != DENSE]
    n_series = len(recipes)
    for mask, colour in masks.items():
        for k, recipe in enumerate(recipes):
            points = [(row["sparsity"], row["recipes"][recipe]) for row in sparse
                      if row["mask"] == mask and recipe in row["recipes"]]
            if not points:
                continue
            shift = 10 ** (DODGE * (k - (n_series - 1) / 2))
            x = [(1.0 - s) * shift for s, _ in points]
            y = [stat["mean"] * 100 for _, stat in points]
            err = [0.0 if stat["std"] is None else stat["std"] * 100 for _, stat in points]
            ls, marker = _style(recipe)
            ax.errorbar(x, y, yerr=err, color=colour, ls=ls, marker=marker, ms=5, capsize=3, lw=1.5)
    for row in rows:
        if row["mask"] != DENSE:
            continue
        stat = row["recipes"].get(DEFAULT_RECIPE) or next(iter(row["recipes"].values()))
        mean = stat["mean"] * 100
        ax.axhline(mean, color="black", ls=":", lw=1.5)
        if stat["std"] is not None:
            ax.axhspan(mean - stat["std"] * 100, mean + stat["std"] * 100, color="black", alpha=0.08, lw=0)
    sparsities = sorted({row["sparsity"] for row in sparse})
    ax.set_xscale("log")
    ax.set_xticks([1.0 - s for s in sparsities], [f"{s * 100:.4g}" for s in sparsities])
    ax.minorticks_off()  # log minor ticks would sit at densities nobody ran
    ax.set_xlim(_padded_limits([1.0 - s for s in sparsities]))
    ax.invert_xaxis()  # density falls to the right, so sparsity rises to the right
    ax.set(xlabel="sparsity (%), log scale of the density", ylabel="test accuracy (%)")
    ax.grid(True, alpha=0.3)


def _padded_limits(densities: list) -> tuple:
    lo, hi = math.log10(min(densities)), math.log10(max(densities))
    pad = max(0.08, 0.06 * (hi - lo))
    return 10 ** (lo - pad), 10 ** (hi + pad)


def _mask_colours(masks: list) -> dict:
    """Known masks keep their colour whichever subset a sweep has, so plots of different sweeps compare."""
    palette = [f"C{i}" for i in range(10)]
    colours, spare = {}, iter(palette[len(KNOWN_MASKS):])
    for mask in masks:
        colours[mask] = palette[KNOWN_MASKS.index(mask)] if mask in KNOWN_MASKS else next(spare, "0.5")
    return colours


def _recipe_key(recipe: str) -> tuple:
    order = list(RECIPE_STYLES)
    return (order.index(recipe), "") if recipe in order else (len(order), recipe)


def _style(recipe: str) -> tuple:
    return RECIPE_STYLES.get(recipe, OTHER_STYLE)


def _recipe_label(recipe: str) -> str:
    return {DEFAULT_RECIPE: "default training", RECIPE: "recipe (ToST)"}.get(recipe, recipe)


def _float(value) -> float:
    """A number, or NaN for a missing / null value (matplotlib leaves a gap there)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _matplotlib():
    """Import here, not at module import: matplotlib is only needed for plots, and is not a core dependency."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as e:
        raise ImportError("sparsekern.train.plots needs matplotlib: pip install matplotlib") from e
    return Figure, Line2D


def _save(fig, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only; the global backend stays as it is
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    with atomic_write(path, text=False) as f:
        f.write(buffer.getvalue())
