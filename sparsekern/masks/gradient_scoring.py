"""What the gradient-based scorers (SNIP, GraSP, SynFlow) share: layer checks, batch reading, the loss, and
gradients taken on copies of the weights.

The model runs through ``torch.func.functional_call`` with copies of its scored weights (leaves that
require grad) and of its buffers, so its parameters, buffers, ``.grad`` and modes are never touched: a
train-mode BatchNorm updates the copies' running statistics only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..nn.conv import SparseConv2d
from ..nn.linear import SparseLinear
from .prunable import resolve_layers

def scored_layers(model: nn.Module, layers, method: str) -> dict:
    """``resolve_layers``, then check there is something to score and that every layer is dense."""
    layers = resolve_layers(model, layers)
    if not layers:
        raise ValueError(f"layers: {method} found no layer to score; the model has no nn.Linear / nn.Conv2d "
                         f"(or an empty selection was given)")
    for name, layer in layers.items():
        if isinstance(layer, (SparseLinear, SparseConv2d)):
            raise TypeError(f"layers: {name!r} is a {type(layer).__name__}; {method} scores a dense model: score "
                            f"it before sparsekern.sparsify, or convert the layer with .to_dense()")
    return layers


def weight_leaves(layers: dict) -> dict:
    """A detached copy of every scored weight that requires grad: gradients go to it, never to the model."""
    return {name: layer.weight.detach().clone().requires_grad_(True) for name, layer in layers.items()}


def buffer_copies(model: nn.Module) -> dict:
    """Copies of every buffer: a train-mode BatchNorm updates its running stats in the copies only."""
    return {name: b.clone() for name, b in model.named_buffers()}


def check_loss_fn(loss_fn):
    if loss_fn is None:
        return F.cross_entropy
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    return loss_fn


def take_batches(data, batches: int, method: str):
    """The first ``batches`` (inputs, targets) pairs of ``data``; the checks on the arguments run now."""
    if isinstance(batches, bool) or not isinstance(batches, int):
        raise TypeError(f"batches: expected an int >= 1, got {type(batches).__name__}")
    if batches < 1:
        raise ValueError(f"batches: expected an int >= 1, got {batches}")
    if data is None:
        raise ValueError(f"data: {method} needs batches of (inputs, targets), e.g. a DataLoader; got None")
    # A bare (inputs, targets) pair would be iterated as two "batches" (its rows): refuse it.
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        raise TypeError("data: expected an iterable of (inputs, targets) batches, got a single (inputs, targets) "
                        "pair; wrap it in a list: [(inputs, targets)]")
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"data: expected an iterable of (inputs, targets) batches, e.g. a DataLoader, got "
                        f"{type(data).__name__}") from None
    return _batches(iterator, batches, method)


def _batches(iterator, batches: int, method: str):
    count = 0
    for batch in iterator:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"data: batch {count} is not an (inputs, targets) pair, got "
                            f"{type(batch).__name__}{'' if not hasattr(batch, '__len__') else f' of {len(batch)}'}")
        yield batch[0], batch[1]
        count += 1
        if count == batches:
            return
    if count == 0:
        raise ValueError(f"data: {method} needs batches of (inputs, targets), e.g. a DataLoader; the iterable "
                         f"is empty")
    raise ValueError(f"data: batches={batches} asks for {batches} batches, but data gave only {count}")


def batch_loss(model: nn.Module, tensors: dict, inputs, targets, loss_fn, index: int,
               temperature: float = 1.0) -> torch.Tensor:
    """``loss_fn(model(inputs) / temperature, targets)`` with ``tensors`` in place of the model's own."""
    device = next(iter(tensors.values())).device
    inputs, targets = _to(inputs, device), _to(targets, device)
    outputs = functional_call(model, tensors, (inputs,))
    if temperature != 1.0:
        outputs = outputs / temperature
    loss = loss_fn(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn: expected a scalar loss tensor, got "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    if not loss.requires_grad:
        raise ValueError("loss_fn: the loss does not depend on the model's weights (it has no gradient)")
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ValueError(f"loss_fn: the loss of batch {index} is {value}; scores need a finite loss")
    return loss.reshape(())


def gradients(output: torch.Tensor, weights: dict, create_graph: bool = False) -> tuple:
    """d output / d weight for every weight; zeros for a weight the output does not use."""
    return torch.autograd.grad(output, list(weights.values()), create_graph=create_graph, allow_unused=True,
                               materialize_grads=True)


def _to(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x
