"""Masks in and out of the process: mask files, torch.nn.utils.prune, and the zeros of a pruned checkpoint.

A mask file is ``torch.save`` of one plain dict, so ``torch.load(path, weights_only=True)`` reads it anywhere,
with or without sparsekern::

    {"format": "sparsekern.masks", "version": 1,
     "masks": {weight name: bool CPU tensor, ...},      # in the order they were given
     "metadata": {...}}                                  # JSON-able, e.g. {"method": "snip", "sparsity": 0.9}

``save_masks`` writes it atomically (a temporary file in the same folder, fsync, then ``os.replace``), so a
crash mid-save never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from ..nn.conv import SparseConv2d
from ..nn.linear import SparseLinear
from ..validation import check_mask
from ..atomic_file import atomic_write, check_path
from .prunable import preview_names, prunable_layers, resolve_layers, weight_name, weight_of

FORMAT = "sparsekern.masks"
VERSION = 1  # bump when the layout of the dict changes; load_masks reads every version up to this one

_SPARSE_TYPES = (SparseLinear, SparseConv2d)


# ------------------------------------------------------------------------------------------- mask files
def save_masks(masks: dict, path, *, metadata: dict | None = None) -> None:
    """Write ``masks`` (weight name → bool or 0/1 tensor) to ``path`` as a mask file, atomically.

    The masks are stored as bool CPU tensors, in the dict's order. ``metadata`` is an optional dict of
    JSON-able values (say, how the masks were made); ``load_masks(path, with_metadata=True)`` returns it as
    JSON would (tuples come back as lists).
    Nothing is written unless every entry is valid; an existing file at ``path`` is replaced only once the
    new one is complete on disk.
    """
    entries = _check_masks(masks)
    payload = {"format": FORMAT, "version": VERSION, "masks": entries, "metadata": _check_metadata(metadata)}
    with atomic_write(path) as f:
        torch.save(payload, f)


def load_masks(path, *, map_location="cpu", with_metadata: bool = False):
    """The masks of a mask file written by ``save_masks``: weight name → bool tensor, in the saved order.

    Args:
        path: the file.
        map_location: the device to put the masks on (a str or torch.device; they are saved on CPU).
        with_metadata: return ``(masks, metadata)`` instead (metadata is ``{}`` if none was saved).

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a mask file.
    """
    path = check_path(path)
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(f"map_location: expected a device (str or torch.device), got {type(map_location).__name__}")
    device = torch.device(map_location)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no mask file at {path!r}")
    not_ours = f"path: {path!r} is not a mask file written by save_masks"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable (permissions, a folder): the OS error says why
    except pickle.UnpicklingError as e:  # weights_only refused an object: a model or optimizer, not masks
        raise ValueError(f"{not_ours} (torch.load with weights_only=True failed: the file holds objects other "
                         f"than tensors and plain values)") from e
    except Exception as e:  # not a torch file at all (a truncated or foreign file)
        raise ValueError(f"{not_ours} (torch.load failed: {type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = "; a plain dict of masks: torch.load it and save it with save_masks" if isinstance(payload, dict) else ""
        raise ValueError(f"{not_ours}: expected a dict with format {FORMAT!r}, got {_describe(payload)}{hint}")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
        raise ValueError(f"path: {path!r} has mask file version {version!r}; this sparsekern reads versions 1 to "
                         f"{VERSION} (a newer sparsekern wrote it?)")
    masks, metadata = payload.get("masks"), payload.get("metadata", {})
    if not isinstance(masks, dict) or not isinstance(metadata, dict):
        raise ValueError(f"{not_ours}: 'masks' and 'metadata' must be dicts, got {_describe(masks)} and "
                         f"{_describe(metadata)}")
    for name, mask in masks.items():
        if not isinstance(name, str) or not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"{not_ours}: entry {name!r} must be a bool tensor named by a str, got "
                             f"{_describe(mask)}")
    masks = {name: mask.to(device) for name, mask in masks.items()}
    return (masks, metadata) if with_metadata else masks


# ------------------------------------------------------------------------------- torch.nn.utils.prune
def masks_from_torch_prune(model: nn.Module) -> dict:
    """Weight name (``"<module>.weight"``) → bool mask, from the ``weight_mask`` buffers that
    ``torch.nn.utils.prune`` leaves on the modules it pruned, in module order.

    Every module with a ``weight_mask`` buffer counts (prune works on any module with a weight). Names are
    those of the unpruned model, although prune renames the parameter ``weight_orig``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    masks = {}
    for module_name, module in model.named_modules():
        mask = dict(module.named_buffers(recurse=False)).get("weight_mask")
        if mask is not None:
            where = f"{module_name}.weight_mask" if module_name else "weight_mask"
            masks[weight_name(module_name)] = check_mask(mask, where, shape=mask.shape).clone()
    if not masks:
        raise ValueError("model: no module has a 'weight_mask' buffer, so torch.nn.utils.prune has not pruned it "
                         "(or prune.remove made it permanent: then use masks_from_zeros(model))")
    return masks


def masks_to_torch_prune(model: nn.Module, masks: dict) -> nn.Module:
    """Apply ``masks`` to the model's dense Linear / Conv2d layers with
    ``torch.nn.utils.prune.custom_from_mask(module, "weight", mask)``; returns the model (pruned in place).

    A layer already pruned by torch keeps the intersection of its old and new masks (prune's own rule for
    iterative pruning). Every entry is checked before any layer is pruned.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of weight name -> bool mask, got {type(masks).__name__}")
    layers = prunable_layers(model)
    checked = []
    for name, mask in masks.items():
        layer = layers.get(name)
        if layer is None:
            raise KeyError(f"masks: {name!r} is not the weight of a Linear or Conv2d layer of the model; its "
                           f"prunable weights are {preview_names(layers)}")
        if isinstance(layer, _SPARSE_TYPES):
            raise TypeError(f"masks: {name!r} belongs to a {type(layer).__name__}, which has no dense weight "
                            f"Parameter for torch.nn.utils.prune; prune the dense model (or layer.to_dense())")
        weight = layer.weight
        checked.append((layer, check_mask(mask, f"masks[{name!r}]", shape=weight.shape).to(weight.device)))
    for layer, mask in checked:
        prune.custom_from_mask(layer, "weight", mask)
    return model


# ------------------------------------------------------------------------------------------ from zeros
def masks_from_zeros(model_or_state_dict, *, layers=None) -> dict:
    """Masks of a pruned model or checkpoint: ``w != 0`` per weight (i.e. ``|w| > 0``), where nothing better
    is recorded.

    Args:
        model_or_state_dict: a model (its prunable layers, or ``layers``: a list of weight names or a dict from
            ``prunable_layers``) or a state_dict (every weight key ``"<m>.weight"`` with ≥ 2 dims, so biases
            and norm scales are left out; with ``layers``, only those names).
        layers: which weights; None for all.

    Where a mask is stored it is used instead of the zeros (a kept weight may be exactly 0): a sparsekern
    sparse layer's ``mask``, and torch.nn.utils.prune's ``weight_mask`` (its state_dict holds
    ``"<m>.weight_orig"`` and ``"<m>.weight_mask"``, no ``"<m>.weight"``). Masks are on the weights' device.
    """
    if isinstance(model_or_state_dict, nn.Module):
        return {name: _layer_mask(layer) for name, layer in resolve_layers(model_or_state_dict, layers).items()}
    if isinstance(model_or_state_dict, Mapping):
        return _state_dict_masks(model_or_state_dict, layers)
    raise TypeError(f"model_or_state_dict: expected an nn.Module or a state_dict, got "
                    f"{type(model_or_state_dict).__name__}")


def _layer_mask(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, _SPARSE_TYPES):
        return layer.mask.clone()
    torch_mask = dict(layer.named_buffers(recurse=False)).get("weight_mask")
    if torch_mask is not None:
        return check_mask(torch_mask, "weight_mask", shape=torch_mask.shape).clone()
    return weight_of(layer) != 0


def _state_dict_masks(state_dict: Mapping, layers) -> dict:
    by_module: dict = {}  # module prefix → {attribute: tensor}, in the state_dict's order
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"model_or_state_dict: a state_dict maps str keys to tensors, but {key!r} is not a tensor "
                            f"({type(value).__name__}); a checkpoint? pass the model's state_dict inside it")
        module, _, attribute = key.rpartition(".")
        by_module.setdefault(module, {})[attribute] = value
    masks = {}
    for module, attrs in by_module.items():
        name = weight_name(module)
        prefix = f"{module}." if module else ""
        if "mask" in attrs and "weight_values" in attrs:  # a sparsekern sparse layer
            mask = check_mask(attrs["mask"], prefix + "mask", shape=attrs["mask"].shape)
            if int(mask.sum()) != attrs["weight_values"].numel():
                raise ValueError(f"model_or_state_dict: {prefix}mask keeps {int(mask.sum())} weights but "
                                 f"{prefix}weight_values holds {attrs['weight_values'].numel()}")
        elif "weight_mask" in attrs:  # torch.nn.utils.prune
            mask = check_mask(attrs["weight_mask"], prefix + "weight_mask", shape=attrs["weight_mask"].shape)
        elif "weight" in attrs:
            mask = attrs["weight"] != 0
        else:
            continue
        if mask.dim() >= 2:
            masks[name] = mask.clone()
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return masks
    if isinstance(layers, str):
        raise ValueError(f"layers: expected None, 'all' or a list of weight names like 'fc.weight', got {layers!r}")
    names = list(layers)
    for name in names:
        if name not in masks:
            raise KeyError(f"layers: {name!r} is not a weight (≥ 2-D) in the state_dict; its weights are "
                           f"{preview_names(masks)}")
    return {name: mask for name, mask in masks.items() if name in set(names)}


# -------------------------------------------------------------------------------------------- checks
def _check_masks(masks) -> dict:
    if not isinstance(masks, dict):
        raise TypeError(f"masks: expected a dict of weight name -> bool mask, got {type(masks).__name__}")
    if not masks:
        raise ValueError("masks: expected at least one mask, got an empty dict")
    entries = {}
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"masks: expected weight names (str) as keys, got {type(name).__name__} {name!r}")
        shape = mask.shape if isinstance(mask, torch.Tensor) else None
        mask = check_mask(mask, f"masks[{name!r}]", shape=shape)
        # A clone of its own: torch.save of a view would store the whole tensor it views.
        entries[name] = mask.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return entries


def _check_metadata(metadata) -> dict:
    """The metadata as JSON would give it back (tuples become lists), so what load returns equals it."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a dict of JSON-able values, got {type(metadata).__name__}")
    try:
        text = json.dumps(metadata, allow_nan=False)
    except TypeError as e:
        raise TypeError(f"metadata: expected JSON-able values (str, numbers, bool, None, lists, dicts): {e}") from e
    except ValueError as e:
        raise ValueError(f"metadata: expected JSON-able values, {e}") from e
    return json.loads(text)



def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:5]}"
    return f"a {type(value).__name__}"
