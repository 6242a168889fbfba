"""Which weights of a model can be pruned, and their current dense values.

Every scorer and mask builder names weights the way ``sparsify`` does: the parameter name of a layer's
weight (``"layer1.0.conv1.weight"``). The prunable layers are ``nn.Linear``, ``nn.Conv2d`` and our sparse
versions of them (a sparse layer's weight is its ``dense_weight()``, zeros at pruned positions), except the
training recipe's ghost-skip branches, which stay dense (sparsekern.recipe.ghost_skips).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..models.ghost_sites import GhostSites
from ..nn.conv import SparseConv2d
from ..nn.linear import SparseLinear

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)
_CONV_TYPES = (nn.Conv2d, SparseConv2d)
_LINEAR_TYPES = (nn.Linear, SparseLinear)


def prunable_layers(model: nn.Module, layers: str | Iterable[str] = "all", *, keep_first_conv_dense: bool = False,
                    keep_classifier_dense: bool = False) -> dict[str, nn.Module]:
    """Weight name → layer, in the model's module order, for the layers to prune.

    Args:
        model: any module.
        layers: ``"all"`` (every Linear and Conv2d, sparse or dense) or an iterable of weight names
            (``"fc.weight"``) to choose them yourself; every name must be a prunable layer's weight.
        keep_first_conv_dense: leave out the first Conv2d in module order (the stem, which sees the image).
        keep_classifier_dense: leave out the last Linear in module order (the classifier).

    "Module order" is the order the layers were registered (``model.named_modules()``), which is the order
    they run in for the usual models; for a model that defines its head before its body, name the layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    ghosts = _ghost_branch_modules(model)  # the recipe's ghost skips are dense by design: never pruned
    found = {weight_name(name): module for name, module in model.named_modules()
             if isinstance(module, PRUNABLE_TYPES) and id(module) not in ghosts}
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers: expected 'all' or a list of weight names like 'fc.weight', got {layers!r}")
        chosen = dict(found)
    else:
        names = list(layers)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"layers: expected weight names (str), got {type(name).__name__}")
            if name not in found:
                raise KeyError(f"layers: {name!r} is not the weight of a Linear or Conv2d layer of the model; "
                               f"its prunable weights are {preview_names(found)}")
        wanted = set(names)
        chosen = {name: found[name] for name in found if name in wanted}
    if keep_first_conv_dense:
        first_conv = next((name for name, module in found.items() if isinstance(module, _CONV_TYPES)), None)
        chosen.pop(first_conv, None)
    if keep_classifier_dense:
        last_linear = [name for name, module in found.items() if isinstance(module, _LINEAR_TYPES)]
        if last_linear:
            chosen.pop(last_linear[-1], None)
    return chosen


def resolve_layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    """``layers`` as scorers take it: None (every prunable layer), a dict from ``prunable_layers``, or names."""
    if layers is None:
        return prunable_layers(model)
    if isinstance(layers, dict):
        modules = {weight_name(name): module for name, module in model.named_modules()}
        for name, module in layers.items():
            if modules.get(name) is not module:
                raise KeyError(f"layers: {name!r} does not name that layer in this model; build the dict with "
                               f"prunable_layers(model)")
        return layers
    return prunable_layers(model, layers)


def weight_of(layer: nn.Module) -> torch.Tensor:
    """The layer's dense weight tensor (for a sparse layer: zeros at pruned positions), detached."""
    if isinstance(layer, (SparseLinear, SparseConv2d)):
        return layer.dense_weight().detach()
    return layer.weight.detach()


def current_masks(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The masks the layers hold now: a sparse layer's own mask, the ``weight_mask`` that
    ``torch.nn.utils.prune`` leaves on a pruned layer, and all-True for any other dense layer."""
    masks = {}
    for name, layer in layers.items():
        if isinstance(layer, (SparseLinear, SparseConv2d)):
            masks[name] = layer.mask.clone()
        elif isinstance(getattr(layer, "weight_mask", None), torch.Tensor):
            masks[name] = layer.weight_mask.detach() != 0
        else:
            masks[name] = torch.ones_like(layer.weight, dtype=torch.bool)
    return masks


def _ghost_branch_modules(model: nn.Module) -> set:
    branches = set()
    for block in model.modules():
        if isinstance(block, GhostSites):
            for site in block.ghost_sites:
                if block._modules[site] is not None:
                    branches.update(id(m) for m in block._modules[site].modules())
    return branches


def weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def preview_names(found: dict) -> str:
    names = list(found)
    return str(names[:8])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > 8 else "]")
