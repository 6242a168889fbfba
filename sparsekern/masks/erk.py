"""Erdős–Rényi-Kernel (ERK) layer densities: sparse random networks whose small layers stay denser.

A layer with weight shape (n_1, ..., n_k) gets density ε · (n_1 + ... + n_k) / (n_1 · ... · n_k) (for a
conv: (C_out + C_in + kH + kW) / (C_out · C_in · kH · kW); for a Linear: (out + in) / (out · in)), with one
ε for the whole model chosen so the kept weights add up to (1 − sparsity) of all weights. A layer whose
density would exceed 1 is kept dense, and ε is solved again over the others, until none exceeds 1.
"""
from __future__ import annotations

import math

from .builder import check_sparsity


def erk_densities(shapes: dict, sparsity: float, *, power: float = 1.0) -> dict:
    """Weight name → density in (0, 1] for the weight shapes in ``shapes`` at overall ``sparsity``.

    ``power`` scales the raw ERK factor as factor**power (1.0 is ERK; 0.0 gives uniform densities).
    """
    if not isinstance(shapes, dict) or not shapes:
        raise TypeError("shapes: expected a non-empty dict of weight name -> shape")
    sparsity = check_sparsity(sparsity)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if any(size == 0 for size in sizes.values()):
        raise ValueError(f"shapes: empty weights have no density: {[n for n, s in sizes.items() if s == 0]}")
    factors = {name: (sum(shape) / sizes[name]) ** power for name, shape in shapes.items()}
    target = (1.0 - sparsity) * sum(sizes.values())
    dense: set = set()
    while True:
        budget = target - sum(sizes[n] for n in dense)
        weighted = sum(factors[n] * sizes[n] for n in shapes if n not in dense)
        if weighted == 0.0:
            break
        epsilon = budget / weighted
        over = {n for n in shapes if n not in dense and epsilon * factors[n] > 1.0}
        if not over:
            break
        dense |= over
    return {name: 1.0 if name in dense else min(1.0, epsilon * factors[name]) for name in shapes}
