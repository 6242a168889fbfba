"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020).

GraSP prunes the weights whose removal preserves the gradient flow ``gᵀg`` best: removing a weight (a step
``δ = −w``) changes ``gᵀg`` by about ``2 δ (H g) = 2 S`` to first order, with the paper's saliency::

    S = −(H g) ⊙ w        g = ∂L/∂w,  H = ∂²L/∂w²

with L the cross-entropy of the logits divided by a temperature T,

and GraSP PRUNES the weights with the LARGEST ``S``, whose removal raises the flow most (the official code
keeps the weights with ``S`` at or below the top-``p`` threshold). Our builder keeps the highest scores, so
``grasp_scores`` returns the importance ``−S = (H g) ⊙ w``: ``build_masks(grasp_scores(...), p)`` prunes what
GraSP prunes. ``grasp_saliency`` returns ``S`` itself. (The official code also divides ``S`` by ``|Σ S|``, a
positive constant that changes no mask, and re-initialises Linear layers first; neither is done here.)

``H g`` without forming ``H``, by double backprop over the same batches in two passes:

1. ``g = Σ_b ∂L_b/∂w`` (no graph);
2. per batch, ``grad_b = ∂L_b/∂w`` with a graph, ``z_b = Σ_w (g · grad_b).sum()``, ``∂z_b/∂w = H_b g``;
   ``H g = Σ_b H_b g``: the Hessian of the summed loss times its gradient.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .gradient_scoring import (batch_loss, buffer_copies, check_loss_fn, gradients, scored_layers, take_batches,
                               weight_leaves)

__all__ = ["grasp_scores", "grasp_saliency"]


def grasp_scores(model: nn.Module, data, *, batches: int = 1, temperature: float = 200.0, loss_fn=None,
                 layers=None) -> dict:
    """Weight name → GraSP importance ``(H g) ⊙ w = −S`` (float64, on the weight's device): higher = keep, so
    ``build_masks`` on these prunes the weights with the largest GraSP saliency ``S``, as GraSP does.

    Args:
        model: a dense model (nn.Linear / nn.Conv2d layers). It runs in the mode it is in (``model.eval()``
            first to use BatchNorm's running statistics); it is left as it was (parameters, buffers,
            ``.grad``, modes).
        data: an iterable of ``(inputs, targets)`` batches, e.g. a DataLoader. The first ``batches`` batches
            are read once and used in both passes.
        batches: how many batches (>= 1); ``data`` must have that many.
        temperature: ``T`` > 0: the loss is ``loss_fn(outputs / T, targets)`` (the paper uses 200).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``; default ``F.cross_entropy``.
        layers: None (every prunable layer), a dict from ``prunable_layers(model, ...)`` or weight names.
    """
    weights, hg = _hessian_gradient(model, data, batches, temperature, loss_fn, layers)
    return {name: hg[name].double() * w.detach().double() for name, w in weights.items()}


def grasp_saliency(model: nn.Module, data, *, batches: int = 1, temperature: float = 200.0, loss_fn=None,
                   layers=None) -> dict:
    """The paper's saliency ``S = −(H g) ⊙ w`` (float64): GraSP prunes the LARGEST ``S``.

    Same arguments as ``grasp_scores``, which returns ``−S`` (for ``build_masks``, which keeps the highest).
    """
    return {name: -s for name, s in grasp_scores(model, data, batches=batches, temperature=temperature,
                                                 loss_fn=loss_fn, layers=layers).items()}


def _hessian_gradient(model, data, batches, temperature, loss_fn, layers) -> tuple[dict, dict]:
    """(weight copies, ``H g`` per weight) for the scored layers, over the first ``batches`` batches."""
    layers = scored_layers(model, layers, "GraSP")
    temperature = _check_temperature(temperature)
    loss_fn = check_loss_fn(loss_fn)
    # Both passes must see the same batches: a shuffling DataLoader would give new ones on a second pass.
    chosen = list(take_batches(data, batches, "GraSP"))
    weights = weight_leaves(layers)
    tensors = {**weights, **buffer_copies(model)}
    g = {name: torch.zeros_like(w) for name, w in weights.items()}
    hg = {name: torch.zeros_like(w) for name, w in weights.items()}
    with torch.enable_grad():
        for i, (inputs, targets) in enumerate(chosen):
            loss = batch_loss(model, tensors, inputs, targets, loss_fn, i, temperature)
            for name, grad in zip(weights, gradients(loss, weights)):
                g[name] += grad
        for i, (inputs, targets) in enumerate(chosen):
            loss = batch_loss(model, tensors, inputs, targets, loss_fn, i, temperature)
            grads = gradients(loss, weights, create_graph=True)
            z = sum((g[name] * grad).sum() for name, grad in zip(weights, grads))
            if not z.requires_grad:  # the gradient is constant in the weights (H = 0): nothing to add
                continue
            for name, h in zip(weights, gradients(z, weights)):
                hg[name] += h
    return weights, hg


def _check_temperature(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"temperature: expected a positive number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature: expected a positive finite number, got {value!r}")
    return float(value)
