"""The 6n+2 CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), §4.2.

A 3×3 conv with 16 channels + BN + ReLU, three stages of n BasicBlocks with 16/32/64 channels and strides
1/2/2 (a 32×32 input ends at 8×8), global average pool and one Linear: 6n + 2 weighted layers. ResNet-20/32/56/
104 are n = 3/5/9/17.

Shortcuts are the paper's parameter-free "option A" (the one its CIFAR experiments use): where a stage starts,
the input is subsampled with the block's stride (every other pixel, the positions a stride-2 3×3 conv with
padding 1 centres on) and the new channels are zeros, appended after the existing ones. This keeps the
published sizes: ResNet-32 has 464,154 parameters for 10 classes (0.46M); a 1×1 projection ("option B") would
add 2,752. The blocks are resnet_cifar.BasicBlock, so both 3×3 convs of every block are ghost-skip sites.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet_cifar import BasicBlock, kaiming_conv_init_


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append ``extra_channels`` zero channels. No parameters."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # pads dim 1 (channels) at its end

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def shortcut_a(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ZeroPadShortcut(stride, out_channels - in_channels)


class ResNet6n2(nn.Module):
    """ResNet-(6n+2) for CIFAR: ``n`` BasicBlocks in each of the three stages."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        width = 16
        for i, (channels, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                blocks.append(BasicBlock(width, channels, s, shortcut=shortcut_a(width, channels, s)))
                width = channels
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        kaiming_conv_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet6n2:
    return ResNet6n2(3, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNet6n2:
    return ResNet6n2(5, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNet6n2:
    return ResNet6n2(9, num_classes, in_channels)


def resnet104(num_classes: int = 10, in_channels: int = 3) -> ResNet6n2:
    return ResNet6n2(17, num_classes, in_channels)
