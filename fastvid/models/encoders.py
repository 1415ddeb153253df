"""Encoders: the papers' backbones with their classifier removed, exported in the backbone's own layout.

Each encoder wraps the unmodified torchvision model (or `CaffeNetBN`, laid out like torchvision's
AlexNet) minus its classification layers, so `Encoder.export()` is a state dict that loads into a fresh
`torchvision.models...(num_classes=...)` with only the classifier left to train (`load_backbone`).

| arch          | input          | representation                           | paper            |
|---------------|----------------|------------------------------------------|------------------|
| r3d_18        | (N, C, T, H, W)| 512, global average pool                 | videoSimCLR/MoCo |
| r2plus1d_18   | (N, C, T, H, W)| 512, global average pool                 | GDT              |
| s3d           | (N, C, T, H, W)| 1024, global average pool                | Vi2CLR           |
| resnet50      | (N, C, H, W)   | 2048, global average pool                | Vi2CLR (frames)  |
| vgg16_bn      | (N, C, H, W)   | 4096, fc6 after ReLU (+ dropout)         | Cross and Learn  |
| caffenet_bn   | (N, C, H, W)   | 4096, fc6 after ReLU (dropout before it) | Cross and Learn  |
| resnet9       | (N, 1, F, T)   | 512, global average pool (log-mel input) | GDT (audio)      |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torchvision.models as tvm
import torchvision.models.video as tvv
from torch import nn

from fastvid.models.audio import resnet9
from fastvid.models.caffenet import CaffeNetBN


@dataclass(frozen=True)
class Arch:
    """How to build one backbone and where its input layer and classifier are."""

    kind: Literal["video", "image"]
    out_dim: int
    build: Callable[..., nn.Module]  # builder(num_classes=...) with random weights
    first_conv: str  # dotted path of the input convolution (re-made for in_channels != 3)
    head: Literal["pool_fc", "s3d", "fc6"]  # which classifier layout `_strip_classifier` removes


ARCHS: dict[str, Arch] = {
    "r3d_18": Arch("video", 512, tvv.r3d_18, "stem.0", "pool_fc"),
    "r2plus1d_18": Arch("video", 512, tvv.r2plus1d_18, "stem.0", "pool_fc"),
    "s3d": Arch("video", 1024, tvv.s3d, "features.0.0.0", "s3d"),
    "resnet50": Arch("image", 2048, tvm.resnet50, "conv1", "pool_fc"),
    "vgg16_bn": Arch("image", 4096, tvm.vgg16_bn, "features.0", "fc6"),  # the authors' VGG_16_BN
    "caffenet_bn": Arch("image", 4096, CaffeNetBN, "features.0", "fc6"),
    "resnet9": Arch("image", 512, resnet9, "conv1", "pool_fc"),  # a spectrogram is a 2D input
}


def _arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown encoder arch {name!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def _set_in_channels(net: nn.Module, path: str, in_channels: int) -> None:
    """Replace the input convolution at `path` by one taking `in_channels` (flow/SOD stacks)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    old = getattr(parent, leaf)
    if old.in_channels == in_channels:
        return
    new = type(old)(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None)
    setattr(parent, leaf, new)


def build_backbone(arch: str, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
                   ) -> nn.Module:
    """The full classification model of `arch` with random weights and `in_channels` inputs. With
    `zero_init_residual` each residual block's last BN scale starts at 0, so the block starts as the identity
    (Goyal et al. 2017; SimCLR's ResNet); an arch without residual blocks ignores it."""
    spec = _arch(arch)
    net = spec.build(num_classes=num_classes)
    if zero_init_residual:
        _zero_init_residual(net)
    _set_in_channels(net, spec.first_conv, in_channels)
    return net


# torchvision's residual blocks. Its VideoResNet's own zero_init_residual (torchvision 0.29) reaches only
# Bottleneck, not the BasicBlock of r3d_18 and r2plus1d_18, so the blocks' last BN is found here for every kind.
RESIDUAL_BLOCKS = (tvm.resnet.BasicBlock, tvm.resnet.Bottleneck, tvv.resnet.BasicBlock, tvv.resnet.Bottleneck)


def _zero_init_residual(net: nn.Module) -> None:
    """Set the scale of each residual block's last BN (outside its shortcut) to 0, in place."""
    for block in net.modules():
        if isinstance(block, RESIDUAL_BLOCKS):
            last = [m for name, m in block.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and not name.startswith("downsample")][-1]
            nn.init.zeros_(last.weight)


def _strip_classifier(net: nn.Module, head: str) -> nn.Module:
    """Remove the classification layers in place; parameter names of what is left are unchanged."""
    if head == "pool_fc":  # VideoResNet / ResNet: avgpool -> flatten -> fc
        net.fc = nn.Identity()
    elif head == "s3d":  # S3D: a fixed (2, 7, 7) average pool then a 1x1x1 conv classifier
        net.avgpool = nn.AdaptiveAvgPool3d(1)  # same result at 16x224x224, and works on small clips
        net.classifier = nn.Identity()
    else:  # fc6: keep classifier[0:3] (VGG16-BN: fc6, ReLU, dropout; CaffeNet-BN: dropout, fc6, ReLU)
        net.classifier = net.classifier[:3]  # indices 0..2 keep their names
    return net


def _classifier_keys(net: nn.Module, head: str) -> tuple[str, ...]:
    """Parameter-name prefixes of what `_strip_classifier` removes from the full model `net`."""
    if head == "pool_fc":
        return ("fc.",)
    if head == "s3d":
        return ("classifier.",)
    return tuple(f"classifier.{i}." for i in range(3, len(net.classifier)))  # fc6: what follows classifier[:3]


class Encoder(nn.Module):
    """A backbone mapping a clip or frame to its representation: forward(x) -> (N, out_dim)."""

    def __init__(self, arch: str, in_channels: int = 3, zero_init_residual: bool = False) -> None:
        super().__init__()
        spec = _arch(arch)
        self.arch, self.kind, self.out_dim, self.in_channels = arch, spec.kind, spec.out_dim, in_channels
        self.net = _strip_classifier(build_backbone(arch, in_channels=in_channels,
                                                    zero_init_residual=zero_init_residual), spec.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        want = 5 if self.kind == "video" else 4
        if x.dim() != want or x.shape[1] != self.in_channels:
            layout = "(N, C, T, H, W)" if self.kind == "video" else "(N, C, H, W)"
            raise ValueError(f"{self.arch} expects {layout} with C={self.in_channels}, got {tuple(x.shape)}")
        return self.net(x)  # (N, out_dim)

    def export(self) -> dict[str, Any]:
        """{"arch", "in_channels", "state_dict"}: weights in the torchvision model's own key names."""
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"arch": self.arch, "in_channels": self.in_channels, "state_dict": state}


def load_backbone(export: dict[str, Any], num_classes: int) -> nn.Module:
    """A full `arch` classifier (torchvision model) initialised from `Encoder.export()`; only the
    classification layers keep their random initialisation."""
    net = build_backbone(export["arch"], num_classes=num_classes, in_channels=export["in_channels"])
    result = net.load_state_dict(export["state_dict"], strict=False)
    classifier = _classifier_keys(net, _arch(export["arch"]).head)
    if result.unexpected_keys or not all(k.startswith(classifier) for k in result.missing_keys):
        raise ValueError(f"{export['arch']}: exported weights do not match the backbone "
                         f"(missing {result.missing_keys}, unexpected {result.unexpected_keys})")
    return net
