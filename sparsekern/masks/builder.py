"""Scores → bool masks at a target sparsity, globally or per layer, at any granularity.

The rule: keep the highest-scoring units (granularity.py) until the kept weights reach
``round((1 − sparsity) · weights in scope)``; for unstructured masks that count is exact, for coarser units
it is the nearest a whole number of units can reach. Ties go to the unit that comes first (layers in the
order of ``scores``, then row-major within a weight), so the same scores always give the same mask.
"""
from __future__ import annotations

import math

import torch

from ..validation import check_mask
from .granularity import Units, check_granularity

SCOPES = ("global", "layer")


def build_masks(scores: dict, sparsity, *, scope: str = "global", granularity: str = "unstructured",
                block_size=None, n_m=None, reduce: str = "mean", current: dict | None = None) -> dict:
    """Masks keeping the highest scores.

    Args:
        scores: weight name → score tensor of the weight's shape (higher = more important to keep).
        sparsity: fraction of weights to prune, in [0, 1). With ``scope="layer"`` also a dict giving each
            weight its own sparsity. With ``granularity="n:m"`` it is fixed at ``1 − n/m``: pass None (or
            that value).
        scope: ``"global"`` ranks all weights together (layers end up with different sparsities);
            ``"layer"`` prunes every weight to the sparsity on its own.
        granularity: ``"unstructured"``, ``"block"`` (needs ``block_size``), ``"channel"`` (whole output
            channels), ``"kernel"`` (all kH×kW taps of a channel pair) or ``"n:m"`` (needs ``n_m``: keep the
            best n of every m consecutive weights along the input dimension of the 2-D view
            ``(out, in·kH·kW)``; a last, partial group keeps at most n).
        block_size: ``(bh, bw)`` (or one int) for block granularity, over the 2-D view: for a conv weight the
            tap-major one, so the tiles are bh output x bw input channels at one kernel tap (with bw dividing
            the input channels), what ``SparseConv2d(block_size=(bh, bw))`` and ``sparsify(..., block_size=)``
            take.
        n_m: ``(n, m)`` for N:M granularity, e.g. ``(2, 4)``.
        reduce: how a unit's score is formed from its weights' scores: ``"mean"`` (default: fair between
            units of different sizes under global scope), ``"sum"`` or ``"l2"``.
        current: masks already applied (weight name → bool): weights they prune stay pruned, so the new
            masks are subsets of them (iterative pruning). The target is then measured over all weights.

    Returns:
        weight name → bool mask, in the order of ``scores``.
    """
    scores = _check_scores(scores)
    granularity, block_size, n_m = check_granularity(granularity, block_size, n_m, reduce)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    devices = {name: s.device for name, s in scores.items()}
    scores = {name: s.detach().to("cpu", torch.float64) for name, s in scores.items()}  # ranking runs on CPU
    allowed = _allowed_by(current, scores)
    if granularity == "n:m":
        masks = _n_m_masks(scores, allowed, sparsity, n_m)
        return {name: m.to(devices[name]) for name, m in masks.items()}
    units = {name: Units(s.shape, granularity, block_size) for name, s in scores.items()}
    unit_scores = {name: units[name].scores(s, reduce) for name, s in scores.items()}
    unit_allowed = {name: units[name].all_of(allowed[name]) for name in scores}
    sizes = {name: u.sizes() for name, u in units.items()}
    if scope == "global":
        density = 1.0 - check_sparsity(sparsity, "sparsity")
        names = list(scores)
        kept = _select(torch.cat([unit_scores[n] for n in names]), torch.cat([unit_allowed[n] for n in names]),
                       torch.cat([sizes[n] for n in names]), density, "all layers")
        chunks = dict(zip(names, kept.split([units[n].count for n in names])))
    else:
        per_layer = _per_layer_sparsity(sparsity, scores)
        chunks = {name: _select(unit_scores[name], unit_allowed[name], sizes[name], 1.0 - per_layer[name],
                                repr(name))
                  for name in scores}
    return {name: units[name].expand(chunks[name]).to(devices[name]) for name in scores}


def _select(unit_scores: torch.Tensor, allowed: torch.Tensor, sizes: torch.Tensor, density: float,
            where: str) -> torch.Tensor:
    """Keep the best allowed units whose weights add up closest to round(density · all weights)."""
    total = int(sizes.sum())
    target = round(density * total)
    order = torch.sort(unit_scores, descending=True, stable=True).indices
    order = order[torch.sort(allowed[order].to(torch.uint8), descending=True, stable=True).indices]  # allowed first
    prefix = torch.cat([torch.zeros(1, dtype=torch.int64), sizes[order].cumsum(0)])  # weights kept by n units
    n = int(torch.searchsorted(prefix, torch.tensor([target])).item())  # fewest units reaching the target
    if int(prefix[n]) != target and target - int(prefix[n - 1]) <= int(prefix[n]) - target:
        n -= 1  # one unit fewer comes closer (or as close): stay below
    available = int(allowed.sum())
    if n > available:
        can_keep = int(prefix[available])
        raise ValueError(f"sparsity: {where} would keep {int(prefix[n])} of {total} weights, but the current "
                         f"masks keep only {can_keep}; pruning cannot bring weights back")
    kept = torch.zeros(len(unit_scores), dtype=torch.bool)
    kept[order[:n]] = True
    return kept


def _n_m_masks(scores: dict, allowed: dict, sparsity, n_m: tuple[int, int]) -> dict:
    n, m = n_m
    if sparsity is not None and not math.isclose(float(sparsity), 1.0 - n / m, abs_tol=1e-9):
        raise ValueError(f"sparsity: N:M {n}:{m} fixes the sparsity at {1 - n / m:g}; pass None or that value, "
                         f"got {sparsity!r}")
    masks = {}
    for name, s in scores.items():
        rows = s.shape[0] if s.dim() else 1
        flat, ok = s.reshape(rows, -1), allowed[name].reshape(rows, -1)
        cols = flat.shape[1]
        groups = -(-cols // m)
        # Rank within each group: allowed weights first, then by score; padding is never allowed.
        padded = flat.new_full((rows, groups * m), -math.inf)
        padded[:, :cols] = flat
        padded_ok = torch.zeros((rows, groups * m), dtype=torch.bool)
        padded_ok[:, :cols] = ok
        grouped, grouped_ok = padded.view(rows, groups, m), padded_ok.view(rows, groups, m)
        order = torch.sort(grouped, dim=2, descending=True, stable=True).indices
        order = order.gather(2, torch.sort(grouped_ok.gather(2, order).to(torch.uint8), dim=2, descending=True,
                                           stable=True).indices)
        keep = torch.zeros_like(grouped_ok).scatter_(2, order[:, :, :n], True) & grouped_ok
        masks[name] = keep.view(rows, groups * m)[:, :cols].reshape(s.shape).clone()
    return masks


def _check_scores(scores) -> dict:
    if not isinstance(scores, dict):
        raise TypeError(f"scores: expected a dict of weight name -> score tensor, got {type(scores).__name__}")
    if not scores:
        raise ValueError("scores: expected a non-empty dict of weight name -> score tensor, got an empty dict")
    for name, s in scores.items():
        if not isinstance(s, torch.Tensor) or not (s.is_floating_point() or s.dtype == torch.bool):
            raise TypeError(f"scores: {name!r} must be a floating tensor, got "
                            f"{type(s).__name__ if not isinstance(s, torch.Tensor) else s.dtype}")
        if bool(torch.isnan(s).any()):
            raise ValueError(f"scores: {name!r} contains NaN; a scorer failed (check the model and data)")
    return scores


def _allowed_by(current, scores: dict) -> dict:
    """Weight name → bool: the weights a new mask may keep (all, or those ``current`` keeps)."""
    if current is None:
        return {name: torch.ones(s.shape, dtype=torch.bool) for name, s in scores.items()}
    if not isinstance(current, dict):
        raise TypeError(f"current: expected a dict of weight name -> bool mask, got {type(current).__name__}")
    unknown = sorted(set(current) - set(scores))
    if unknown:
        raise KeyError(f"current: masks for weights that have no scores: {unknown[:5]}")
    return {name: (check_mask(current[name], f"current[{name!r}]", shape=s.shape).cpu() if name in current
                   else torch.ones(s.shape, dtype=torch.bool))
            for name, s in scores.items()}


def check_sparsity(value, name: str = "sparsity") -> float:
    """``value`` as a float in [0, 1) (the sparsities masks are built at), or a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def _per_layer_sparsity(sparsity, scores: dict) -> dict:
    if isinstance(sparsity, dict):
        missing = [n for n in scores if n not in sparsity]
        extra = [n for n in sparsity if n not in scores]
        if missing or extra:
            raise KeyError(f"sparsity: the dict must name exactly the scored weights; missing {missing[:5]}, "
                           f"unknown {extra[:5]}")
        return {n: check_sparsity(sparsity[n], f"sparsity[{n!r}]") for n in scores}
    value = check_sparsity(sparsity, "sparsity")
    return {n: value for n in scores}
