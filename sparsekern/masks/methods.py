"""One entry point for every mask method by name, for the training CLI and sweeps:
``compute_masks("snip", model, 0.98, data=batches)``.

Defaults follow each method's paper: random masks prune every layer to the same sparsity (uniform) or to
ERK densities; magnitude, SNIP, GraSP and SynFlow rank all weights together (global scope).
"""
from __future__ import annotations

from torch import nn

from .builder import build_masks
from .erk import erk_densities
from .grasp import grasp_scores
from .magnitude import magnitude_scores
from .prunable import resolve_layers, weight_of
from .random import random_scores
from .snip import snip_scores
from .synflow import synflow_masks

MASK_METHODS = ("random", "erk", "magnitude", "snip", "grasp", "synflow")
_DEFAULT_SCOPE = {"random": "layer", "erk": "layer", "magnitude": "global", "snip": "global", "grasp": "global",
                  "synflow": "global"}
_NEEDS_DATA = ("snip", "grasp")


def compute_masks(method: str, model: nn.Module, sparsity: float, *, data=None, batches: int = 1,
                  input_shape=None, seed: int = 0, layers=None, scope: str | None = None,
                  granularity: str = "unstructured", block_size=None, n_m=None, loss_fn=None) -> dict:
    """Weight name → bool mask for ``model`` at ``sparsity`` by ``method`` (one of ``MASK_METHODS``).

    Args:
        data: batches of ``(inputs, targets)`` for SNIP and GraSP (the first ``batches`` are used).
        input_shape: one sample's shape ``(C, H, W)`` for SynFlow's all-ones input.
        seed: the random and ERK masks' seed.
        layers: which layers to prune (``prunable_layers``'s result or weight names); default all.
        scope: ``"global"`` or ``"layer"``; None takes the method's own (see the module docstring). ERK
            is per layer by definition.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"method: expected one of {MASK_METHODS}, got {method!r}")
    if method in _NEEDS_DATA and data is None:
        raise ValueError(f"data: the {method!r} masks score weights on batches of (inputs, targets); pass data=")
    if method == "synflow" and input_shape is None:
        raise ValueError("input_shape: the 'synflow' masks need one sample's shape, e.g. (3, 32, 32)")
    layers = resolve_layers(model, layers)
    scope = _DEFAULT_SCOPE[method] if scope is None else scope
    shape = dict(granularity=granularity, block_size=block_size, n_m=n_m)
    if method == "synflow":
        return synflow_masks(model, sparsity, tuple(input_shape), layers=layers, scope=scope, **shape)
    if method == "erk":
        shapes = {name: tuple(weight_of(layer).shape) for name, layer in layers.items()}
        per_layer = {name: 1.0 - density for name, density in erk_densities(shapes, sparsity).items()}
        return build_masks(random_scores(model, layers, seed=seed), per_layer, scope="layer", **shape)
    if method == "random":
        scores = random_scores(model, layers, seed=seed)
    elif method == "magnitude":
        scores = magnitude_scores(model, layers)
    elif method == "snip":
        scores = snip_scores(model, data, batches=batches, loss_fn=loss_fn, layers=layers)
    else:
        scores = grasp_scores(model, data, batches=batches, loss_fn=loss_fn, layers=layers)
    return build_masks(scores, sparsity, scope=scope, **shape)
