"""SynFlow: iterative synaptic flow pruning, without data (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020).

The network is made linear in its absolute weights: every floating parameter and buffer replaced by its
absolute value, in float64, every module in eval mode (BatchNorm becomes an affine map of |running stats|),
the current masks multiplied into the weights, and an all-ones input. Its summed output is the synaptic flow;
for an MLP without biases ``R = 1ᵀ |W_L| ··· |W_1| 1``. A weight's score is the flow through it::

    S(w) = |∂R/∂w ⊙ w|          (≥ 0; 0 for a pruned weight or one on no path from input to output)

One-shot scores (magnitude, SNIP, GraSP) can prune a whole layer at high sparsity (layer collapse). SynFlow
prunes a little at a time and recomputes the scores on the masked network: a layer that has lost weights
carries the same flow through fewer of them, so its remaining weights score higher and survive. Round ``k`` of
``n`` prunes to density ``(1 − sparsity)^(k/n)`` (the paper's exponential schedule); the last round hits the
target.

The model is never modified: the abs/float64/masked tensors go in through ``torch.func.functional_call``, the
gradient is taken with ``torch.autograd.grad`` (no ``.grad`` is written), and the modules' train/eval flags are
put back in a ``finally``, so an exception leaves the model as it was too.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from ..validation import check_mask
from .builder import SCOPES, build_masks, check_sparsity
from .granularity import check_granularity
from .prunable import weight_of
from .gradient_scoring import gradients, scored_layers

__all__ = ["synflow_scores", "synflow_masks"]


def synflow_scores(model: nn.Module, input_shape, *, layers=None, masks: dict | None = None) -> dict:
    """Weight name → SynFlow score ``|∂R/∂w ⊙ w|`` (float64, on the weight's device), one round.

    Args:
        model: a dense model (nn.Linear / nn.Conv2d layers) that returns one tensor; it is left as it was.
        input_shape: one input without the batch dimension, e.g. ``(3, 32, 32)`` or ``(784,)``.
        layers: None (every prunable layer), a dict from ``prunable_layers(model, ...)`` or weight names.
        masks: weight name → bool mask for some of the scored weights, multiplied into them first (the
            weights they prune score 0).
    """
    layers = scored_layers(model, layers, "SynFlow")
    shape = _check_input_shape(input_shape)
    masks = _check_masks(masks, layers)
    with _all_eval(model):
        return _scores(model, layers, shape, masks)


def synflow_masks(model: nn.Module, sparsity: float, input_shape, *, rounds: int = 100, layers=None,
                  scope: str = "global", granularity: str = "unstructured", block_size=None, n_m=None,
                  reduce: str = "mean", progress: bool = False) -> dict:
    """Weight name → bool mask at ``sparsity``, by ``rounds`` rounds of SynFlow scoring and pruning.

    Round ``k`` scores the network under the masks so far and prunes to density ``(1 − sparsity)^(k/rounds)``
    with ``build_masks(..., current=masks)`` (pruned weights stay pruned); the last round prunes to
    ``sparsity`` itself, so with global or per-layer unstructured masks the kept count is exactly
    ``round((1 − sparsity) · weights)``. For coarser units a round keeps the nearest whole number of units
    it can reach without bringing any back; a round already at its target is skipped.

    Args:
        model, input_shape, layers: as for ``synflow_scores``.
        sparsity: fraction to prune, in [0, 1).
        rounds: number of rounds (>= 1; the paper uses 100).
        scope, granularity, block_size, reduce: as for ``build_masks``. ``"n:m"`` fixes the sparsity, so there is
            nothing to iterate: use ``build_masks(synflow_scores(...), None, granularity="n:m", ...)``.
        progress: show a tqdm bar over the rounds.
    """
    layers = scored_layers(model, layers, "SynFlow")
    sparsity = check_sparsity(sparsity)
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds: expected an int >= 1, got {type(rounds).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds: expected an int >= 1, got {rounds}")
    shape = _check_input_shape(input_shape)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    granularity, block_size, n_m = check_granularity(granularity, block_size, n_m, reduce)
    if granularity == "n:m":
        raise ValueError("granularity: 'n:m' fixes the sparsity at 1 - n/m, so there are no rounds to iterate; "
                         "use build_masks(synflow_scores(...), None, granularity='n:m', n_m=...)")
    options = dict(scope=scope, granularity=granularity, block_size=block_size, reduce=reduce)
    masks = {name: torch.ones_like(weight_of(layer), dtype=torch.bool) for name, layer in layers.items()}
    steps = range(1, rounds + 1)
    if progress:
        from tqdm import tqdm  # only needed for the bar
        steps = tqdm(steps, desc="SynFlow", unit="round")
    with _all_eval(model):
        for k in steps:
            # The last round uses sparsity itself: 1 − (1 − s)^1 can differ from s in the last bit.
            target = sparsity if k == rounds else 1.0 - (1.0 - sparsity) ** (k / rounds)
            todo = _over_target(masks, target, scope)
            if not todo:
                continue
            scores = _scores(model, layers, shape, masks)
            pruned = build_masks({n: scores[n] for n in todo}, target, current={n: masks[n] for n in todo},
                                 **options)
            masks.update(pruned)
    return masks


def _scores(model: nn.Module, layers: dict, shape: tuple, masks: dict) -> dict:
    """One SynFlow pass; the caller has put every module in eval mode."""
    first = weight_of(next(iter(layers.values())))
    weights = {}
    for name, layer in layers.items():
        w = weight_of(layer).to(torch.float64).abs()
        weights[name] = (w * masks[name] if name in masks else w).requires_grad_(True)
    tensors = {name: _positive(p) for name, p in model.named_parameters()}
    tensors.update({name: _positive(b) for name, b in model.named_buffers()})
    tensors.update(weights)
    ones = torch.ones((1, *shape), dtype=torch.float64, device=first.device)
    with torch.enable_grad():
        try:
            output = functional_call(model, tensors, (ones,))
        except RuntimeError as error:
            raise ValueError(f"input_shape: the model failed on an all-ones float64 input of shape "
                             f"{tuple(ones.shape)} (input_shape={shape}): {error}") from error
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"model: SynFlow needs a model that returns one tensor, got {type(output).__name__}")
        flow = output.sum()
        if not torch.isfinite(flow):
            raise ValueError(f"model: the synaptic flow R = {float(flow)} is not finite in float64 (the network "
                             f"is too deep or its weights too large for SynFlow)")
        if not flow.requires_grad:  # the output does not depend on any scored weight
            return {name: torch.zeros_like(w.detach()) for name, w in weights.items()}
        grads = gradients(flow, weights)
    return {name: (g * w).detach().abs() for (name, w), g in zip(weights.items(), grads)}


def _positive(t: torch.Tensor) -> torch.Tensor:
    """|t| in float64 for floating tensors (a new tensor); other tensors (counters, indices) copied as they are."""
    t = t.detach()
    return t.to(torch.float64).abs() if t.is_floating_point() else t.clone()


def _over_target(masks: dict, sparsity: float, scope: str) -> list:
    """The weights a round must still prune to reach ``sparsity``: all of them (global) or per layer."""
    density = 1.0 - sparsity
    if scope == "global":
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        return list(masks) if kept > round(density * total) else []
    return [name for name, m in masks.items() if int(m.sum()) > round(density * m.numel())]


@contextmanager
def _all_eval(model: nn.Module):
    """Every module in eval mode inside; each module's own flag put back after, also on an exception."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_input_shape(input_shape) -> tuple:
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise ValueError(f"input_shape: expected the shape of one input without the batch dimension, e.g. "
                         f"(3, 32, 32), got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"input_shape: expected positive ints (one input without the batch dimension, e.g. "
                         f"(3, 32, 32)), got {input_shape!r}")
    return shape


def _check_masks(masks, layers: dict) -> dict:
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of weight name -> bool mask, got {type(masks).__name__}")
    unknown = [name for name in masks if name not in layers]
    if unknown:
        raise KeyError(f"masks: {unknown[:5]} are not among the scored weights {list(layers)[:8]}")
    checked = {}
    for name, mask in masks.items():
        weight = weight_of(layers[name])
        checked[name] = check_mask(mask, f"masks[{name!r}]", shape=weight.shape).to(weight.device)
    return checked
