"""videoSimCLR (thesis, Sec. 3 "videoSimCLR", eq. 1; shared/papers/video_simclr_moco_thesis.txt).

Notation (thesis -> code):
  clip_i, clip_j      two temporal transforms of one sampled "Random m" clip, each spatially augmented:
                      the loader views "clip_i", "clip_j" (N, 3, m, H, W)
  C                   3D ResNet-18 trunk, h = C(clip) in R^512        -> self.encoder
  MLP                 two layers with a ReLU between, R^512 -> R^256  -> self.head
  p_i = F(clip_i)     MLP(C(clip_i))                                   -> z_i
  L_{i,j}             NT-Xent with temperature tau over the 2N clips  -> fastvid.losses.nt_xent

Switches (Sec. 5): the temporal transform (shift [-s, s], frame drop, reverse, shuffle, or none) and
chunk-wise vs frame-wise spatial augmentation (Table 3) are view settings, passed to the loader preset.
Negatives come from every process (`gather_negatives`), as in SimCLR's global batch. `acc` is the pretext
top-1: how often a clip's most similar other clip is its own other version.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastvid.data.views import VideoContrastViews, video_simclr_views
from fastvid.distributed import gather, sync_batch_norm
from fastvid.losses import nt_xent, top1_accuracy
from fastvid.methods.base import Method, mlp_head, require, require_arch
from fastvid.data import ViewSpec
from fastvid.models import ARCHS, Encoder


@dataclass
class VideoSimCLRConfig:
    encoder: str = "r3d_18"
    head_dims: list[int] = field(default_factory=lambda: [512, 512, 256])  # h -> hidden -> p
    temperature: float = 0.5  # tau; the thesis does not state it: its code's config.txt, "temp": 0.5
    gather_negatives: bool = True
    sync_bn: bool = True  # BN statistics over every process's clips: SimCLR's global BN (methods/base.py)
    # Random 16 clips, 112x112 (the thesis trains at 224 and ablates at 56); temporal shift s = 8 (UCF101's
    # best, Table 4) and chunk-wise spatial draws (Table 3).
    views: VideoContrastViews = field(default_factory=lambda: VideoContrastViews(temporal="shift", shift=8))

    def __post_init__(self) -> None:
        require_arch("encoder", self.encoder, "video")
        width = ARCHS[self.encoder].out_dim
        require(len(self.head_dims) >= 2 and self.head_dims[0] == width, "head_dims",
                f"must start with {self.encoder}'s representation size {width} and end with the output size",
                self.head_dims)
        require(self.temperature > 0, "temperature", "must be > 0", self.temperature)


class VideoSimCLR(Method):
    Config = VideoSimCLRConfig

    def __init__(self, cfg: VideoSimCLRConfig) -> None:
        super().__init__(cfg)
        self.encoder = Encoder(cfg.encoder)
        self.head = mlp_head(cfg.head_dims)
        if cfg.sync_bn:
            sync_batch_norm(self)

    def views(self) -> list[ViewSpec]:
        return video_simclr_views(self.cfg.views)

    def encoders(self) -> dict[str, Encoder]:
        return {"video": self.encoder}

    def embed(self, clip: torch.Tensor) -> torch.Tensor:
        """p = MLP(C(clip)): (N, 3, T, H, W) -> (N, head_dims[-1])."""
        return self.head(self.encoder(clip))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = batch["clip_i"].shape[0]
        # One encoder pass over both versions: BN statistics over all 2N clips, as in SimCLR.
        p = self.embed(torch.cat([batch["clip_i"], batch["clip_j"]]))  # (2N, D)
        p_i, p_j = p[:n], p[n:]  # (N, D) each
        if self.cfg.gather_negatives:
            p_i, p_j = gather(p_i, grad=True), gather(p_j, grad=True)  # (world * N, D)
        loss = nt_xent(p_i, p_j, self.cfg.temperature)
        out = {"loss": loss, "nt_xent": loss.detach()}
        if self.want_metrics:
            p = torch.cat([p_i, p_j])  # (2M, D), M clips over every process
            ids = torch.arange(p.shape[0], device=p.device) % p_i.shape[0]  # (2M,) clip of each version
            out["acc"] = top1_accuracy(p, p, ids, ids, exclude_diag=True)
        return out
