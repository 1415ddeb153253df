"""CaffeNet with batch normalisation (Cross and Learn, Sec. 4.1).

CaffeNet is Caffe's single-GPU AlexNet [Krizhevsky et al. 2012]: 96-256-384-384-256 convolutions with
the original two-group split in conv2, conv4 and conv5. Cross and Learn puts batch normalisation on every
convolution (replacing LRN, as OPN does) and reads its representation from fc6 after the ReLU, with
dropout p = 0.5. The first layer takes any channel count: 3 (RGB), 20 (10 stacked flow frames, u and v)
or 12 (4 RGB frame differences, "SOD").

The layout follows torchvision's AlexNet (`features`, `avgpool`, `classifier` with fc6/fc7/fc8 at
indices 0/3/6), so the same code strips and reloads it as torchvision's VGG16.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> list[nn.Module]:
    """conv -> BN -> ReLU; the conv has no bias since BN's shift replaces it."""
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CaffeNetBN(nn.Module):
    """CaffeNet-BN classifier; `classifier[:3]` (fc6 -> ReLU -> dropout) is the representation."""

    MIN_SIZE = 67  # px: conv1 (11, stride 4) and three 3x3 stride-2 pools leave pool5 empty below it

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2)  # noqa: E731 - Caffe's overlapping pooling
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 96, 11, stride=4), pool(),        # conv1
            *_conv_bn(96, 256, 5, padding=2, groups=2), pool(),      # conv2
            *_conv_bn(256, 384, 3, padding=1),                       # conv3
            *_conv_bn(384, 384, 3, padding=1, groups=2),             # conv4
            *_conv_bn(384, 256, 3, padding=1, groups=2), pool(),     # conv5, pool5
        )
        # 227x227 inputs give a 6x6 pool5; the adaptive pool keeps fc6 at 9216 inputs for 224x224 crops
        # (5x5) and for the small crops of CPU smoke runs.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc6
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),         # fc7
            nn.Linear(4096, num_classes),                                              # fc8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)
