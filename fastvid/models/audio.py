"""GDT's audio encoder: a ResNet-9 over log-mel spectrograms (N, 1, F_mel, T_mel) -> (N, 512).

ResNet-9 is torchvision's 2D ResNet with one BasicBlock per stage ([1, 1, 1, 1]) and a one-channel 7x7
input convolution, as in GDT's code (Patrick et al., appendix A.3.4: "ResNet-9 ... on log-mel
spectrograms"). Being a plain `torchvision.models.ResNet`, its exported weights load into
`resnet9(num_classes=...)` with only `fc` left to train.

`ARCHS["resnet9"]` is registered here so that `Encoder("resnet9", in_channels=1)` and `load_backbone` build
it like every other backbone.
"""
from __future__ import annotations

from typing import Any

from torchvision.models.resnet import BasicBlock, ResNet

from fastvid.models.encoders import ARCHS, Arch


def resnet9(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """torchvision ResNet with one BasicBlock per stage (GDT's audio ResNet-9), random weights."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes, **kwargs)


# "image" kind: a spectrogram is a one-channel 2D input (N, 1, F_mel, T_mel).
ARCHS.setdefault("resnet9", Arch("image", 512, resnet9, "conv1", "pool_fc"))
