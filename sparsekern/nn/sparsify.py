"""sparsify(model, masks): swap the dense layers named in ``masks`` for their sparse versions, in place."""
from __future__ import annotations

from torch import nn

from ..validation import check_mask
from .conv import SparseConv2d
from .linear import SparseLinear

# What a mask may name: the dense layers sparsify replaces, and sparse layers (which take the new mask).
_SUPPORTED = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)


def sparsify(model: nn.Module, masks: dict, *, block_size=None, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` named in ``masks`` by a ``SparseLinear`` / ``SparseConv2d``
    holding its kept weights.

    Args:
        model: any module; it is modified in place and returned. If ``model`` itself is the named layer
            (``masks = {"weight": mask}``), it cannot be replaced in place: the new sparse layer is returned.
        masks: parameter name (as in ``model.named_parameters()``, e.g. ``"fc.weight"``) → bool mask of the
            weight's shape: ``(out_features, in_features)`` for a Linear, ``(C_out, C_in/groups, kH, kW)`` for a
            Conv2d. Layers not named stay dense. A layer that is already sparse gets the new mask
            (``set_mask``).
        block_size: passed to every new ``SparseLinear`` and ``SparseConv2d`` (see their docstrings: a Linear's
            blocks tile its weight, a Conv2d's are output x input channels at each kernel tap). Every named
            mask must then be made of such blocks.
        backend: passed to every new sparse layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of parameter name -> mask, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    # Every entry is checked, and every new layer built (which checks its mask), before anything is replaced:
    # a bad entry raises with the model untouched.
    replacements = []
    for name, mask in masks.items():
        module_name, _, param = name.rpartition(".")
        if param != "weight" or module_name not in modules:
            raise KeyError(f"masks: {name!r} is not the weight of a submodule of the model "
                           f"(expected names like 'fc.weight'; the model's Linear and Conv2d weights are "
                           f"{sorted(n + '.weight' for n, m in modules.items() if isinstance(m, _SUPPORTED))[:8]})")
        module = modules[module_name]
        if not isinstance(module, _SUPPORTED):
            raise TypeError(f"masks: {name!r} belongs to a {type(module).__name__}; sparsify supports nn.Linear "
                            f"and nn.Conv2d")
        try:
            if isinstance(module, (SparseLinear, SparseConv2d)):
                mask = check_mask(mask, "mask", shape=module.mask.shape, device=module.mask.device)
                module._layout_buffers(mask)  # refuses a mask the layer cannot take (e.g. not whole blocks)
                replacements.append((module_name, module, mask))
                continue
            cls = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
            sparse = cls.from_dense(module, mask, block_size=block_size, backend=backend)
        except (ValueError, TypeError) as error:
            raise type(error)(f"masks[{name!r}]: {error}") from None
        replacements.append((module_name, sparse, None))

    for module_name, sparse, new_mask in replacements:
        if new_mask is not None:  # an already sparse layer: it keeps its place and takes the new mask
            sparse.set_mask(new_mask)
        elif module_name == "":
            model = sparse
        else:
            parent_name, _, child = module_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, sparse)
    return model
