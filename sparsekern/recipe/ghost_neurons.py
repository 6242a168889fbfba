"""Ghost soft neurons: ReLU blended with a smooth activation early in training,
``act(x) = (1 − α) · relu(x) + α · soft(x)``, α from a schedule (Jaiswal et al., ICML 2022).

``soft`` is one of Swish ``x·σ(x)``, parametric Swish ``x·σ(βx)`` (β = 2 in the official code; the default)
and Mish ``x·tanh(softplus(x))``. With α = 0 the module returns ``relu(x)`` itself (not a blend that
rounds), so once the ghosts have faded the network computes exactly what a ReLU network computes; the
recipe then swaps the modules back for plain ``nn.ReLU`` (``remove_ghost_neurons``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SOFT_FUNCTIONS = ("swish", "pswish", "mish")


def soft_activation(x: torch.Tensor, soft: str, beta: float) -> torch.Tensor:
    if soft == "swish":
        return x * torch.sigmoid(x)
    if soft == "pswish":
        return x * torch.sigmoid(beta * x)
    return F.mish(x)


class GhostActivation(nn.Module):
    """``(1 − alpha) · hard(x) + alpha · soft(x)`` with hard = ReLU (or ReLU6 for a replaced ReLU6)."""

    def __init__(self, soft: str = "pswish", beta: float = 2.0, alpha: float = 1.0, hard: str = "relu",
                 inplace: bool = False):
        super().__init__()
        if soft not in SOFT_FUNCTIONS:
            raise ValueError(f"soft: expected one of {SOFT_FUNCTIONS}, got {soft!r}")
        if hard not in ("relu", "relu6"):
            raise ValueError(f"hard: expected 'relu' or 'relu6', got {hard!r}")
        self.soft, self.beta, self.hard, self.inplace = soft, float(beta), hard, inplace
        self.alpha = float(alpha)  # set by the recipe each step; a plain float, not state

    def _hard(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x) if self.hard == "relu6" else F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:
            return self._hard(x)
        soft = soft_activation(x, self.soft, self.beta)
        if self.alpha == 1.0:
            return soft
        return (1.0 - self.alpha) * self._hard(x) + self.alpha * soft

    def plain(self) -> nn.Module:
        """The activation this ghost stands in for."""
        return nn.ReLU6(inplace=self.inplace) if self.hard == "relu6" else nn.ReLU(inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"soft={self.soft}, beta={self.beta}, alpha={self.alpha:.4g}, hard={self.hard}"


def add_ghost_neurons(model: nn.Module, *, soft: str = "pswish", beta: float = 2.0, alpha: float = 1.0,
                      include_relu6: bool = True) -> int:
    """Replace every ``nn.ReLU`` (and ``nn.ReLU6`` unless ``include_relu6=False``) module in place by a
    GhostActivation; returns how many. Activations called as functions (``F.relu``) are not modules and
    stay as they are: the models in ``sparsekern.models`` use modules throughout."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU or (include_relu6 and type(child) is nn.ReLU6):
                hard = "relu6" if isinstance(child, nn.ReLU6) else "relu"
                setattr(parent, name, GhostActivation(soft, beta, alpha, hard, inplace=child.inplace))
                replaced += 1
    if isinstance(model, (nn.ReLU, nn.ReLU6)):
        raise TypeError("model: a bare activation cannot be replaced in place; wrap it in a module")
    return replaced


def set_ghost_neuron_alpha(model: nn.Module, alpha: float) -> None:
    for module in model.modules():
        if isinstance(module, GhostActivation):
            module.alpha = float(alpha)


def remove_ghost_neurons(model: nn.Module) -> int:
    """Swap every GhostActivation back for the plain activation (call once α is 0); returns how many."""
    removed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GhostActivation):
                setattr(parent, name, child.plain())
                removed += 1
    return removed
