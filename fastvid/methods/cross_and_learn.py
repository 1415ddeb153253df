"""Cross and Learn (Sayed, Brattoli, Ommer, Heidelberg University; shared/papers/cross_and_learn.md).

Notation (paper -> code):
  x, y            the two modalities of a pair: RGB frame x, and y = a stack of 10 flow frames (u, v: 20
                  channels) or of 4 RGB frame differences ("SOD", 12 channels) around it
                  -> loader views "rgb" (N, 3, H, W) and "flow" (N, 2, 10, H, W) / "sod" (N, 3, 5, H, W)
  f, g            two CaffeNet-BN streams (or VGG16-BN), same architecture but the first layer, no shared
                  weights; the representation is fc6 after ReLU   -> self.f, self.g
  (x_i, y_i), (x_j, y_j)   a tuple of two pairs from two different videos; a batch of 2B videos gives
                  B tuples: video b pairs with video b + B
  L_cross, L_div, L = L_cross + L_div (eqs. 1-4), cosine distance d with eps   -> fastvid.losses
Ablations (Table 4): `use_cross: false` is "only L_div"; `objective: concat` is the "Concat" model: fc6 of
both streams concatenated (8192) -> fc7 -> fc8 binary classifier of whether x and y come from the same pair,
trained with cross-entropy on (x_i, y_i), (x_j, y_j) (same) and (x_i, y_j), (x_j, y_i) (different).
`acc` is the pretext top-1: how often f(x) is closer (cosine) to its own pair's g(y) than to every other g(y)
of the batch (chance 1 / 2B). Within a tuple alone it would be 1 of 2, which two pieces of one video, as a
small validation set holds, leave at chance. The Concat model's `acc`: how often its classifier is right.
Time-reversed flow stacks (the loader's random temporal flip, sec. 4.1 "random temporal flips") reverse the
frame order and negate every field (u, v), as the authors' code does (`rand_timeflip`: `s = -s`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastvid.config import ConfigError
from fastvid.data import ViewSpec
from fastvid.data.views import CrossAndLearnViews, cross_and_learn_views
from fastvid.kernels.frame_diff import frame_diff
from fastvid.losses import cross_and_learn_loss, top1_accuracy
from fastvid.methods.base import Method, require
from fastvid.models import Encoder
from fastvid.models.caffenet import CaffeNetBN


@dataclass
class CrossAndLearnConfig:
    arch: Literal["caffenet_bn", "vgg16_bn"] = "caffenet_bn"
    objective: Literal["cross_and_learn", "concat"] = "cross_and_learn"
    use_cross: bool = True  # false: the "only L_div" ablation
    use_div: bool = True
    eps: float = 1e-5  # inside the norms' square root; the paper recommends >= 1e-5
    # second modality y ("flow" or "sod"), stack lengths, 224 crops of frames rescaled to height 256,
    # flow-magnitude-weighted pair sampling
    views: CrossAndLearnViews = field(default_factory=CrossAndLearnViews)

    def __post_init__(self) -> None:
        require(self.eps > 0, "eps", "must be > 0", self.eps)
        require(self.objective == "concat" or self.use_cross or self.use_div, "use_div",
                "use_cross and use_div both off leave no loss", self.use_div)
        if self.arch == "caffenet_bn" and self.views.size < CaffeNetBN.MIN_SIZE:
            raise ConfigError(f"model.views.size: CaffeNet needs crops of at least "
                              f"{CaffeNetBN.MIN_SIZE} px, got {self.views.size}")


class CrossAndLearn(Method):
    Config = CrossAndLearnConfig

    def __init__(self, cfg: CrossAndLearnConfig) -> None:
        super().__init__(cfg)
        v = cfg.views
        y_channels = 2 * v.flow_frames if v.second == "flow" else 3 * (v.sod_frames - 1)  # 20 or 12
        self.f = Encoder(cfg.arch, in_channels=3)  # RGB-network
        self.g = Encoder(cfg.arch, in_channels=y_channels)  # OF- or SOD-network
        if cfg.objective == "concat":  # a modified CaffeNet fc7, fc8 on the concatenated fc6 (8192)
            width = self.f.out_dim
            # the authors' `Concat` classifier: dropout on fc7's input, none before fc8, as in CaffeNet-BN
            self.pair_classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(2 * width, width), nn.ReLU(inplace=True), nn.Linear(width, 2))

    def views(self) -> list[ViewSpec]:
        return cross_and_learn_views(self.cfg.views)

    def encoders(self) -> dict[str, Encoder]:
        return {"rgb": self.f, self.cfg.views.second: self.g}

    def second_modality(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y as g's input: (N, C * T, H, W), frames stacked along channels in time order."""
        if self.cfg.views.second == "flow":
            y = batch["flow"]  # (N, 2, T, H, W): u, v of T flow frames
        else:
            frames = batch["sod"]  # (N, 3, T, H, W), normalised by the loader
            y = frame_diff(frames, dtype=frames.dtype)  # (N, 3, T - 1, H, W)
        n, c, t, h, w = y.shape
        return y.transpose(1, 2).reshape(n, t * c, h, w)  # (N, T * C, H, W): [u1, v1, u2, v2, ...]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["rgb"]  # (2B, 3, H, W)
        if x.shape[0] % 2:
            raise ValueError(f"cross_and_learn needs an even batch (B tuples of 2 pairs), got {x.shape[0]}")
        fx, gy = self.f(x), self.g(self.second_modality(batch))  # (2B, D) each
        b = x.shape[0] // 2
        fx, gy = fx.view(2, b, -1).transpose(0, 1), gy.view(2, b, -1).transpose(0, 1)  # (B, 2, D): i, j
        if self.cfg.objective == "concat":
            return self.concat_loss(fx, gy)
        out = cross_and_learn_loss(fx, gy, use_cross=self.cfg.use_cross, use_div=self.cfg.use_div,
                                   eps=self.cfg.eps)
        terms = {"loss": out["loss"], "cross": out["cross"].detach(), "div": out["div"].detach()}
        if self.want_metrics:
            ids = torch.arange(2 * b, device=x.device)  # (2B,) pair n of the flattened tuples is row n
            terms["acc"] = top1_accuracy(fx.flatten(0, 1), gy.flatten(0, 1), ids, ids)
        return terms

    def concat_loss(self, fx: torch.Tensor, gy: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Concat ablation: classify (f(x_a), g(y_b)) as same pair (a == b) or not, a, b in {i, j}."""
        same = torch.cat([fx, gy], dim=2)  # (B, 2, 2D): (x_i, y_i), (x_j, y_j)
        crossed = torch.cat([fx, gy.flip(1)], dim=2)  # (B, 2, 2D): (x_i, y_j), (x_j, y_i)
        logits = self.pair_classifier(torch.cat([same, crossed]).flatten(0, 1))  # (4B, 2)
        b = fx.shape[0]
        labels = torch.cat([torch.ones(2 * b), torch.zeros(2 * b)]).long().to(logits.device)  # (4B,) 1 = same
        ce = F.cross_entropy(logits, labels)
        if not self.want_metrics:
            return {"loss": ce, "cross_entropy": ce.detach()}
        return {"loss": ce, "cross_entropy": ce.detach(), "acc": (logits.argmax(1) == labels).float().mean()}
