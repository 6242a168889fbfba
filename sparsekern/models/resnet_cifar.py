"""ResNet-18/34/50 for 32×32 images: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

The ImageNet networks with the usual CIFAR stem: one 3×3 conv with 64 channels and stride 1 + BN + ReLU and
no max-pool, instead of the 7×7 stride-2 conv and the 3×3 max-pool, so a 32×32 input keeps its resolution
through the first stage and ends at 4×4. The four stages (64/128/256/512 channels, strides 1/2/2/2), the blocks
(BasicBlock for 18/34, Bottleneck with expansion 4 for 50), the 1×1 conv + BN projection shortcut where the
shape changes ("option B") and the global average pool + one Linear head are the paper's. ResNet-18 for 10 classes has 11,173,962 parameters.

Every 3×3 conv + BN of a block is a ghost-skip site (sparsekern.models.ghost_sites): both convs of a
BasicBlock (``ghost1``, ``ghost2``), the middle conv of a Bottleneck (``ghost2``). The stem is not in a block.
The network is fully convolutional up to the global pool, so it takes any input size (64×64 ends at 8×8).
"""
from __future__ import annotations

import torch
from torch import nn

from .ghost_sites import GhostSites


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut of a block: identity where the shape is kept, else a 1×1 conv + BN ("option B")."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(GhostSites):
    """Two 3×3 conv + BN, the shortcut added before the last ReLU. Both convs are ghost sites.

    ``shortcut`` replaces the default projection (the 6n+2 ResNets pass their parameter-free one).
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = projection(in_channels, channels, stride) if shortcut is None else shortcut
        self.relu2 = nn.ReLU()
        self.declare_ghost("ghost1", in_channels, channels, stride)
        self.declare_ghost("ghost2", channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.add_ghost("ghost1", x, self.bn1(self.conv1(x))))
        h = self.add_ghost("ghost2", h, self.bn2(self.conv2(h)))
        return self.relu2(h + self.shortcut(x))


class Bottleneck(GhostSites):
    """1×1 reduce, 3×3 (stride here, as in torchvision's "ResNet v1.5"), 1×1 expand ×4; the 3×3 is a ghost site."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()
        self.declare_ghost("ghost2", channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.add_ghost("ghost2", h, self.bn2(self.conv2(h))))
        h = self.bn3(self.conv3(h))
        return self.relu3(h + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-stem ResNet: ``block`` is BasicBlock or Bottleneck, ``depths`` the number of blocks per stage."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        width = 64
        for i, (channels, stride, depth) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), depths), start=1):
            blocks = []
            for j in range(depth):
                blocks.append(block(width, channels, stride if j == 0 else 1))
                width = channels * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        kaiming_conv_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def kaiming_conv_init_(model: nn.Module) -> None:
    """He et al.'s init for every conv (normal, fan_out, ReLU gain), as the ResNet papers use it."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
