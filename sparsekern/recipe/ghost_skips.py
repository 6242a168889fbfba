"""Ghost skip connections: early in training, a dense 1×1 conv + BatchNorm branch beside each 3×3 conv
of a block, ``bn(conv3x3(x)) + α · bn_g(conv1x1_g(x))`` (Jaiswal et al., ICML 2022).

The 1×1 weights start at the constant 1e-4, are never pruned (they are dense ``nn.Conv2d`` modules, and
``sparsekern.masks.prunable_layers`` leaves ghost branches out) and α fades with a schedule; once α is 0
``remove_ghost_skips`` detaches the branches, so they cost nothing afterwards and are not in the final
``state_dict``. Where they go is declared by the blocks themselves (``sparsekern.models.ghost_sites``):
the residual blocks of the ResNets, every 3×3 conv of VGG16, the depthwise conv of each MobileNetV2 block.
"""
from __future__ import annotations

from torch import nn

from ..models.ghost_sites import GhostSites

GHOST_INIT = 1e-4


def _branch(site, like: nn.Module) -> nn.Sequential:
    conv = nn.Conv2d(site.in_channels, site.out_channels, 1, stride=site.stride, bias=False)
    nn.init.constant_(conv.weight, GHOST_INIT)
    branch = nn.Sequential(conv, nn.BatchNorm2d(site.out_channels))
    reference = next(like.parameters(), None)
    if reference is not None:
        branch = branch.to(device=reference.device, dtype=reference.dtype)
    return branch.train(like.training)


def add_ghost_skips(model: nn.Module, alpha: float = 1.0) -> int:
    """Attach a branch at every free ghost site of the model's blocks; returns how many were attached."""
    attached = 0
    for block in model.modules():
        if isinstance(block, GhostSites):
            for name, site in block.ghost_sites.items():
                if block._modules[name] is None:
                    setattr(block, name, _branch(site, block))
                    attached += 1
            block.ghost_alpha = float(alpha)
    return attached


def set_ghost_skip_alpha(model: nn.Module, alpha: float) -> None:
    for block in model.modules():
        if isinstance(block, GhostSites):
            block.ghost_alpha = float(alpha)


def remove_ghost_skips(model: nn.Module) -> int:
    """Detach every ghost branch (their parameters leave the model: rebuild the optimizer); returns how many."""
    removed = 0
    for block in model.modules():
        if isinstance(block, GhostSites):
            for name in block.ghost_sites:
                if block._modules[name] is not None:
                    setattr(block, name, None)
                    removed += 1
            block.ghost_alpha = 0.0
    return removed


def ghost_branches(model: nn.Module) -> list[nn.Module]:
    """The attached branches (for excluding them from pruning and initialisation)."""
    return [block._modules[name] for block in model.modules() if isinstance(block, GhostSites)
            for name in block.ghost_sites if block._modules[name] is not None]


def count_ghost_skips(model: nn.Module) -> int:
    return len(ghost_branches(model))
