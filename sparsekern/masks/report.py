"""mask_report: what masks keep, per prunable layer and in all, and the forward FLOPs they leave.

FLOPs are per sample, forward pass only, and count each multiply-add of a weight as 2 FLOPs; bias adds,
activations, norms and pooling are not counted. A layer with ``W`` weights (``W = out · in`` for a Linear,
``C_out · C_in/groups · kH · kW`` for a Conv2d) of which ``K`` are kept costs ``2 · W · P`` dense and
``2 · K · P`` sparse, where ``P`` is its output positions per sample: ``OH · OW`` for a Conv2d, 1 for a Linear
on ``(N, in)`` inputs (or the tokens of a sequence). ``P`` is measured by one forward pass on zeros of
shape ``(1, *input_shape)``; without ``input_shape`` a Linear's ``P`` is taken as 1 and a Conv2d's FLOPs
are unknown (None).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn.linear import SparseLinear
from ..atomic_file import atomic_write
from ..validation import check_mask
from .prunable import current_masks, preview_names, prunable_layers

CSV_FIELDS = ("name", "type", "shape", "kept", "total", "density", "dense_flops", "sparse_flops")
TOTAL_NAME = "total"  # the name of the CSV's last row; weight names end in "weight", so it cannot clash
FLOPS_COUNTED = "forward, per sample, 2 FLOPs per weight multiply-add; bias adds not counted"


@dataclass
class MaskReport:
    """Per-layer rows (dicts with the keys of ``CSV_FIELDS``; ``shape`` a tuple, FLOPs None where unknown),
    ``totals`` over all rows, and ``notes`` saying why FLOPs are missing, if they are."""

    rows: list
    totals: dict
    input_shape: tuple | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-able values (shapes as lists)."""
        return {"input_shape": None if self.input_shape is None else list(self.input_shape),
                "flops_counted": FLOPS_COUNTED,
                "rows": [dict(row, shape=list(row["shape"])) for row in self.rows],
                "totals": dict(self.totals), "notes": list(self.notes)}

    def to_text(self) -> str:
        """An aligned table, one line per layer and a totals line, then the sparsity and FLOP ratio."""
        header = ("layer", "type", "shape", "kept", "total", "density", "dense FLOPs", "sparse FLOPs")
        lines = [(row["name"], row["type"], _shape_text(row["shape"]), _int_text(row["kept"]), _int_text(row["total"]),
                  _percent(row["density"]), _int_text(row["dense_flops"]), _int_text(row["sparse_flops"]))
                 for row in self.rows]
        t = self.totals
        total_line = (TOTAL_NAME, "", "", _int_text(t["kept"]), _int_text(t["total"]), _percent(t["density"]),
                      _int_text(t["dense_flops"]), _int_text(t["sparse_flops"]))
        widths = [max(len(line[i]) for line in (header, *lines, total_line)) for i in range(len(header))]
        left = 3  # name, type and shape read best left-aligned, numbers right-aligned

        def fmt(line):
            return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

        rule = "-" * len(fmt(header))
        ratio = "unknown" if t["flop_ratio"] is None else f"{t['flop_ratio']:.2f}x"
        summary = f"sparsity {_percent(t['sparsity'])} ({t['layers']} layers); FLOPs dense / sparse: {ratio}"
        out = [fmt(header), rule, *(fmt(line) for line in lines), rule, fmt(total_line), summary]
        out += [f"note: {note}" for note in self.notes]
        return "\n".join(line.rstrip() for line in out) + "\n"

    def to_csv(self, path_or_file) -> None:
        """Write ``CSV_FIELDS`` as a header, one row per layer, then a row named ``"total"`` with the totals.

        Shapes are written like ``4x3x3x3``, densities as fractions, unknown FLOPs as empty cells. A path is
        written atomically; an open text file (opened with ``newline=""``) is written as it is.
        """
        if isinstance(path_or_file, (str, os.PathLike)):
            with atomic_write(path_or_file, text=True) as f:
                self._write_csv(f)
        elif hasattr(path_or_file, "write"):
            self._write_csv(path_or_file)
        else:
            raise TypeError(f"path_or_file: expected a path or an open text file, got {type(path_or_file).__name__}")

    def _write_csv(self, f) -> None:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        total_row = {"name": TOTAL_NAME, "type": "", "shape": None, **{k: self.totals[k] for k in CSV_FIELDS[3:]}}
        for row in (*self.rows, total_row):
            writer.writerow({k: ("" if row[k] is None else _shape_text(row[k]) if k == "shape" else row[k])
                             for k in CSV_FIELDS})


def mask_report(model: nn.Module, masks: dict | None = None, *, input_shape=None) -> MaskReport:
    """Counts, densities and forward FLOPs (module docstring) of every prunable layer, in module order.

    Args:
        model: any module; dense or already sparsified.
        masks: weight name → mask for the layers to report as pruned by it (names: prunable layers' weights,
            shapes: theirs). Layers not named, and every layer when ``masks`` is None, count with the mask they
            hold: a sparse layer's own mask, torch.nn.utils.prune's ``weight_mask``, all kept otherwise.
        input_shape: one sample's shape without the batch dimension (``(3, 32, 32)``), for the output sizes
            behind the FLOPs. The forward pass runs in eval mode under ``torch.no_grad``; each module's training
            mode is restored afterwards.
    """
    layers = prunable_layers(model)  # checks that model is a Module
    if not layers:
        raise ValueError(f"model: a {type(model).__name__} with no Linear or Conv2d layers has nothing to report")
    held = _held_masks(layers)
    if masks is not None:
        held.update(_check_masks(masks, held, layers))
    positions = None if input_shape is None else _output_positions(model, layers, held, _check_input_shape(input_shape))
    rows = [_row(name, layer, held[name], positions) for name, layer in layers.items()]
    notes = []
    if input_shape is None and any(row["dense_flops"] is None for row in rows):
        notes.append("Conv2d FLOPs need input_shape, e.g. mask_report(model, input_shape=(3, 32, 32))")
    missed = [row["name"] for row in rows if row["dense_flops"] is None and input_shape is not None]
    if missed:
        notes.append(f"the forward pass never ran {missed[:5]}, so their FLOPs are unknown")
    return MaskReport(rows, _totals(rows), None if input_shape is None else tuple(input_shape), notes)


def _held_masks(layers: dict) -> dict:
    held = current_masks(layers)
    for name, layer in layers.items():  # current_masks does not see torch.nn.utils.prune's masks
        torch_mask = dict(layer.named_buffers(recurse=False)).get("weight_mask")
        if torch_mask is not None:
            held[name] = check_mask(torch_mask, f"{name}_mask", shape=held[name].shape)
    return held


def _check_masks(masks, held: dict, layers: dict) -> dict:
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of weight name -> bool mask, got {type(masks).__name__}")
    checked = {}
    for name, mask in masks.items():
        if name not in held:
            raise KeyError(f"masks: {name!r} is not the weight of a Linear or Conv2d layer of the model; its "
                           f"prunable weights are {preview_names(layers)}")
        checked[name] = check_mask(mask, f"masks[{name!r}]", shape=held[name].shape)
    return checked


def _check_input_shape(input_shape) -> tuple:
    shape = (input_shape,) if isinstance(input_shape, int) else input_shape
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"input_shape: expected a tuple of ints (one sample, no batch dimension), got {input_shape!r}")
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected positive sizes, got {tuple(shape)}")
    return tuple(shape)


def _output_positions(model: nn.Module, layers: dict, held: dict, shape: tuple) -> dict:
    """Weight name → output positions per sample (summed over calls, for a layer run more than once),
    for the layers one forward pass on a batch of one reaches."""
    positions: dict = {}

    def hook_for(name, out_size):
        def hook(module, inputs, output):
            positions[name] = positions.get(name, 0) + output.numel() // out_size  # batch of one
        return hook

    handles = [layer.register_forward_hook(hook_for(name, held[name].shape[0]))  # out features / channels
               for name, layer in layers.items()]
    modes = {module: module.training for module in model.modules()}
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = torch.zeros((1, *shape), device=None if first is None else first.device,
                    dtype=None if first is None else first.dtype)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception as e:
        raise ValueError(f"input_shape: a forward pass on zeros of shape {tuple(x.shape)} failed ({type(e).__name__}: "
                         f"{e}); give one sample's shape without the batch dimension") from e
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():  # each its own: model.train(mode) would overwrite the children's modes
            module.training = mode
    return positions


def _row(name: str, layer: nn.Module, mask: torch.Tensor, positions: dict | None) -> dict:
    kept, total = int(mask.sum()), mask.numel()
    if positions is None:
        per_sample = 1 if isinstance(layer, (nn.Linear, SparseLinear)) else None
    else:
        per_sample = positions.get(name)
    return {"name": name, "type": type(layer).__name__, "shape": tuple(mask.shape), "kept": kept, "total": total,
            "density": kept / total if total else 1.0,
            "dense_flops": None if per_sample is None else 2 * total * per_sample,
            "sparse_flops": None if per_sample is None else 2 * kept * per_sample}


def _totals(rows: list) -> dict:
    kept, total = sum(r["kept"] for r in rows), sum(r["total"] for r in rows)
    known = all(r["dense_flops"] is not None for r in rows)  # a partial sum would understate the model's cost
    dense = sum(r["dense_flops"] for r in rows) if known else None
    sparse = sum(r["sparse_flops"] for r in rows) if known else None
    density = kept / total if total else 1.0
    return {"layers": len(rows), "kept": kept, "total": total, "density": density, "sparsity": 1.0 - density,
            "dense_flops": dense, "sparse_flops": sparse, "flop_ratio": dense / sparse if known and sparse else None}


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape) if shape is not None else ""


def _int_text(value) -> str:
    return "-" if value is None else f"{value:,}"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"
