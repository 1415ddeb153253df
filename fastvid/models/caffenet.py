"""CaffeNet with batch normalisation (Cross and Learn, Sec. 4.1), as the authors define it
(github.com/nawidsayed/Cross-and-Learn, compvis/models/networks.py: `CaffeNet_BN`).

CaffeNet is Caffe's single-GPU AlexNet [Krizhevsky et al. 2012]: 96-256-384-384-256 convolutions with
the original two-group split in conv2, conv4 and conv5. Cross and Learn puts batch normalisation on every
convolution (replacing LRN, as OPN does), after its ReLU; conv1 is padded by 2, so a 224x224 crop gives a
6x6 pool5. The representation is fc6 after its ReLU, with dropout p = 0.5 on fc6's input (and on fc7's;
none before fc8). The first layer takes any channel count: 3 (RGB), 20 (10 stacked flow frames, u and v)
or 12 (4 RGB frame differences, "SOD").

The layout follows torchvision's AlexNet (`features`, `avgpool`, `classifier`, fc6/fc7/fc8 at classifier
indices 1/4/6), so the same code strips and reloads it as torchvision's VGG16-BN.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_relu_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                  groups: int = 1) -> list[nn.Module]:
    """conv -> ReLU -> BN, the authors' order; the conv keeps its bias, which acts before the ReLU."""
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups), nn.ReLU(inplace=True),
            nn.BatchNorm2d(c_out)]


class CaffeNetBN(nn.Module):
    """CaffeNet-BN classifier; `classifier[:3]` (dropout -> fc6 -> ReLU) is the representation."""

    MIN_SIZE = 67  # px: conv1 (11, stride 4) and three 3x3 stride-2 pools leave pool5 empty below it

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2)  # noqa: E731 - Caffe's overlapping pooling
        self.features = nn.Sequential(                                          # at 224x224 input:
            *_conv_relu_bn(in_channels, 96, 11, stride=4, padding=2), pool(),  # conv1 55x55, pool1 27x27
            *_conv_relu_bn(96, 256, 5, padding=2, groups=2), pool(),           # conv2 27x27, pool2 13x13
            *_conv_relu_bn(256, 384, 3, padding=1),                            # conv3 13x13
            *_conv_relu_bn(384, 384, 3, padding=1, groups=2),                  # conv4 13x13
            *_conv_relu_bn(384, 256, 3, padding=1, groups=2), pool(),          # conv5 13x13, pool5 6x6
        )
        # The identity at 224x224 (pool5 is 6x6 already); keeps fc6 at 9216 inputs for the small crops of
        # CPU smoke runs.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),  # fc6
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),         # fc7
            nn.Linear(4096, num_classes),                                              # fc8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))  # (N, num_classes)
