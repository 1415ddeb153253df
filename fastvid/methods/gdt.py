"""GDT: Patrick et al., "On Compositions of Transformations in Contrastive Self-Supervised Learning", ICCV 2021.

A transformation is T = (i, tau, m, r, g) (sec. 3.3): data sampling i (video index), time shift tau,
modality m (video / audio), time reversal r (r_1 flips the time axis) and augmentation g. The batch is
hierarchical: K_i videos (the loader's batch, `batch["index"]` is i) x K_tau shifts (one 1 s clip each) x
K_r reversals x K_m = 2 modalities, so row n of the N = K_i K_tau K_r embeddings has factors (i, tau, r).
The loader delivers each x(i, tau, m, r) as its own view, `video{k}` / `audio{k}` (r_0) and `video{k}_rev` /
`audio{k}_rev` (r_1: the same frames and audio window read backwards), each augmented on its own:
x(T) = g(r(m(x_{i tau}))), g after the reversal with K_g = 1 (sec. 3.3, "augment each datum at this level";
the authors' dataset flips, then augments each reversal). The audio is reversed as a waveform (the authors
flip the spectrogram, the same up to the STFT frames' alignment) and, per the paper, gets its own g_a (the
authors' code draws the audio augmentation once per shift). Each factor is distinctive (c = delta(t = t'))
or invariant (c = 1) per the config; a factor set to "none" is not sampled (K = 1, the dots of Table 1).
The loss is eq. (1) (`fastvid.losses.gdt_loss`) over the embeddings of every process (negatives gathered
with gradient), with w = delta(m != m'): "we extend SimCLR weight function w to focus learning on only
cross-modal pairs" (sec. 3.2).

Table 1's rows: DS is always distinctive; TR = `time_reversal`, TS = `time_shift`, Mod. = `modality`.
With modality "v" (rows a-d, "emulating SimCLR") the second "modality" is a second augmentation g of the
same datum (K_g = 2, views `video{k}_g` / `video{k}_rev_g`), encoded by the same video network, and w is
SimCLR's w(T, T') = delta(T != T') (sec. 3.1): every other row is in the denominator, so row (a) is NT-Xent.
`acc` is the pretext top-1: how often an anchor's best candidate under w is one of its positives.

Phi_v = R(2+1)D-18 + MLP head, Phi_a = audio ResNet-9 + MLP head (sec. 4, appendix A.3.4).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from fastvid.data.spec import ViewSpec
from fastvid.data.views import GDTViews, gdt_views
from fastvid.distributed import gather, sync_batch_norm
from fastvid.losses import gdt_loss, gdt_top1_accuracy
from fastvid.methods.base import Method, mlp_head, require, require_arch
from fastvid.models import Encoder

Factor = Literal["d", "i", "none"]  # distinctive, invariant, not sampled


@dataclass
class GDTConfig:
    """GDT's model and hypothesis; defaults are Table 1 row (l), the paper's best (sec. 4.4)."""

    video_arch: str = "r2plus1d_18"
    audio_arch: str = "resnet9"
    modality: Literal["av", "v"] = "av"  # Mod.: cross-modal audio-visual, or video only (rows a-d)
    time_shift: Factor = "d"  # TS
    time_reversal: Factor = "i"  # TR
    hidden_dim: int = 512  # MLP head: 512 -> hidden (BN, ReLU) -> embed_dim
    embed_dim: int = 256
    temperature: float = 0.07  # rho in eq. (1)
    sync_bn: bool = True  # the authors train with synchronised BN across GPUs
    views: GDTViews = field(default_factory=GDTViews)  # clip length, crop size and rescale, audio window

    def __post_init__(self) -> None:
        require_arch("video_arch", self.video_arch, "video")
        require_arch("audio_arch", self.audio_arch, "image")  # a log-mel spectrogram is a 2D input
        require(min(self.hidden_dim, self.embed_dim) >= 1, "embed_dim", "head sizes must be >= 1",
                (self.hidden_dim, self.embed_dim))
        require(self.temperature > 0, "temperature", "must be > 0", self.temperature)


def hypothesis(cfg: GDTConfig) -> tuple[int, int, tuple[bool, bool, bool]]:
    """(K_tau, K_r, invariant flags of the factor columns (i, tau, r)) for a Table 1 row.

    An unsampled factor has K = 1 and a constant column, so its flag does not change c(T, T')."""
    k_tau = 1 if cfg.time_shift == "none" else 2
    k_r = 1 if cfg.time_reversal == "none" else 2
    return k_tau, k_r, (False, cfg.time_shift == "i", cfg.time_reversal == "i")


def transformation_factors(index: Tensor, k_tau: int, k_r: int) -> Tensor:
    """(K_i,) video indices -> (K_i K_tau K_r, 3) int64 factor labels (i, tau, r), rows in batch order."""
    k_i = index.shape[0]
    i = index.long()[:, None, None].expand(k_i, k_tau, k_r)
    tau = torch.arange(k_tau, device=index.device)[None, :, None].expand(k_i, k_tau, k_r)
    r = torch.arange(k_r, device=index.device)[None, None, :].expand(k_i, k_tau, k_r)
    return torch.stack([i, tau, r], dim=-1).reshape(-1, 3)  # (N, 3)


class GDT(Method):
    """Generalized data transformations: eq. (1) over the (i, tau, r) hierarchy with cross-modal pairs."""

    Config = GDTConfig

    def __init__(self, cfg: GDTConfig) -> None:
        super().__init__(cfg)
        self.k_tau, self.k_r, self.invariant = hypothesis(cfg)
        self.video = Encoder(cfg.video_arch)
        self.head_v = mlp_head([self.video.out_dim, cfg.hidden_dim, cfg.embed_dim], batch_norm=True)
        if cfg.modality == "av":
            self.audio = Encoder(cfg.audio_arch, in_channels=1)
            self.head_a = mlp_head([self.audio.out_dim, cfg.hidden_dim, cfg.embed_dim], batch_norm=True)
        if cfg.sync_bn:
            sync_batch_norm(self)

    def views(self) -> list[ViewSpec]:
        """The loader's GDT preset cut to K_tau shifts x K_r reversals; modality "v" swaps each audio view for
        a second augmentation of its datum (same frames: same anchor and reversal; its own spatial draw)."""
        preset = {v.name: v for v in gdt_views(self.cfg.views)}
        first = [preset[k] for k in self.first_keys]
        if self.cfg.modality == "av":
            return first + [preset[k] for k in self.second_keys]
        return first + [replace(v, name=k) for v, k in zip(first, self.second_keys)]

    def _keys(self, modality: str, suffix: str = "") -> list[str]:
        """Batch keys of the K_tau K_r data of `modality`, in (tau, r) order; r_1's views end in "_rev"."""
        return [f"{modality}{k}{rev}{suffix}" for k in range(1, self.k_tau + 1) for rev in ("", "_rev")[:self.k_r]]

    @property
    def first_keys(self) -> list[str]:
        """Batch keys of the video of each (tau, r)."""
        return self._keys("video")

    @property
    def second_keys(self) -> list[str]:
        """Batch keys of each (tau, r)'s second modality: its audio, or (modality "v") a second augmentation."""
        return self._keys("audio") if self.cfg.modality == "av" else self._keys("video", "_g")

    @staticmethod
    def _hierarchy(batch: dict[str, Tensor], keys: list[str]) -> Tensor:
        """The K_tau K_r views `keys` -> (K_i K_tau K_r, ...) in (i, tau, r) order."""
        return torch.stack([batch[k] for k in keys], dim=1).flatten(0, 1)  # (K_i, K_tau K_r, ...) -> rows

    def embed(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(v, a, factors): (N, D), (N, D), (N, 3) for this process's part of the batch."""
        clips = self._hierarchy(batch, self.first_keys)  # (N, C, T, H, W)
        v = self.head_v(self.video(clips))  # (N, D)
        if self.cfg.modality == "av":
            spec = self._hierarchy(batch, self.second_keys)  # (N, 1, F_mel, T_mel)
            a = self.head_a(self.audio(spec))  # (N, D)
        else:
            a = self.head_v(self.video(self._hierarchy(batch, self.second_keys)))  # (N, D)
        return v, a, transformation_factors(batch["index"], self.k_tau, self.k_r)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        v, a, factors = self.embed(batch)
        # every process's rows take part in eq. (1): more negatives, gradients flow back to their owners
        v, a, factors = gather(v, grad=True), gather(a, grad=True), gather(factors, grad=False)
        cross_modal = self.cfg.modality == "av"  # w = delta(m != m'); video only: SimCLR's delta(T != T')
        loss = gdt_loss(v, a, factors, self.invariant, self.cfg.temperature, cross_modal=cross_modal)
        if not self.want_metrics:
            return {"loss": loss}
        return {"loss": loss, "acc": gdt_top1_accuracy(v, a, factors, self.invariant, cross_modal=cross_modal)}

    def encoders(self) -> dict[str, Encoder]:
        return {"video": self.video, "audio": self.audio} if self.cfg.modality == "av" else {"video": self.video}
