"""Mask builders. For now: uniform random masks at an exact sparsity (the full pruning suite follows)."""
from .random import random_mask

__all__ = ["random_mask"]
