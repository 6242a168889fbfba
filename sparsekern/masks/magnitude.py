"""Magnitude scores |w|: the score of lottery tickets (iterative magnitude pruning) and of one-shot pruning."""
from __future__ import annotations

from torch import nn

from .prunable import resolve_layers, weight_of


def magnitude_scores(model: nn.Module, layers=None) -> dict:
    """Weight name → |w| (float32 or the weight's dtype), for ``layers`` (default: every prunable layer).

    ``layers``: None, a dict from ``prunable_layers(model, ...)``, or a list of weight names. A sparse
    layer's pruned weights score 0.
    """
    return {name: weight_of(layer).abs().clone() for name, layer in resolve_layers(model, layers).items()}
