"""Vi2CLR: Diba et al., "Vi2CLR: Video and Image for Visual Contrastive Learning of Representation", ICCV 2021.

Two encoders trained together (sec. 3.2): f_V = S3D on a 32-frame clip x, f_I = ResNet-50 on its middle
frame x^; each has a 128-d MLP head (r_V, r_I) and a third MLP head f_VI on the concatenation of the two
encoders' features gives the joint representation r_J (sec. 4.2). Algorithm 1: at the start of every
epoch r_J of the whole dataset is clustered (FINCH's second partition, sec. 4.3; k-means with FINCH's K as
the alternative), giving per-sample cluster ids, centroids c and ProtoNCE concentrations phi; they are
method state and go into checkpoints. Per batch:

    L = L_CenterNCE(r_J; c, phi)  (eq. 3)  +  L_VideoNCE(r_V)  +  L_ImgNCE(r_I)  (eq. 2, MIL-NCE)   (eq. 4)

with equal weights. MIL-NCE's positives P_i are the rows of i's cluster: the other temporal crop of the
same video (the loader's `clip2`/`frame2`, "random temporal cropping ... from the same video as positives")
and the batch's other members of the cluster; negatives are the rest of the batch, gathered from every
process. CenterNCE contrasts r_J with all k centroids. tau = 0.08 for every loss (sec. 4.2).

Positive mining (sec. 3.2): "for each instance in a given cluster, we randomly mine samples from the same
cluster as positive pairs": `sample_order` has the loader read each sample with `mined_positives` random
others of its cluster in its batch (`clustering.mined_order`); a shuffled batch would almost never hold
two of thousands of clusters. The feature pass embeds the videos unaugmented (`feature_views`: centre clip
and its middle frame, centre crop), as R_J = f_VI(X) reads. `center_acc`, `video_acc`, `img_acc`: pretext
top-1, how often a sample's nearest centroid is its own, or its nearest other row is of its cluster.
Held-out clips (validation, eval mode) belong to no cluster: they are scored on VideoNCE + ImgNCE with each
clip's other temporal crop as its only positive (instance discrimination), without CenterNCE.

Not in the paper: ResNet encoders start each residual block as the identity (`zero_init_residual`, as SimCLR's
ResNet, whose heads and encoders the paper follows): at torchvision's init its ResNet-50 stream's embeddings
became alike for every clip within a few steps (benchmarks/RESULTS.md). When the clustering finds a single
cluster (possible with an untrained network, whose features are nearly identical), that epoch uses one cluster
per sample instead, with a warning.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from fastvid.data.spec import ViewSpec
from fastvid.data.views import Vi2CLRViews, vi2clr_feature_views, vi2clr_views
from fastvid.distributed import broadcast_object, gather, gather_rows, own_rows, sync_batch_norm, world
from fastvid.losses import center_nce, mil_nce, top1_accuracy
from fastvid.methods.base import Method, mlp_head, require, require_arch
from fastvid.methods.clustering import Clusters, cluster_features, clusters_from_ids, mined_order
from fastvid.models import Encoder


@dataclass
class Vi2CLRConfig:
    """Vi2CLR's model, losses and clustering (paper defaults, sec. 4.2-4.3)."""

    video_arch: str = "s3d"
    image_arch: str = "resnet50"
    embed_dim: int = 128  # d_1 = d_2 = d = 128; heads are d_in -> d_in (ReLU) -> 128, as SimCLR's
    temperature: float = 0.08  # tau of eq. (2); also the mean of the concentrations phi
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # CenterNCE, VideoNCE, ImgNCE: eq. (4)
    cluster: Literal["finch", "kmeans"] = "finch"
    finch_level: int = 2  # "we use clusters from the second partition"
    num_clusters: int | None = None  # FINCH: the partition nearest this; k-means: K (None: FINCH's estimate)
    kmeans_iters: int = 20
    mined_positives: int = 1  # same-cluster samples read into each sample's batch (0: a plain shuffle)
    zero_init_residual: bool = True  # SimCLR's ResNet: each residual block starts as the identity (S3D has none)
    sync_bn: bool = True  # BN statistics over every process's batch, as its negatives are (methods/base.py)
    views: Vi2CLRViews = field(default_factory=Vi2CLRViews)

    def __post_init__(self) -> None:
        require_arch("video_arch", self.video_arch, "video")
        require_arch("image_arch", self.image_arch, "image")
        require(self.embed_dim >= 1, "embed_dim", "must be >= 1", self.embed_dim)
        require(self.temperature > 0, "temperature", "must be > 0", self.temperature)
        require(min(self.loss_weights) >= 0 and max(self.loss_weights) > 0, "loss_weights",
                "must be >= 0 and not all 0", self.loss_weights)
        require(self.finch_level >= 1, "finch_level", "must be >= 1", self.finch_level)
        require(self.num_clusters is None or self.num_clusters >= 2, "num_clusters", "must be >= 2 (or null)",
                self.num_clusters)
        require(self.kmeans_iters >= 1, "kmeans_iters", "must be >= 1", self.kmeans_iters)
        require(self.mined_positives >= 0, "mined_positives", "must be >= 0 (0: a plain shuffle)",
                self.mined_positives)


class Vi2CLR(Method):
    """Video (S3D) and image (ResNet-50) encoders trained on clustering-mined positives."""

    Config = Vi2CLRConfig
    needs_feature_pass = True

    def __init__(self, cfg: Vi2CLRConfig) -> None:
        super().__init__(cfg)
        self.video = Encoder(cfg.video_arch, zero_init_residual=cfg.zero_init_residual)  # f_V
        self.image = Encoder(cfg.image_arch, zero_init_residual=cfg.zero_init_residual)  # f_I
        dv, di = self.video.out_dim, self.image.out_dim
        self.head_v = mlp_head([dv, dv, cfg.embed_dim])
        self.head_i = mlp_head([di, di, cfg.embed_dim])
        self.head_j = mlp_head([dv + di, dv + di, cfg.embed_dim])  # f_VI on the concatenated features
        if cfg.sync_bn:
            sync_batch_norm(self)
        # Clustering state (Algorithm 1's C), checkpointed as buffers; their sizes are known only after a
        # feature pass, so loading first resizes them to the checkpoint's (`_resize_cluster_state`).
        self.register_buffer("cluster_ids", torch.empty(0, dtype=torch.long))  # (N_data,)
        self.register_buffer("centroids", torch.empty(0, cfg.embed_dim))  # (k, d)
        self.register_buffer("concentration", torch.empty(0))  # (k,) phi
        self.register_load_state_dict_pre_hook(self._resize_cluster_state)

    def views(self) -> list[ViewSpec]:
        return vi2clr_views(self.cfg.views)

    def feature_views(self) -> list[ViewSpec]:
        return vi2clr_feature_views(self.cfg.views)

    def sample_order(self, epoch: int, shuffled: np.ndarray, batch_size: int, world_size: int) -> np.ndarray:
        """The loader's shuffle regrouped so each sample meets `mined_positives` of its cluster in its batch;
        deterministic in (shuffle, epoch, clusters), so a resumed epoch reads the same order."""
        if self.cluster_ids.numel() == 0:
            return shuffled
        ids = self.cluster_ids.cpu().numpy()  # (N_data,) -1: not clustered
        clusters = np.where(shuffled < len(ids), ids[np.minimum(shuffled, len(ids) - 1)], -1)
        return mined_order(shuffled, clusters, positives=self.cfg.mined_positives, batch_size=batch_size,
                           world_size=world_size, rng=np.random.default_rng(epoch))

    def encoders(self) -> dict[str, Encoder]:
        return {"video": self.video, "image": self.image}

    def embed(self, clips: Tensor, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """clips (n, 3, T, H, W), their middle frames (n, 3, H', W') -> r_V, r_I, r_J: (n, d) each."""
        h_v = self.video(clips)  # (n, 1024)
        h_i = self.image(frames)  # (n, 2048)
        return self.head_v(h_v), self.head_i(h_i), self.head_j(torch.cat([h_v, h_i], dim=1))

    @torch.no_grad()
    def before_epoch(self, epoch: int, feature_batches: Iterable[dict[str, Tensor]] | None) -> None:
        """Algorithm 1's R_J = f_VI(X) and C = Clustering(R_J): every process embeds its share (`feature_views`,
        eval mode), the shares are gathered, and process 0 clusters them for all."""
        if feature_batches is None:
            raise ValueError("vi2clr: before_epoch needs a feature pass over the data (needs_feature_pass)")
        training = self.training
        self.eval()
        feats, index = [], []
        for batch in feature_batches:
            feats.append(self.embed(batch["clip1"], batch["frame1"])[2])  # (n, d) r_J
            index.append(batch["index"])
        self.train(training)
        if not feats:
            raise ValueError(f"vi2clr: the feature pass before epoch {epoch} yielded no batch")
        r_j, idx = gather_rows(torch.cat(feats)), gather_rows(torch.cat(index))  # (P, d), (P,) all processes
        # One process clusters and sends the result to the others: GPU matmuls need not agree bit for bit
        # across devices, and FINCH's first neighbours could then differ between processes.
        found = broadcast_object(self.cluster(r_j, epoch) if world()[0] == 0 else None)
        ids = torch.full((int(idx.max()) + 1,), -1, dtype=torch.long, device=idx.device)
        ids[idx] = found.ids.to(idx.device)  # (N_data,) -1: a sample the pass did not see
        self.cluster_ids = ids.to(self.centroids.device)
        self.centroids = found.centroids.to(self.centroids)
        self.concentration = found.concentration.to(self.concentration)

    def cluster(self, r_j: Tensor, epoch: int) -> Clusters:
        """C = Clustering(R_J) with the configured algorithm; ids, centroids and phi come back on the CPU."""
        found = cluster_features(r_j, method=self.cfg.cluster, level=self.cfg.finch_level,
                                 num_clusters=self.cfg.num_clusters, temperature=self.cfg.temperature,
                                 kmeans_iters=self.cfg.kmeans_iters, seed=epoch)
        if found.centroids.shape[0] < 2:
            # One cluster makes all three losses 0 (no negatives): an untrained network's features can be
            # that alike. Until they separate, every sample is its own cluster (instance discrimination).
            warnings.warn(f"vi2clr: epoch {epoch}: clustering {r_j.shape[0]} features gave one cluster; "
                          "using one cluster per sample this epoch")
            found = clusters_from_ids(r_j, torch.arange(r_j.shape[0], device=r_j.device), self.cfg.temperature)
        return Clusters(found.ids.cpu(), found.centroids.cpu(), found.concentration.cpu())

    def assignments(self, index: Tensor) -> Tensor:
        """(B,) dataset indices -> (B,) cluster ids from the last clustering."""
        if self.cluster_ids.numel() == 0:
            raise RuntimeError("vi2clr: no clusters yet; the trainer calls before_epoch with a feature pass "
                               "before the first batch")
        ids = self.cluster_ids[index.clamp(max=self.cluster_ids.numel() - 1)]  # (B,)
        if bool((index >= self.cluster_ids.numel()).any() | (ids < 0).any()):  # host sync: one per step
            raise RuntimeError(f"vi2clr: samples {index.tolist()} include one the last feature pass did not "
                               f"cluster ({self.cluster_ids.numel()} samples seen)")
        return ids

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        clips = torch.cat([batch["clip1"], batch["clip2"]])  # (2B, 3, T, H, W) two temporal crops per video
        frames = torch.cat([batch["frame1"], batch["frame2"]])  # (2B, 3, H', W') their middle frames
        r_v, r_i, r_j = self.embed(clips, frames)  # (2B, d) each
        ids = self.assignments(batch["index"]) if self.training else self.instances(batch["index"])
        ids = ids.repeat(2)  # (2B,) a crop's positives include its twin
        ids_all = gather(ids, grad=False)  # negatives from every process's batch
        r_v_all, r_i_all = gather(r_v, grad=True), gather(r_i, grad=True)  # (2B W, d)
        video = mil_nce(r_v_all, ids_all, self.cfg.temperature)
        image = mil_nce(r_i_all, ids_all, self.cfg.temperature)
        w_c, w_v, w_i = self.cfg.loss_weights
        out = {"loss": w_v * video + w_i * image, "video_nce": video, "img_nce": image}
        if self.training:  # held-out clips are in no cluster: no CenterNCE for them
            out["center_nce"] = center_nce(r_j, ids, self.centroids, self.concentration)  # against all k
            out["loss"] = out["loss"] + w_c * out["center_nce"]
            if self.want_metrics:
                clusters = torch.arange(self.centroids.shape[0], device=ids.device)  # (k,)
                out["center_acc"] = top1_accuracy(r_j, self.centroids, ids, clusters,
                                                   beta=1.0 / self.concentration)
        if self.want_metrics:
            out["video_acc"] = top1_accuracy(r_v_all, r_v_all, ids_all, ids_all, exclude_diag=True)
            out["img_acc"] = top1_accuracy(r_i_all, r_i_all, ids_all, ids_all, exclude_diag=True)
        return out

    @staticmethod
    def instances(index: Tensor) -> Tensor:
        """(B,) -> (B,) one id per clip, distinct across processes: held-out clips (validation, eval mode) are
        scored on the instance part of eq. (4), each crop's only positive being its twin."""
        return own_rows(index.shape[0], index.device)

    def _resize_cluster_state(self, module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                              *args: Any) -> None:
        """load_state_dict pre-hook: give the cluster buffers the checkpoint's shapes so its values load."""
        for name in ("cluster_ids", "centroids", "concentration"):
            if prefix + name in state_dict:
                setattr(self, name, getattr(self, name).new_empty(state_dict[prefix + name].shape))
