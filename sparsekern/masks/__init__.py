"""Masks for any pruning method: scores per weight, then masks at a target sparsity and granularity.

    from sparsekern import masks
    layers = masks.prunable_layers(model, keep_first_conv_dense=True, keep_classifier_dense=True)
    scores = masks.magnitude_scores(model, layers)                 # or snip / grasp / random scores
    m = masks.build_masks(scores, 0.95, scope="global")            # or granularity="block", block_size=16
    model = sparsekern.sparsify(model, m)
"""
from .builder import build_masks
from .erk import erk_densities
from .granularity import GRANULARITIES
from .lottery import LotteryResult, PruningRound, RoundContext, iterative_magnitude_pruning
from .magnitude import magnitude_scores
from .prunable import current_masks, prunable_layers
from .random import random_mask, random_scores

__all__ = ["build_masks", "erk_densities", "GRANULARITIES", "iterative_magnitude_pruning", "LotteryResult",
           "PruningRound", "RoundContext", "magnitude_scores", "current_masks", "prunable_layers",
           "random_mask", "random_scores"]
