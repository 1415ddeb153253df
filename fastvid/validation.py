"""Validation while training: the method's pretext loss and top-1 on held-out clips, and kNN top-1 of the
frozen features, every `train.val_every` steps and before the first (solo-learn's online kNN, lightly's kNN
monitor).

The held-out clips are a split of the shards (`data.val_split`: "val", else "test") or, in the demo, the end
of each source clip of the embedded sample (`fastvid.data.sample.holdout`: no frame shared with a training
clip). Their batches are decoded once, when the run starts, and kept: every evaluation sees the same clips
with the same views, drawn from the loader's seed (`data.seed`), so values compare across steps and with
step 0, and the loader costs nothing after that. The model runs in eval mode (no dropout; MoCo contrasts
with the batch's keys, not its queue) under no_grad and a forked RNG seeded alike at every evaluation (MoCo's
key shuffle draws from it), so a run trains the same with or without validation. For the pretext loss its
BN layers normalise with each validation batch's own statistics, as the training loss does,
and leave their running statistics alone: with running statistics, step 0 would score the untrained
statistics (mean 0, variance 1) rather than the untrained weights, and the values would fall as those
statistics settle whether or not the weights learn anything. kNN reads the frozen encoder as `fastvid eval`
does: in eval mode.

kNN top-1 (shards with labels only): each validation clip's centre crop is embedded by the method's first
RGB encoder and classified by the vote of its 10 nearest training clips (centre crops of up to
`data.val_gallery` of them, `fastvid.eval.metrics.knn_votes`). Held-out clips are in none of Vi2CLR's
clusters of the training data: its pretext loss there is the instance part of its loss (`Vi2CLR.forward`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fastvid.data.loader import VideoLoader, build_loader
from fastvid.data.spec import DataConfig, ViewSpec
from fastvid.eval.encoders import clip_features
from fastvid.eval.metrics import knn_votes, topk_accuracy
from fastvid.eval.probe import ClipSpec
from fastvid.eval.protocols import clip_views
from fastvid.methods import Method
from fastvid.shard import read_manifest

KNN_VIEW = "_knn"  # the centre-crop view's batch key
KNN_K = 10  # neighbours voting, capped at the gallery size (fastvid eval's default)
VAL_SPLITS = ("val", "test")  # what data.val_split=auto looks for, in this order


@dataclass
class Validation:
    """The held-out batches, decoded once. `pretext`: batches of the method's views, with the centre crops
    (KNN_VIEW) that kNN queries when it runs; `gallery`: centre crops of training clips, empty without labels."""

    pretext: list[dict[str, torch.Tensor]]
    gallery: list[dict[str, torch.Tensor]]
    encoder: str | None  # role of the encoder kNN reads
    num_classes: int
    source: str  # where the clips come from, for the banner

    def describe(self) -> str:
        clips = sum(len(b["index"]) for b in self.pretext)
        parts = [f"{clips} clips per process ({self.source}), fixed views", "pretext loss and top-1"]
        parts += [f"kNN top-1 ({self.encoder} encoder, {sum(len(b['index']) for b in self.gallery)} training "
                  f"clips)"] if self.gallery else []
        return ", ".join(parts)


def val_split(data: DataConfig) -> str | None:
    """The split of the shards that data.val_split names (auto: "val", else "test"), or None."""
    if data.val_split == "none":
        return None
    splits = read_manifest(data.shards).get("splits", {})
    if data.val_split == "auto":
        return next((s for s in VAL_SPLITS if splits.get(s)), None)
    return data.val_split  # the loader names the splits there are when this one is not among them


def knn_view(views: list[ViewSpec]) -> ViewSpec:
    """A centre crop, no flip, of the method's first RGB view's frames, stride and size."""
    view = next(v for v in views if v.modality in ("rgb", "frame"))
    spec = ClipSpec(frames=view.temporal.frames, stride=view.temporal.stride, size=view.spatial.size[0])
    return replace(clip_views(1, spec, train=False)[0], name=KNN_VIEW)


def rgb_encoder(method: Method) -> str | None:
    return next((role for role, enc in method.encoders().items() if enc.in_channels == 3), None)


def _batches(data: DataConfig, views: list[ViewSpec], keys: list[str], batch: int, count: int, rank: int,
             world: int, device: torch.device | str) -> list[dict[str, torch.Tensor]]:
    """`count` batches of `batch` of the samples `keys` (this process's share), read once in shard order."""
    loader = build_loader(replace(data, batch_size=batch, shuffle=False, drop_last=True), views, rank=rank,
                          world_size=world, device=device)
    loader.keep_only(keys)
    try:
        return [b for b, _ in zip(loader, range(count))]
    finally:
        loader.close()


def spread_keys(loader: VideoLoader, n: int) -> list[str]:
    """`n` keys spread evenly over the loader's samples in shard order (all when it holds fewer)."""
    keys = sorted(loader.key_index, key=loader.key_index.get)
    return [keys[i] for i in np.linspace(0, len(keys) - 1, min(n, len(keys))).round().astype(int)]


def build_validation(data: DataConfig, method: Method, train_loader: VideoLoader, held_out: list[str] | None,
                     rank: int, world: int, device: torch.device | str) -> Validation | None:
    """The validation batches: of `held_out` keys of the training split when given (the demo), else of
    `val_split(data)`; None when there is no split to validate on or data.val_clips is 0."""
    split = data.split if held_out is not None else val_split(data)
    if split is None or data.val_clips == 0:
        return None
    source = f"split {split!r}" if held_out is None else "held out of the sample: the end of each source clip"
    val_data = replace(data, split=split)
    if held_out is None:  # val_clips of the split
        held_out = spread_keys(build_loader(val_data, method.views(), device=device), data.val_clips)
    per_process = len(held_out) // world
    classes = len(read_manifest(data.shards).get("classes", []))
    encoder = rgb_encoder(method) if classes >= 2 and data.val_gallery else None
    if per_process == 0:
        return None
    views = method.views() + ([knn_view(method.views())] if encoder else [])
    batch = min(data.batch_size, per_process)  # the same batch count on every process: methods gather
    pretext = _batches(val_data, views, held_out, batch, per_process // batch, rank, world, device)
    gallery = []
    if encoder:
        keys = spread_keys(train_loader, data.val_gallery)
        size = min(data.batch_size, len(keys) // world)
        gallery = _batches(data, [knn_view(method.views())], keys, size, len(keys) // world // size, rank, world,
                           device) if size else []
    return Validation(pretext=pretext, gallery=gallery, encoder=encoder, num_classes=classes, source=source)


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """`module`'s BN layers normalise with the batch's statistics, as in training, without moving their running
    statistics (momentum 0; the batch counter restored)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in layers]
    for m in layers:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (training, momentum, tracked) in zip(layers, saved):
            m.train(training)
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@torch.no_grad()
def validate(method: Method, val: Validation, accelerator: Any) -> dict[str, float]:
    """{"loss", <term>, "acc"...: the means over the validation batches, "knn_top1", "seconds"}, the same on
    every process. Training state (train mode, RNG, want_metrics) is restored afterwards."""
    started = time.perf_counter()
    training, want = method.training, method.want_metrics
    method.eval()
    method.want_metrics = True
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)  # the same draws (MoCo's key shuffle) at every evaluation
            sums: dict[str, torch.Tensor] = {}
            for batch in val.pretext:
                with accelerator.autocast(), batch_statistics(method):
                    out = method(batch)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0) + v.detach().float()
            values = {k: v / len(val.pretext) for k, v in sums.items()}
            if val.gallery:
                values["knn_top1"] = torch.tensor(knn_top1(method, val, accelerator), device=accelerator.device)
    finally:
        method.train(training)
        method.want_metrics = want
    reduced = accelerator.reduce(torch.stack(list(values.values())), "mean").tolist()  # host sync
    return dict(zip(values, reduced)) | {"seconds": time.perf_counter() - started}


def knn_top1(method: Method, val: Validation, accelerator: Any) -> float:
    """kNN top-1 of the validation clips' centre crops against the gallery's, over every process's clips."""
    encoder = method.encoders()[val.encoder]

    def embed(batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        with accelerator.autocast():
            feats = torch.cat([clip_features(encoder, b[KNN_VIEW]).float() for b in batches])  # (N, D)
        labels = torch.cat([b["label"] for b in batches])  # (N,)
        return accelerator.gather(feats).cpu(), accelerator.gather(labels).cpu()

    query, query_labels = embed(val.pretext)
    gallery, gallery_labels = embed(val.gallery)
    votes = knn_votes(query, gallery, gallery_labels, val.num_classes, min(KNN_K, len(gallery)))  # (Q, C)
    return topk_accuracy(votes, query_labels, ks=(1,))["top1"]
