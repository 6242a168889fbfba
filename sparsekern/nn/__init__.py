"""Drop-in sparse modules and the function that swaps them into a model."""
from .backend import BACKENDS
from .conv import SparseConv2d
from .linear import SparseLinear
from .sparsify import sparsify

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "BACKENDS"]
