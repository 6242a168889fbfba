"""VGG16 with BatchNorm for small images: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
Image Recognition" (ICLR 2015), configuration D, with BatchNorm after every conv (Ioffe & Szegedy 2015).

Thirteen 3×3 convs (padding 1) + BN + ReLU in five stages of 64, 128, 256, 512, 512 channels, each stage ending
in a 2×2 max-pool. CIFAR-specific (the usual CIFAR variant): the three 4096-wide Linear layers are replaced by
ONE Linear 512 → classes, reading the 1×1×512 map a 32×32 input leaves. For 10 classes that is
14,728,266 parameters (14.73M).

The convs keep their bias, as in the original VGG (and torchvision's vgg16_bn): before BatchNorm the bias is
redundant (BN subtracts the mean), but the published 14.73M counts it, so it is kept (4,224 parameters).

Input sizes other than 32: a global average pool always sits before the classifier, so a 64×64 input
(TinyImageNet, which ends at 2×2) still feeds 512 numbers to it; at 32×32 the pool sees a 1×1 map and changes
nothing. For small inputs (the 8×8 or 16×16 digits) the max-pools that would shrink a 1×1 map are replaced
by ``nn.Identity``: same parameters, and the same ``state_dict`` keys as the 32×32 model.

Each conv + BN is its own block (``ConvBNReLU``) with one ghost-skip site, ``ghost``.
"""
from __future__ import annotations

import torch
from torch import nn

from .ghost_sites import GhostSites

# Configuration D: output channels of each 3×3 conv, "M" a 2×2 max-pool.
VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class ConvBNReLU(GhostSites):
    """3×3 conv (padding 1) + BN + ReLU; the conv + BN is the ghost site ``ghost``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)  # bias kept: see the module docstring
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.declare_ghost("ghost", in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add_ghost("ghost", x, self.bn(self.conv(x))))


class VGG(nn.Module):
    """VGG with BN from a configuration list; ``input_size`` only decides which max-pools are kept."""

    def __init__(self, config: list[int | str], num_classes: int = 10, input_size: int = 32, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in config:
            if item == "M" and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            elif item == "M":  # a 1×1 map cannot be pooled: skip it (see the module docstring)
                layers.append(nn.Identity())
            else:
                layers.append(ConvBNReLU(channels, item))
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 10, input_size: int = 32, in_channels: int = 3) -> VGG:
    return VGG(VGG16_CONFIG, num_classes, input_size, in_channels)
