"""Initialisations for sparse networks: sparsity-aware He init and GradInit.

``masked_fan_in_init_`` is He (Kaiming) normal initialisation (He et al., "Delving Deep into Rectifiers",
ICCV 2015) with the fan-in counted over the *kept* weights of each output unit, as in the sparsity-aware
initialisation of Evci et al. ("Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win",
AAAI 2022). For output unit ``o`` (a row of the weight viewed as ``(out, in · kH · kW)``, so a conv's
fan-in counts ``C_in/groups · kH · kW`` taps) with ``n_o`` kept weights::

    w_ok ~ N(0, gain² / n_o)  for every kept k,        bias_o = 0,

so ``E[y_o²] = n_o · (gain² / n_o) · E[x²] = gain² · E[x²]`` for every unit, whatever its sparsity, as dense
He init gives a dense layer (``gain² = 2`` for ReLU, with ``E[x²] = Var(pre-activation) / 2``). Pruned weights
have no storage and are never written; a unit with no kept weight is skipped.

``gradinit_`` is GradInit (Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable and
Efficient Training", NeurIPS 2021), in the form the official code of "Training Your Sparse Neural Network
Better with Any Mask" (Jaiswal et al., ICML 2022) uses for its "LRsI" initialisation: one learnable scale
``s_i > 0`` per trainable weight and bias tensor, ``θ = s ⊙ θ₀`` (a sparse layer's scale multiplies its
``weight_values``, so pruned weights stay zero), and per iteration, on two batches ``B₁``, ``B₂``::

    g = ∇_θ L(θ; B₁)                                  (kept in the graph: create_graph=True)
    objective = ‖g‖₂                                  if ‖g‖₂ > γ   (first bring the gradient norm under γ)
              = L(θ − η · sg[g / ‖g‖₂]; B₂)           otherwise     (the loss after one normalised SGD step)
    s ← Adam step on ∇_s objective,  then  s ← max(s, min_scale)

``sg`` (stop-gradient): the step's direction is a constant in the loss branch, as in the official GradInit
and ToST code, which take the step with the gradient detached; only ``θ = s ⊙ θ₀`` carries ``∂/∂s``
there. (Differentiating through the direction as well is a second-order method neither paper uses.)

and at the end every parameter is multiplied by its scale, in place. ``γ`` is ``gradient_norm_bound``,
``η`` is ``step_size``. As in the official GradInit code, normalisation layers' affine parameters (BatchNorm's
weight and bias) get scales too; the model runs in train mode, with BatchNorm on batch statistics.

Ghost branches: the training recipe's ghost skip connections (sparsekern.models.ghost_sites) are dense
modules living in attributes named ``ghost…``. Both functions skip, by default, every module whose qualified
name has a component starting with ``"ghost"`` (``is_ghost_name``); pass ``exclude=None`` to skip nothing, or
your own predicate on the qualified module name.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase  # BatchNorm*, SyncBatchNorm, InstanceNorm*: running stats

from ..masks.prunable import PRUNABLE_TYPES, current_masks, preview_names, weight_name
from ..nn.conv import SparseConv2d
from ..nn.linear import SparseLinear

_SPARSE_TYPES = (SparseLinear, SparseConv2d)
# Normalisation layers whose affine parameters GradInit scales (the official GradInit code scales every
# parameter, BatchNorm's weight and bias included).
_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)


def is_ghost_name(module_name: str) -> bool:
    """True if a component of the qualified module name starts with ``"ghost"`` (a ghost-skip branch)."""
    return any(part.startswith("ghost") for part in module_name.split("."))


# ------------------------------------------------------------------------------------- masked fan-in


def masked_fan_in_init_(model: nn.Module, *, layers=None, nonlinearity: str = "relu", param: float | None = None,
                        generator: torch.Generator | None = None,
                        exclude: Callable[[str], bool] | None = is_ghost_name) -> dict[str, dict]:
    """He-normal init over each output unit's kept fan-in, in place (see the module docstring).

    Args:
        model: any module.
        layers: None (every nn.Linear, nn.Conv2d, SparseLinear and SparseConv2d, minus those ``exclude``
            skips), a list of weight names (``"fc.weight"``; named layers are never excluded) or a dict from
            ``prunable_layers``. A dense layer keeps every weight, except one pruned with
            ``torch.nn.utils.prune``, whose ``weight_mask`` is honoured (its ``weight_orig`` is written).
        nonlinearity, param: passed to ``torch.nn.init.calculate_gain`` (``"relu"``: gain √2).
        generator: draw from this generator (on its device) instead of the global RNG.
        exclude: predicate on the qualified module name; default ``is_ghost_name``; None skips nothing.

    Returns:
        weight name → ``{"fan_in_min", "fan_in_mean", "fan_in_max", "skipped_units", "std_min", "std_max"}``
        (kept fan-in over all units, so ``fan_in_min`` is 0 where a unit has no kept weight; those units are
        counted in ``skipped_units``; std over the initialised units).
    """
    chosen = _choose_layers(model, layers, exclude, norm=False, kinds="Linear or Conv2d")
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity: expected a str such as 'relu', got {type(nonlinearity).__name__}")
    try:
        gain = nn.init.calculate_gain(nonlinearity, param)
    except ValueError as error:
        raise ValueError(f"nonlinearity, param: torch.nn.init.calculate_gain rejected ({nonlinearity!r}, "
                         f"{param!r}): {error}") from None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")

    masks = current_masks(chosen)
    stats = {}
    with torch.no_grad():
        for name, layer in chosen.items():
            mask2d = masks[name].reshape(masks[name].shape[0], -1)
            fan_in = mask2d.sum(1)
            # One std per kept weight: its unit's, repeated over the unit's kept weights (row-major order,
            # the order of weight_values and of boolean indexing).
            unit_std = gain / fan_in.clamp(min=1).to(torch.float64).sqrt()
            std = unit_std.repeat_interleave(fan_in)
            if isinstance(layer, _SPARSE_TYPES):
                target = layer.weight_values
            else:
                target = getattr(layer, "weight_orig", layer.weight)  # torch.nn.utils.prune keeps weight_orig
            values = _standard_normal(std.numel(), target, generator) * std.to(target.device, target.dtype)
            if isinstance(layer, _SPARSE_TYPES):
                target.copy_(values)
            else:  # boolean indexing walks the kept weights in row-major order, whatever the memory layout
                target[masks[name].to(target.device)] = values
            if layer.bias is not None:
                layer.bias.zero_()
            kept_units = fan_in > 0
            stats[name] = {
                "fan_in_min": int(fan_in.min()) if fan_in.numel() else 0,
                "fan_in_mean": float(fan_in.double().mean()) if fan_in.numel() else 0.0,
                "fan_in_max": int(fan_in.max()) if fan_in.numel() else 0,
                "skipped_units": int((~kept_units).sum()),
                "std_min": float(unit_std[kept_units].min()) if kept_units.any() else 0.0,
                "std_max": float(unit_std[kept_units].max()) if kept_units.any() else 0.0,
            }
    return stats


def _standard_normal(n: int, like: torch.Tensor, generator) -> torch.Tensor:
    """n draws from N(0, 1) in ``like``'s dtype and on its device (drawn on the generator's device)."""
    if generator is None:
        return torch.randn(n, dtype=like.dtype, device=like.device)
    return torch.randn(n, dtype=like.dtype, device=generator.device, generator=generator).to(like.device)


def _choose_layers(model, layers, exclude, *, norm: bool, kinds: str) -> dict[str, nn.Module]:
    """Weight name → layer: the prunable layers (and with ``norm`` the normalisation layers with affine
    parameters) of ``model`` in module order; ``layers`` None (minus those ``exclude`` skips), a list of
    weight names, or a dict of weight name → layer (``prunable_layers``' output)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    _check_exclude(exclude)
    # Straight from named_modules, not prunable_layers: what exclude=None means must not depend on which
    # layers prunable_layers hands to the pruning methods.
    found = {weight_name(name): module for name, module in model.named_modules()
             if isinstance(module, PRUNABLE_TYPES)
             or (norm and isinstance(module, _NORM_TYPES) and getattr(module, "weight", None) is not None)}
    if layers is None:
        return {name: layer for name, layer in found.items() if not _excluded(name, exclude)}
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise TypeError(f"layers: expected None or a list of weight names, got {type(layers).__name__}")
    named = layers.items() if isinstance(layers, dict) else ((name, None) for name in layers)
    chosen = {}
    for name, module in named:
        if not isinstance(name, str):
            raise TypeError(f"layers: expected weight names (str), got {type(name).__name__}")
        if name not in found or (module is not None and found[name] is not module):
            raise KeyError(f"layers: {name!r} is not the weight of a {kinds} layer of the model; its "
                           f"{kinds} weights are {preview_names(found)}")
        chosen[name] = found[name]
    return chosen


def _check_exclude(exclude) -> None:
    if exclude is not None and not callable(exclude):
        raise TypeError(f"exclude: expected a predicate on module names or None, got {type(exclude).__name__}")


def _excluded(weight: str, exclude) -> bool:
    """Whether ``exclude`` skips the module owning the weight named ``weight`` ("a.b.weight" -> "a.b")."""
    return exclude is not None and bool(exclude(weight.rpartition(".")[0]))


# -------------------------------------------------------------------------------------------- GradInit


def gradinit_(model: nn.Module, data: Iterable, *, iterations: int = 180, lr: float = 1e-2, step_size: float = 0.1,
              gradient_norm_bound: float = 1.0, min_scale: float = 0.01, loss_fn: Callable | None = None,
              layers=None, exclude: Callable[[str], bool] | None = is_ghost_name,
              progress: bool = False) -> dict:
    """Learn one positive scale per trainable weight and bias tensor with GradInit, then apply them in place.

    Args:
        model: any module; its parameters are read, not written, until the final in-place multiply.
        data: an iterable of ``(inputs, targets)`` batches (a list, a DataLoader, a generator); each iteration
            takes the next two. A re-iterable (list, DataLoader) is iterated again when it runs out (a
            DataLoader reshuffles); a one-shot iterator is replayed from the batches it gave. Tensors are moved
            to the device of the model's parameters.
        iterations: Adam steps on the scales.
        lr: Adam's learning rate for the scales.
        step_size: η, the length of the normalised SGD step in the objective.
        gradient_norm_bound: γ; while ‖g‖₂ > γ the objective is ‖g‖₂ itself.
        min_scale: every scale is clamped to ≥ min_scale after each step (weights and biases alike).
        loss_fn: ``loss_fn(model(inputs), targets)`` → scalar; default ``F.cross_entropy``.
        layers: None (every prunable layer and every normalisation layer with affine parameters, BatchNorm,
            GroupNorm, LayerNorm, InstanceNorm, minus those ``exclude`` skips), a list of their weight names
            (``"fc.weight"``, ``"bn1.weight"``; named layers are never excluded) or a dict of them → layer.
            The chosen layers' trainable parameters (``weight_values`` / ``weight``, ``bias``) get scales;
            every other parameter is held fixed (scale 1; it takes no part in the step of size η).
        exclude: predicate on the qualified module name; default ``is_ghost_name``; None skips nothing.
        progress: show a tqdm progress bar.

    The model runs in train mode, as training would (BatchNorm normalises with batch statistics; dropout
    is active). Running statistics update on copies, so the model's buffers and every module's train/eval
    flag are what they were before the call.

    Returns:
        ``{"scales": parameter name → final scale, "objective": per-iteration objective,
        "grad_norm": per-iteration ‖g‖₂ on the first batch}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if data is None or not isinstance(data, Iterable):
        raise TypeError(f"data: expected an iterable of (inputs, targets) batches, got {type(data).__name__}")
    if not isinstance(iterations, int) or isinstance(iterations, bool):
        raise TypeError(f"iterations: expected an int, got {type(iterations).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations: expected at least 1, got {iterations}")
    for name, value in (("lr", lr), ("step_size", step_size), ("gradient_norm_bound", gradient_norm_bound)):
        _check_positive(name, value)
    _check_real("min_scale", min_scale)
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale: expected a number in (0, 1], got {min_scale!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (outputs, targets) -> loss or None, got "
                        f"{type(loss_fn).__name__}")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool, got {type(progress).__name__}")

    base = _scaled_parameters(model, layers, exclude)  # name → θ₀ (the model's own tensors, detached)
    if not base:
        raise ValueError("layers: no trainable weight or bias to scale (every chosen layer is frozen or has "
                         "no parameters)")
    scales = {name: torch.ones((), dtype=p.dtype, device=p.device, requires_grad=True) for name, p in base.items()}
    optimizer = torch.optim.Adam(list(scales.values()), lr=lr)
    device = next(iter(base.values())).device
    # BatchNorm's running stats update in place during the forward; copies take those updates.
    stats = {name: b.detach().clone() for module_name, module in model.named_modules()
             if isinstance(module, _NormBase) for name, b in _named_buffers(module_name, module)}
    batches = _cycle(data)
    flags = {module: module.training for module in model.modules()}
    history, grad_norms = [], []
    steps = range(iterations)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="GradInit", unit="it")
    try:
        model.train()
        for _ in steps:
            x1, y1 = _batch(next(batches), device)
            x2, y2 = _batch(next(batches), device)
            theta = {name: scales[name] * p for name, p in base.items()}
            loss = loss_fn(functional_call(model, (theta, stats), (x1,)), y1)
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(theta.values(), grads)]
            grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            if grad_norm.item() > gradient_norm_bound:
                objective = grad_norm
            else:
                # θ − η sg[g/‖g‖]: the direction detached, as the official code steps (the module docstring);
                # a zero gradient takes no step rather than dividing by zero.
                denominator = grad_norm.clamp(min=torch.finfo(grad_norm.dtype).tiny)
                stepped = {name: t - step_size * (g / denominator).detach()
                           for (name, t), g in zip(theta.items(), grads)}
                objective = loss_fn(functional_call(model, (stepped, stats), (x2,)), y2)
            # autograd.grad, not backward(): only the scales get gradients, never the model's parameters.
            scale_grads = torch.autograd.grad(objective, list(scales.values()), allow_unused=True)
            optimizer.zero_grad(set_to_none=True)
            for scale, grad in zip(scales.values(), scale_grads):
                scale.grad = torch.zeros_like(scale) if grad is None else grad
            optimizer.step()
            with torch.no_grad():
                for scale in scales.values():
                    scale.clamp_(min=min_scale)
            history.append(objective.item())
            grad_norms.append(grad_norm.item())
            if progress:
                steps.set_postfix(objective=f"{history[-1]:.4g}", grad_norm=f"{grad_norms[-1]:.4g}")
    finally:
        for module, training in flags.items():
            module.training = training
        if progress:
            steps.close()

    with torch.no_grad():
        for name, p in base.items():
            p.mul_(scales[name])
    return {"scales": {name: s.detach().item() for name, s in scales.items()}, "objective": history,
            "grad_norm": grad_norms}


def _scaled_parameters(model, layers, exclude) -> dict[str, torch.Tensor]:
    """Parameter name → the parameter's detached tensor (shares storage), for the layers GradInit scales."""
    chosen = _choose_layers(model, layers, exclude, norm=True, kinds="Linear, Conv2d or normalisation")
    params = {}
    for weight, module in chosen.items():
        prefix = weight[:-len("weight")]  # "a.b." (or "" for the model itself)
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                params[prefix + name] = p.detach()
    return params


def _named_buffers(module_name: str, module: nn.Module):
    for name, b in module.named_buffers(recurse=False):
        if b is not None:
            yield (f"{module_name}.{name}" if module_name else name), b


def _cycle(data) -> Iterator:
    """The batches of ``data``, over and over (see gradinit_'s ``data``)."""
    if isinstance(data, Iterator):  # one shot: remember what it gave, to replay
        seen = []
        for batch in data:
            seen.append(batch)
            yield batch
        data = seen
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("data: expected at least one (inputs, targets) batch, got an empty iterable")


def _batch(batch, device):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"data: expected (inputs, targets) pairs, got a {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return tuple(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)


def _check_real(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def _check_positive(name: str, value) -> None:
    _check_real(name, value)
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
