"""GDT's audio encoder: a ResNet-9 over log-mel spectrograms (N, 1, F_mel, T_mel) -> (N, 512).

ResNet-9 is torchvision's 2D ResNet with one BasicBlock per stage ([1, 1, 1, 1]) and a one-channel 7x7
input convolution, as in GDT's code (Patrick et al., appendix A.3.4: "ResNet-9 ... on log-mel
spectrograms"). Being a plain `torchvision.models.ResNet`, its exported weights load into
`resnet9(num_classes=...)` with only `fc` left to train. `fastvid.models.encoders.ARCHS["resnet9"]` builds it.
"""
from __future__ import annotations

from typing import Any

from torchvision.models.resnet import BasicBlock, ResNet


def resnet9(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """torchvision ResNet with one BasicBlock per stage (GDT's audio ResNet-9), random weights."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes, **kwargs)
