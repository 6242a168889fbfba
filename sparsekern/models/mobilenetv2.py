"""MobileNetV2 for small images: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018).

A 3×3 stem conv with 32 channels, the paper's 17 inverted residual blocks (Table 2), a 1×1 conv to 1280
channels, global average pool, optional dropout (default 0) and one Linear. Each block expands with a 1×1 conv
+ BN + ReLU6 (t times the input channels; absent when t = 1), filters with a depthwise 3×3 conv + BN + ReLU6
and projects back with a linear 1×1 conv + BN; the input is added when the stride is 1 and the channels match.

CIFAR-specific: the stem conv and the first block of the c = 24 stage have stride 1 instead of 2, so the network
downsamples 8× instead of 32× and a 32×32 input ends at 4×4. Strides change no parameter: for 10 classes the
model has 2,236,682 parameters (2.24M), the ImageNet model's count with a 10-way classifier.

The depthwise 3×3 conv + BN of every block is a ghost-skip site, ``ghost2`` (17 per model).
"""
from __future__ import annotations

import torch
from torch import nn

from .ghost_sites import GhostSites

# Table 2 of the paper, (t, c, n, s): expansion, output channels, blocks, stride of the first block. The second
# row's stride is 1 for 32×32 inputs (the ImageNet model has 2).
CIFAR_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


class InvertedResidual(GhostSites):
    """Expand (1×1), depthwise 3×3 with the block's stride, linear project (1×1); conv2 + bn2 is ``ghost2``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self.conv1 = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.relu1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)  # no activation: the "linear bottleneck"
        self.use_residual = stride == 1 and in_channels == out_channels
        self.declare_ghost("ghost2", hidden, hidden, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x))) if self.has_expand else x
        h = self.relu2(self.add_ghost("ghost2", h, self.bn2(self.conv2(h))))
        h = self.bn3(self.conv3(h))
        return x + h if self.use_residual else h


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0,
                 config: list[tuple[int, int, int, int]] = CIFAR_CONFIG):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)  # stride 1: CIFAR
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU6()
        blocks, width = [], 32
        for t, c, n, s in config:
            for j in range(n):
                blocks.append(InvertedResidual(width, c, s if j == 0 else 1, t))
                width = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(width, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(self.blocks(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(self.dropout(x))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, dropout)
