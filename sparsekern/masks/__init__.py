"""Masks for any pruning method: scores per weight, then masks at a target sparsity and granularity.

    from sparsekern import masks
    layers = masks.prunable_layers(model, keep_first_conv_dense=True, keep_classifier_dense=True)
    scores = masks.snip_scores(model, loader, batches=10, layers=layers)   # magnitude, grasp, random, ...
    m = masks.build_masks(scores, 0.95, scope="global")                    # or granularity="block", ...
    model = sparsekern.sparsify(model, m)

Scores have the weight's shape and higher means keep. SynFlow and iterative magnitude pruning (lottery
tickets) prune in rounds and return masks.
"""
from .builder import SCOPES, build_masks
from .erk import erk_densities
from .granularity import GRANULARITIES, REDUCTIONS
from .grasp import grasp_saliency, grasp_scores
from .io import load_masks, masks_from_torch_prune, masks_from_zeros, masks_to_torch_prune, save_masks
from .lottery import LotteryResult, PruningRound, RoundContext, iterative_magnitude_pruning
from .magnitude import magnitude_scores
from .methods import MASK_METHODS, compute_masks
from .prunable import current_masks, prunable_layers
from .random import random_mask, random_scores
from .report import MaskReport, mask_report
from .snip import snip_scores
from .synflow import synflow_masks, synflow_scores

__all__ = [
    "build_masks", "SCOPES", "GRANULARITIES", "REDUCTIONS", "prunable_layers", "current_masks",
    "magnitude_scores", "random_scores", "random_mask", "erk_densities", "snip_scores", "grasp_scores",
    "grasp_saliency", "synflow_scores", "synflow_masks", "iterative_magnitude_pruning", "LotteryResult",
    "PruningRound", "RoundContext", "save_masks", "load_masks", "masks_from_torch_prune", "masks_to_torch_prune",
    "masks_from_zeros", "mask_report", "MaskReport", "MASK_METHODS", "compute_masks",
]
