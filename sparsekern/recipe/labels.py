"""Label smoothing as in the paper: the true class gets 1 − ε and every wrong class ε/(C − 1).

PyTorch's ``F.cross_entropy(label_smoothing=ε)`` spreads ε/C over all classes, the true one included (so
the true class gets 1 − ε + ε/C); the paper's form puts nothing extra on the true class. The loss is the
cross-entropy against that target distribution, averaged over the batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Mean over the batch of −Σ_c q_c log softmax(logits)_c, q = 1 − ε on the target, ε/(C − 1) elsewhere."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits: expected a (batch, classes) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    classes = logits.shape[1]
    if classes < 2:
        raise ValueError(f"logits: label smoothing needs at least 2 classes, got {classes}")
    if (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon)
            or not 0.0 <= epsilon < 1.0):
        raise ValueError(f"epsilon: expected a number in [0, 1), got {epsilon!r}")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64 or targets.shape != logits.shape[:1]:
        raise ValueError(f"targets: expected int64 class indices of shape ({logits.shape[0]},), got "
                         f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}"
                         f"{'' if not isinstance(targets, torch.Tensor) else f' {targets.dtype}'}")
    log_p = F.log_softmax(logits, dim=1)
    true = log_p.gather(1, targets[:, None]).squeeze(1)
    wrong = log_p.sum(1) - true
    return -((1.0 - epsilon) * true + (epsilon / (classes - 1)) * wrong).mean()


class LabelSmoothingLoss(nn.Module):
    """The loss as a module; ``epsilon`` may be changed between steps (the recipe's optional ε schedule)."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return label_smoothing_loss(logits, targets, self.epsilon)
