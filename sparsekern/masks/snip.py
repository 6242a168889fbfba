"""SNIP: single-shot pruning by connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019).

A weight's saliency is the first-order change of the loss when it is removed: the derivative of the loss by a
multiplicative gate ``c`` on the weight, at ``c = 1``, in absolute value::

    S(w) = |∂L/∂w ⊙ w|

SNIP keeps the most salient weights, so ``S`` is a score in the builder's sense (higher = keep).

Several batches: the gradients are summed first and the saliency is taken of the sum,
``S = |(Σ_b ∂L_b/∂w) ⊙ w|`` (the saliency of the total loss; summing ``|g_b ⊙ w|`` per batch instead would
count gradients that cancel between batches). ``L_b`` is ``loss_fn`` on batch ``b`` (by default the mean
cross-entropy). The paper normalises ``S`` by its sum over all weights; that changes no mask, so it is left out.

The model runs through ``torch.func.functional_call`` on copies of the weights and buffers
(gradient_scoring.py), so its parameters, buffers, ``.grad`` and modes are never touched.
"""
from __future__ import annotations

import torch
from torch import nn

from .gradient_scoring import (batch_loss, buffer_copies, check_loss_fn, gradients, scored_layers, take_batches,
                               weight_leaves)

__all__ = ["snip_scores"]


def snip_scores(model: nn.Module, data, *, batches: int = 1, loss_fn=None, layers=None) -> dict:
    """Weight name → SNIP saliency ``|g ⊙ w|`` (float64, on the weight's device), ``g`` the loss gradient
    summed over the first ``batches`` batches of ``data``.

    Args:
        model: a dense model (nn.Linear / nn.Conv2d layers). It runs in the mode it is in: call
            ``model.eval()`` first to use BatchNorm's running statistics instead of the batch's. The model is
            left as it was (parameters, buffers, ``.grad``, modes).
        data: an iterable of ``(inputs, targets)`` batches, e.g. a DataLoader. Tensors are moved to the
            device of the scored weights.
        batches: how many batches to use (>= 1); ``data`` must have that many.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``; default ``F.cross_entropy``.
        layers: None (every prunable layer), a dict from ``prunable_layers(model, ...)`` or weight names.
    """
    layers = scored_layers(model, layers, "SNIP")
    loss_fn = check_loss_fn(loss_fn)
    weights = weight_leaves(layers)
    tensors = {**weights, **buffer_copies(model)}
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    with torch.enable_grad():
        for i, (inputs, targets) in enumerate(take_batches(data, batches, "SNIP")):
            loss = batch_loss(model, tensors, inputs, targets, loss_fn, i)
            for name, g in zip(weights, gradients(loss, weights)):
                total[name] += g
    return {name: (total[name].double() * w.detach().double()).abs() for name, w in weights.items()}
