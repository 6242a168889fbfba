"""sparsify(model, masks): swap the dense layers named in ``masks`` for their sparse versions, in place."""
from __future__ import annotations

from torch import nn

from .linear import SparseLinear


def sparsify(model: nn.Module, masks: dict, *, block_size=None, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` named in ``masks`` by a ``SparseLinear`` holding its kept weights.

    Args:
        model: any module; it is modified in place and returned. If ``model`` itself is the named Linear
            (``masks = {"weight": mask}``), it cannot be replaced in place: the new SparseLinear is returned.
        masks: parameter name (as in ``model.named_parameters()``, e.g. ``"fc.weight"``) → bool mask of the
            weight's shape. Layers not named stay dense.
        block_size, backend: passed to every ``SparseLinear`` (see its docstring).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of parameter name -> mask, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module_name, _, param = name.rpartition(".")
        if param != "weight" or module_name not in modules:
            raise KeyError(f"masks: {name!r} is not the weight of a submodule of the model "
                           f"(expected names like 'fc.weight'; the model has "
                           f"{sorted(n + '.weight' for n, m in modules.items() if isinstance(m, nn.Linear))[:8]})")
        module = modules[module_name]
        if isinstance(module, SparseLinear):
            module.set_mask(mask)
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"masks: {name!r} belongs to a {type(module).__name__}; sparsify supports nn.Linear "
                            f"(nn.Conv2d support is planned)")
        sparse = SparseLinear.from_dense(module, mask, block_size=block_size, backend=backend)
        if module_name == "":
            model = sparse
            continue
        parent_name, _, child = module_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, sparse)
    return model
