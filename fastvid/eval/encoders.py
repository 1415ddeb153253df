"""Frozen encoders for evaluation: loaded from a checkpoint, or freshly initialised as the baseline.

Checkpoint format read here: the encoders file the trainer writes (`fastvid.checkpoint.save_encoders`: one
safetensors file, nothing unpickled when it is read), as the dict
    {"method": str, "config": dict,
     "encoders": {name: {"arch": str, "in_channels": int, "state_dict": dict}}}
Each encoder entry is `fastvid.models.Encoder.export()`: weights in the torchvision model's own key
names, classifier removed. Features of a clip are the encoder's pooled representation (no projection
head); an image encoder (CaffeNet, VGG16, ResNet-50) is run on every frame and its features averaged
over time, as frame-based methods are evaluated on video.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastvid.checkpoint import load_encoders
from fastvid.data.spec import RGB_MEAN, RGB_STD
from fastvid.errors import InputError
from fastvid.models import Encoder


def pick_encoder(ckpt: dict[str, Any], name: str | None, path: str | Path = "checkpoint") -> str:
    """`name` if given, else the first RGB (3-channel) encoder of the checkpoint."""
    encoders = ckpt["encoders"]
    if name is not None:
        if name not in encoders:
            raise InputError(f"{path}: no encoder {name!r}; it holds {', '.join(encoders)}")
        return name
    rgb = [n for n, e in encoders.items() if e["in_channels"] == 3]
    if not rgb:
        raise InputError(f"{path}: no 3-channel (RGB) encoder among {', '.join(encoders)}; pass --encoder")
    return rgb[0]


def load_encoder(path: str | Path, name: str | None = None) -> tuple[Encoder, dict[str, Any]]:
    """The named (or first RGB) encoder of a checkpoint in eval mode, and {"method", "encoder", "arch"}."""
    ckpt = load_encoders(path)  # checked there: a file, at least one encoder, each with arch and in_channels
    name = pick_encoder(ckpt, name, path)
    entry = ckpt["encoders"][name]
    encoder = Encoder(entry["arch"], in_channels=entry["in_channels"])
    try:
        encoder.net.load_state_dict(entry["state_dict"])
    except RuntimeError as err:
        raise InputError(f"{path}: encoder {name!r} does not load into {entry['arch']}: {err}") from None
    info = {"method": ckpt.get("method"), "encoder": name, "arch": entry["arch"]}
    return encoder.eval(), info


def random_encoder(like: Encoder, seed: int) -> Encoder:
    """A freshly initialised encoder of the same architecture: the baseline every report shows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(like.arch, in_channels=like.in_channels).eval()


def normalize_clips(clips: torch.Tensor) -> torch.Tensor:
    """uint8 clips (N, T, H, W, C) -> normalised float (N, C, T, H, W), as the loader delivers them."""
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255)  # (N, C, T, H, W)
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(RGB_STD).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def clip_features(encoder: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Pooled representations (N, D) of clips (N, C, T, H, W); image encoders average over frames."""
    if encoder.kind == "video":
        return encoder(clips)  # (N, D)
    n, c, t, h, w = clips.shape
    frames = clips.transpose(1, 2).reshape(n * t, c, h, w)  # (N*T, C, H, W)
    return encoder(frames).view(n, t, -1).mean(dim=1)  # (N, D)


@torch.no_grad()
def precise_bn(encoder: nn.Module, batches: Iterable[torch.Tensor],
               forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] = clip_features) -> nn.Module:
    """A copy of `encoder` in eval mode whose BN running statistics are each layer's mean over `batches` of the
    batch mean and variance (precise BN, as PySlowFast recomputes them after training); `encoder` is untouched.
    Why: eval-mode features are normalised by running statistics, and a short run leaves them near their
    initial (0, 1) where the BN momentum is small (torchvision's S3D: 0.001, 95% initial after 48 steps), while
    a random encoder's (0, 1) describe no data at all; giving the pretrained and the random encoder the same
    pass over the same clips compares their weights, not their statistics. No label is read."""
    encoder = copy.deepcopy(encoder)
    layers = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    encoder.train()
    seen = 0
    for x in batches:
        forward(encoder, x)
        seen += 1
    if not seen:
        raise ValueError("precise BN: no batch to compute statistics from")
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    return encoder.eval()


@torch.no_grad()
def embed(encoder: nn.Module, clips: torch.Tensor, batch_size: int = 16,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """Features (N, D) of uint8 clips (N, T, H, W, C), computed in batches in eval mode."""
    encoder.eval().to(device)
    out = [clip_features(encoder, normalize_clips(clips[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(clips), batch_size)]
    return torch.cat(out)
