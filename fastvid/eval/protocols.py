"""The three protocols on labelled shards: linear probe, kNN retrieval, fine-tuning.

Features come from the frozen encoder in eval mode (no projection head). Every test video is read as
`test_clips` clips at independent random times (one decode, one view per clip); its score is the mean
over its clips, as the papers score a video. Retrieval is clip-level: test clips query the training
clips (GDT Table 3, Vi2CLR Table 5).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastvid.data.spec import RGB_MEAN, RGB_STD, SpatialSpec, TemporalSpec, ViewSpec
from fastvid.eval.encoders import clip_features
from fastvid.eval.linear import linear_probe
from fastvid.eval.probe import ClipSpec
from fastvid.eval.metrics import (average_by_group, cosine_neighbours, group_labels, knn_votes,
                                  retrieval_recall, topk_accuracy)

THUMB = 48  # side of the thumbnails kept for the retrieval figure


@dataclass
class FeatureSet:
    """Features of every clip read: features (N, D), labels (N,), video (N,) = the sample's dataset
    index, thumbs (N, 3, THUMB, THUMB, 3) uint8 = first, middle and last frame, for the figure."""

    features: torch.Tensor
    labels: torch.Tensor
    video: torch.Tensor
    thumbs: torch.Tensor


def clip_views(clips: int, clip: ClipSpec, train: bool) -> list[ViewSpec]:
    """`clips` RGB views, each with its own random start (own anchor). Evaluation views take a centre
    crop and no flip; the fine-tuning view takes a random resized crop and a flip."""
    size = (clip.size, clip.size)
    spatial = (SpatialSpec(size=size, crop="random_resized", flip=0.5) if train
               else SpatialSpec(size=size, crop="center", flip=0.0))
    return [ViewSpec(name=f"clip{i}", modality="rgb", spatial=copy.deepcopy(spatial),
                     temporal=TemporalSpec(frames=clip.frames, stride=clip.stride, anchor=f"clip{i}", start="random"))
            for i in range(clips)]


def thumbnails(clips: torch.Tensor) -> torch.Tensor:
    """Normalised clips (N, C, T, H, W) -> (N, 3, THUMB, THUMB, 3) uint8 first/middle/last frames."""
    t = clips.shape[2]
    frames = clips[:, :, [0, t // 2, t - 1]].float().cpu()  # (N, C, 3, H, W)
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(RGB_STD).view(1, 3, 1, 1, 1)
    frames = (frames * std + mean).clamp(0, 1).transpose(1, 2).flatten(0, 1)  # (N*3, C, H, W)
    small = F.interpolate(frames, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)
    return (small * 255).round().to(torch.uint8).view(-1, 3, 3, THUMB, THUMB).permute(0, 1, 3, 4, 2)


@torch.no_grad()
def extract(encoder: nn.Module, batches: Iterable[dict[str, torch.Tensor]], views: list[str]) -> FeatureSet:
    """Run the frozen encoder over every view of every batch; clips of one video share its `video` id."""
    encoder.eval()
    feats, labels, video, thumbs = [], [], [], []
    for batch in batches:
        for name in views:
            clips = batch[name]  # (N, C, T, H, W)
            feats.append(clip_features(encoder, clips).float().cpu())
            labels.append(batch["label"].cpu())
            video.append(batch["index"].cpu())
            thumbs.append(thumbnails(clips))
    if not feats:
        raise ValueError("the loader yielded no batches: are the shards empty or the split wrong?")
    if (torch.cat(labels) < 0).any():
        raise ValueError("some clips have no label (label_index -1 in their json): evaluation needs labelled shards")
    return FeatureSet(torch.cat(feats), torch.cat(labels), torch.cat(video), torch.cat(thumbs))


def linear_protocol(train: FeatureSet, test: FeatureSet, num_classes: int, seed: int) -> dict:
    """Frozen features, logistic regression with an l2 sweep on a validation split of the training videos."""
    res = linear_probe(train.features, train.labels, test.features, test.labels, num_classes,
                       test_groups=test.video, train_groups=train.video, seed=seed)
    return {"top1": res["top1"], "top5": res["top5"], "l2": res["l2"], "videos": res["n"]}


def knn_protocol(train: FeatureSet, test: FeatureSet, num_classes: int, k: int,
                 ks: tuple[int, ...] = (1, 5, 10, 20)) -> dict:
    """Clip-level recall at k, and per-video kNN classification (votes averaged over a video's clips)."""
    recall = retrieval_recall(test.features, test.labels, train.features, train.labels, ks)
    k = min(k, len(train.labels))
    votes = knn_votes(test.features, train.features, train.labels, num_classes, k)  # (M, C)
    _, per_video = average_by_group(votes, test.video)  # (V, C)
    acc = topk_accuracy(per_video, group_labels(test.labels, test.video), (1,))["top1"]
    return {**recall, f"knn{k}_top1": acc, "videos": len(per_video)}


def retrieval_examples(train: FeatureSet, test: FeatureSet, queries: int, k: int = 3) -> dict:
    """For the first `queries` test videos (their first clip): the k nearest training clips."""
    first = torch.unique(test.video, sorted=True)[:queries]
    q = torch.stack([(test.video == v).nonzero()[0, 0] for v in first])  # (Q,)
    sims, nn_idx = cosine_neighbours(test.features[q], train.features, min(k, len(train.labels)))
    return {"query_thumbs": test.thumbs[q], "query_labels": test.labels[q],
            "neighbour_thumbs": train.thumbs[nn_idx], "neighbour_labels": train.labels[nn_idx], "similarity": sims}


class Classifier(nn.Module):
    """Encoder followed by a linear layer: the network fine-tuned end to end."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(clip_features(self.encoder, clips))  # (N, num_classes)


def finetune_protocol(encoder: nn.Module, train_epochs: Iterable[Iterable[dict[str, torch.Tensor]]],
                      test_batches: Iterable[dict[str, torch.Tensor]], test_views: list[str], num_classes: int,
                      lr: float, weight_decay: float, device: torch.device | str) -> dict:
    """Fine-tune the whole network with SGD, the encoder at lr/10 (thesis Sec. 4.2, after DPC), then score
    each test video by its clips' mean softmax. `train_epochs` yields one iterable of batches per epoch
    (key "clip0"); a copy of the encoder is trained, the caller's stays untouched."""
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    opt = torch.optim.SGD([{"params": model.encoder.parameters(), "lr": lr / 10},
                           {"params": model.head.parameters(), "lr": lr}],
                          momentum=0.9, weight_decay=weight_decay)
    losses = []
    for batches in train_epochs:
        model.train()
        for batch in batches:
            loss = F.cross_entropy(model(batch["clip0"].to(device)), batch["label"].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())  # CPU-GPU sync once per step, for the log
    model.eval()
    probs, labels, video = [], [], []
    with torch.no_grad():
        for batch in test_batches:
            for name in test_views:
                probs.append(model(batch[name].to(device)).softmax(dim=1).cpu())
                labels.append(batch["label"].cpu())
                video.append(batch["index"].cpu())
    _, per_video = average_by_group(torch.cat(probs), torch.cat(video))  # (V, C)
    scores = topk_accuracy(per_video, group_labels(torch.cat(labels), torch.cat(video)), (1, 5))
    return {**scores, "videos": len(per_video), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None}
