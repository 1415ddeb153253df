"""videoMoCo v1 / v2 (thesis, Sec. 3 "videoMOCO", eq. 2; MoCo, He et al. 2020; MoCo v2, Chen et al. 2020).

Notation (thesis / MoCo -> code):
  clip_q, clip_k      two augmented versions of one clip: loader views "query", "key" (N, 3, T, H, W)
  f_q (query encoder) 3D ResNet-18 + head                  -> self.encoder, self.head
  f_k (momentum enc.) the same, theta_k <- m theta_k + (1 - m) theta_q after each step
                                                            -> self.key_encoder, self.key_head, cfg.momentum
  p_q = f_q(clip_q)   query; k_+ = f_k(clip_k) its positive key
  {k_1..k_K}          FIFO queue of the last K keys (dictionary)        -> self.queue (K, D), self.queue_ptr
  L_q                 InfoNCE with temperature tau against k_+ and the queue -> fastvid.losses.info_nce_queue

v1: a single fully connected layer on the trunk and MoCo v1's augmentation; v2: the videoSimCLR MLP head
and its stronger spatial augmentation (a view setting).

Shuffling BN (MoCo Sec. 3.3; not in the thesis): BN statistics over a batch let a query find its key by
the statistics they share ("cheating"), so queries and keys must be normalised over different groups of
clips. Each process splits its batch into `bn_splits` sub-batches with their own BN statistics (MoCo's
per-GPU BN, as its single-GPU demo does with SplitBatchNorm), and the keys are shuffled before the key
encoder: within the process, and with several processes across all of them. So a key's BN group is
another set of clips than its query's, on one GPU too. `bn: sync` uses SyncBatchNorm in both encoders
instead (no shuffle, no split).
`acc` is the pretext top-1: how often a query's positive key beats every queue entry.

Held-out clips (validation, eval mode): the dictionary is the batch's own keys (of every process), not the
queue. The queue holds keys of training clips encoded by earlier weights, and before the first step it is
random noise that no query resembles: InfoNCE against it starts near 0 and would rise as training fills it.
The batch's other keys are negatives drawn like the positive, by the same weights, at every evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastvid.data import ViewSpec
from fastvid.data.views import VideoContrastViews, video_moco_views
from fastvid.distributed import broadcast, gather, own_rows, sync_batch_norm, world
from fastvid.losses import info_nce_queue, top1_accuracy
from fastvid.methods.base import Method, mlp_head, momentum_copy, require, require_arch, split_batch_norm
from fastvid.models import Encoder


@dataclass
class VideoMoCoConfig:
    version: Literal["v1", "v2"] = "v2"  # head: v1 linear, v2 two-layer MLP
    encoder: str = "r3d_18"
    dim: int = 128  # key/query size (MoCo)
    queue_size: int = 8192  # K: 8192 for UCF101, 1024 for HMDB51 (thesis Table 5)
    momentum: float = 0.999  # m (MoCo)
    temperature: float = 0.07  # tau; the thesis does not state it: its code's --moco-t 0.07, for v1 and v2
    bn: Literal["shuffle", "sync"] = "shuffle"
    # shuffle: BN groups per process (MoCo: 32 images per GPU; 1 is plain BN, unprotected on one process)
    bn_splits: int = 4
    # The preset's spatial draws are SimCLR's (v2's "stronger augmentation"); v1 swaps in MoCo v1's.
    views: VideoContrastViews = field(default_factory=VideoContrastViews)

    def __post_init__(self) -> None:
        require_arch("encoder", self.encoder, "video")
        require(self.dim >= 1, "dim", "must be >= 1", self.dim)
        require(self.queue_size >= 1, "queue_size", "must be >= 1", self.queue_size)
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(self.temperature > 0, "temperature", "must be > 0", self.temperature)
        require(self.bn_splits >= 1, "bn_splits", "must be >= 1", self.bn_splits)


# MoCo v1's augmentation over SimCLR's, as the thesis's v1 code (main_moco.py, "MoCo v1's aug"): crops in
# [0.2, 1] of the area, ColorJitter(0.4, 0.4, 0.4, 0.4) always, so hue +-0.4 turn = +-144 degrees
# (torchvision's unit, as the loader's), no Gaussian blur; flip and grayscale p = 0.2 as v2.
MOCO_V1_SPATIAL = {"scale": (0.2, 1.0), "jitter": 1.0, "hue": 0.4, "blur": 0.0}


class VideoMoCo(Method):
    Config = VideoMoCoConfig

    def __init__(self, cfg: VideoMoCoConfig) -> None:
        super().__init__(cfg)
        self.encoder = Encoder(cfg.encoder)
        width = self.encoder.out_dim
        self.head = mlp_head([width, cfg.dim] if cfg.version == "v1" else [width, width, cfg.dim])
        if cfg.bn == "sync":
            self.encoder = sync_batch_norm(self.encoder)
        elif cfg.bn_splits > 1:
            self.encoder = split_batch_norm(self.encoder, cfg.bn_splits)
        self.key_encoder, self.key_head = momentum_copy(self.encoder), momentum_copy(self.head)
        self.momentum = cfg.momentum
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def views(self) -> list[ViewSpec]:
        views = video_moco_views(self.cfg.views)
        if self.cfg.version == "v1":  # MoCo v1: crops [0.2, 1], colour jitter (0.4, 0.4, 0.4, 0.4) always, no blur
            views = [replace(v, spatial=replace(v.spatial, **MOCO_V1_SPATIAL)) for v in views]
        return views

    def encoders(self) -> dict[str, Encoder]:
        return {"video": self.encoder}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.key_encoder), (self.head, self.key_head)]

    @torch.no_grad()
    def keys(self, clip_k: torch.Tensor) -> torch.Tensor:
        """k = f_k(clip_k): (N, 3, T, H, W) -> (N, D), the batch shuffled (within and across processes) so the
        keys' BN groups are not the queries'."""
        rank, size = world()
        if self.cfg.bn == "sync":
            return self.key_head(self.key_encoder(clip_k))
        if size == 1:  # the BN groups are this process's sub-batches: shuffle clips across them
            perm = torch.randperm(clip_k.shape[0], device=clip_k.device)
            return self.key_head(self.key_encoder(clip_k[perm]))[torch.argsort(perm)]
        every = gather(clip_k, grad=False)  # (world * N, ...)
        perm = torch.randperm(every.shape[0], device=every.device)
        broadcast(perm)  # one permutation for all processes
        n = clip_k.shape[0]
        mine = perm[rank * n:(rank + 1) * n]  # the rows this process encodes
        k = gather(self.key_head(self.key_encoder(every[mine])), grad=False)  # (world * N, D) in perm order
        return k[torch.argsort(perm)][rank * n:(rank + 1) * n]  # back to this process's own rows

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Replace the oldest len(k) entries of the queue (FIFO), wrapping around its end."""
        # Under bf16/fp16 autocast the keys come in the autocast dtype; the queue stays float32.
        k = F.normalize(gather(k, grad=False), dim=1).to(self.queue.dtype)  # (world * N, D)
        idx = (self.queue_ptr + torch.arange(k.shape[0], device=k.device)) % self.cfg.queue_size
        self.queue[idx] = k
        self.queue_ptr.copy_((self.queue_ptr + k.shape[0]) % self.cfg.queue_size)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        q = self.head(self.encoder(batch["query"]))  # (N, D)
        k = self.keys(batch["key"])  # (N, D), no gradient
        if not self.training:
            return self.held_out(q, k)
        # The loss reads the queue as it was before this batch's keys join it.
        queue = self.queue.clone()  # (K, D)
        loss = info_nce_queue(q, k, queue, self.cfg.temperature)
        out = {"loss": loss, "info_nce": loss.detach()}
        if self.want_metrics:  # top-1 among k_+ and the queue: candidates [k (N); queue (K)], query n's is row n
            ids = torch.arange(q.shape[0], device=q.device)  # (N,)
            queue_ids = ids.new_full((queue.shape[0],), -1)  # (K,) never a positive
            out["acc"] = top1_accuracy(q, torch.cat([k.float(), queue]), ids, torch.cat([ids, queue_ids]))
        self.enqueue(k)
        return out

    def held_out(self, q: torch.Tensor, k: torch.Tensor) -> dict[str, torch.Tensor]:
        """InfoNCE and top-1 of held-out queries q: (N, D) against every process's keys of the batch, query n's
        positive being its own key; the queue is neither read nor filled."""
        keys = gather(k, grad=False).float()  # (world * N, D)
        ids = own_rows(q.shape[0], q.device)  # (N,) each query's own key's row
        logits = F.normalize(q.float(), dim=1) @ F.normalize(keys, dim=1).T / self.cfg.temperature  # (N, world N)
        loss = F.cross_entropy(logits, ids)
        out = {"loss": loss, "info_nce": loss.detach()}
        if self.want_metrics:
            out["acc"] = top1_accuracy(q, keys, ids, torch.arange(keys.shape[0], device=q.device))
        return out
