"""sparsekern: sparse training that skips pruned weights in the forward pass and both gradients.

Quick start::

    import sparsekern
    layer = sparsekern.SparseLinear(512, 256, mask=mask)          # mask: bool (256, 512)
    conv = sparsekern.SparseConv2d(64, 128, 3, padding=1, mask=m)  # m: bool (128, 64, 3, 3)
    model = sparsekern.sparsify(model, {"fc.weight": mask})        # swap layers of any model
"""
from . import _ops  # noqa: F401  (defines the sparsekern:: ops before the extension registers kernels)
from . import masks  # noqa: F401  (sparsekern.masks.random_mask without a separate import)
from . import models  # noqa: F401  (sparsekern.models.create)
from . import recipe  # noqa: F401  (sparsekern.recipe.ToST)
from ._extension import AVAILABLE as extension_available
from .layout import BSRLayout, CSRLayout
from .nn import SparseConv2d, SparseLinear, sparsify

__version__ = "0.1.0"

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "CSRLayout", "BSRLayout", "masks", "models", "recipe",
           "extension_available",
           "__version__"]
