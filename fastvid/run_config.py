"""A run's config: the method's YAML (default: the packaged `fastvid/configs/<method>.yaml`, the paper's
defaults) plus `key=value` overrides of any field, plus, for a demo on the embedded sample (`data.shards:
sample`), the `DEMO` settings that cut every method to a few minutes on a 2-core CPU.

One job, kept apart from the trainer (`fastvid.train`, which imports this module, never the reverse): the CLI,
the benchmarks and the tests read a config without importing the loop and Accelerate. Every error is a
`ConfigError` (for --resume, a `RunError`) naming the file or the override at fault.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastvid.config import ConfigError, apply_overrides, check_key, did_you_mean, from_dict, load_yaml, parse_override
from fastvid.data import DataConfig
from fastvid.errors import RunError
from fastvid.methods import METHODS, OptimConfig, get_method


@dataclass
class TrainConfig:
    """The loop. The schedule lasts `steps` optimiser steps, or `epochs` passes over the data."""

    steps: int = 0
    epochs: int = 0
    max_steps: int | None = None  # stop early (smoke runs); the schedule keeps its full length
    max_minutes: float | None = None  # also stop after the step that ends this much wall-clock time after the run's start
    grad_accum: int = 1
    mixed_precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # not "no": YAML reads that as false
    compile: bool = False
    clip_grad: float | None = None
    checkpoint_every: int = 1000  # optimiser steps; a checkpoint is also written at the end
    checkpoint_minutes: float = 15.0  # also after this much wall-clock time since the last one; 0: never
    keep_checkpoints: int = 2  # the newest N; 0 or 1: only the last (a run always keeps one to resume from)
    log_every: int = 10
    val_every: int = 1000  # optimiser steps between validations (also before the first step and at the end); 0: never
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if (self.steps > 0) == (self.epochs > 0):
            raise ConfigError(f"train: set exactly one of steps ({self.steps}) and epochs ({self.epochs}) > 0 "
                              f"(e.g. train.steps=N train.epochs=0)", "train")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes: must be > 0, got {self.max_minutes}", "train.max_minutes")
        for name in ("checkpoint_minutes", "keep_checkpoints", "val_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}", f"train.{name}")


@dataclass
class RunConfig:
    """A whole run, as in configs/<method>.yaml; `model` is the method's own Config dataclass. `demo` lists
    the DEMO overrides a run on the embedded sample applied to the paper's settings."""

    method: str
    model: Any
    optim: OptimConfig
    data: DataConfig
    train: TrainConfig
    output: str = ""
    demo: list[str] = field(default_factory=list)


# The demo (no --data): what changes from the paper's settings so that every method ends in a few minutes on a
# 2-core CPU (each measured in the README). Batches fit the sample: 36 training clips, 7 with sound (GDT's).
DEMO_COMMON = ["data.batch_size=8", "train.epochs=0", "optim.warmup_steps=0",
               "train.log_every=2", "data.val_split=holdout", "data.val_clips=8",
               "data.val_gallery=0"]  # the sample's labels are its 3 videos: kNN is 1.0 at random init, and 2.5x the cost
DEMO: dict[str, list[str]] = {
    # Adam with a cosine decay over 200 steps at 80 px (CaffeNet's 67 px minimum, plus room for a crop): with the
    # paper's SGD at 0.01 the loss settles at the collapsed value 0 (features alike for every pair) and its top-1 at
    # chance; at a constant Adam rate the 36 training clips are overfitted after ~200 steps (benchmarks/RESULTS.md).
    "cross_and_learn": ["train.steps=200", "train.val_every=25", "model.views.size=80", "model.views.short_side=96",
                        "optim.name=adam", "optim.lr=1e-4", "optim.weight_decay=1e-5", "optim.schedule=cosine"],
    # The shift scales with the clip (8 of 16 frames -> 4 of 8); crops of at least half the area: with [0.08, 1]
    # at 64 px the two views share too little for a batch of 8 to learn from in minutes (benchmarks/RESULTS.md).
    "video_simclr": ["train.steps=60", "train.val_every=10", "model.views.frames=8", "model.views.size=64",
                     "model.views.shift=4", "model.views.crop_scale=[0.5,1.0]"],
    # MoCo as videoSimCLR's demo, plus what a small run needs: Adam at the thesis code's videoSimCLR rate (SGD at
    # 0.03 x 8 / 128 barely moves), momentum 0.99 so the keys follow within tens of steps, and a queue of two
    # batches (the sample's 32 clips an epoch would otherwise queue every query's own earlier key as a negative);
    # shuffling BN in 2 groups of 4 clips (4 groups of 2, the paper's split of 128, normalise each channel to the
    # sign of a difference of two clips). 32 px and 200 steps: its gradient reaches the query encoder only, and
    # at 64 px 60-120 steps stayed within 5% of chance; 32 px steps are cheaper (benchmarks/RESULTS.md).
    "video_moco": ["train.steps=200", "train.val_every=25", "model.views.frames=8", "model.views.size=32",
                   "model.views.crop_scale=[0.5,1.0]", "model.queue_size=16", "model.momentum=0.99",
                   "model.bn_splits=2", "optim.name=adam", "optim.lr=3e-4", "optim.weight_decay=1e-6"],
    # Adam 3e-4 with a cosine decay over 60 steps: with the authors' SGD (0.01, scaled to the batch of 4) its training
    # loss fell 4% in 40 steps; in 12 its validation loss moved 7% and its training loss rose (benchmarks/RESULTS.md).
    "gdt": ["train.steps=60", "train.val_every=10", "data.batch_size=4", "model.views.frames=8", "model.views.size=64",
            "model.views.short_side=80", "optim.name=adam", "optim.lr=3e-4", "optim.schedule=cosine"],
    # Adam 3e-4 with a cosine decay over 96 steps and crops of at least half the area, as videoSimCLR's: with the
    # model's zero-init residual blocks its validation loss falls 19% (13% below chance); zero-init residual blocks
    # with CoCLR's constant 1e-3 and [0.08, 1] crops, or these settings at torchvision's init, stay at chance
    # (benchmarks/RESULTS.md).
    "vi2clr": ["train.steps=96", "train.val_every=16", "model.views.frames=8", "model.views.clip_size=64",
               "model.views.frame_size=64", "model.views.crop_scale=[0.5,1.0]", "optim.lr=3e-4",
               "optim.schedule=cosine"],
}
TOP_LEVEL = ("method", "model", "optim", "data", "train", "output", "demo")


def _key(override: str) -> str:
    """The dotted key of a `key=value` override, to match it against the error it caused."""
    return override.split("=", 1)[0]


def _build(method: str, raw: dict[str, Any]) -> RunConfig:
    """A RunConfig from the merged mapping; `output` and `demo` are checked here, the sections by `from_dict`."""
    output = raw.get("output") or f"runs/{method}"
    if not isinstance(output, str):
        raise ConfigError(f"output: expected a folder name, got {output!r}", "output")
    demo = raw.get("demo") or []
    if not isinstance(demo, list) or not all(isinstance(d, str) for d in demo):
        raise ConfigError(f"demo: expected a list of key=value strings, got {demo!r}", "demo")
    return RunConfig(method=method, model=from_dict(get_method(method).Config, raw.get("model", {}), "model"),
                     optim=from_dict(OptimConfig, raw.get("optim", {}), "optim"),
                     data=from_dict(DataConfig, raw.get("data", {}), "data"),
                     train=from_dict(TrainConfig, raw.get("train", {}), "train"), output=output, demo=demo)


def load_config(method: str, path: str | Path | None = None, overrides: list[str] = (),
                demo: bool = False) -> RunConfig:
    """The run config of `method` from `path` (default: the packaged one) with `key=value` overrides. With
    `demo`, a config that reads the embedded sample (`data.shards: sample`) gets the method's DEMO settings
    under the overrides. Errors are ConfigErrors naming the file, or the override, at fault."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)} "
                          f"(methods: {', '.join(sorted(METHODS))})")
    path = path or resources.files("fastvid.configs") / f"{method}.yaml"
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]}{did_you_mean(unknown[0], TOP_LEVEL)}")
    if raw.get("method", method) != method:
        raise ConfigError(f"{path}: is a config for method {raw['method']!r}, not {method!r}")
    try:
        paper = _build(method, raw)  # the file alone: its errors are the file's
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", err.key) from None
    overrides = list(overrides)
    schema = {"method": str, "model": get_method(method).Config, "optim": OptimConfig, "data": DataConfig,
              "train": TrainConfig, "output": str, "demo": list[str]}
    for text in overrides:
        check_key(schema, parse_override(text)[0], text)
    if demo and apply_overrides(raw, overrides).get("data", {}).get("shards") == "sample":
        given = {_key(o) for o in overrides}
        merged = {_key(o): o for o in DEMO_COMMON + DEMO[method]}  # the method's value wins over the common one
        # SGD's learning rate follows the batch (linear scaling, the rule behind the configs' SGD values) unless the
        # demo sets one; Adam's is kept: its step size does not grow with the batch.
        chosen = apply_overrides({"data": {"batch_size": paper.data.batch_size}, "optim": {"name": paper.optim.name}},
                                 [o for k, o in merged.items() if k in ("data.batch_size", "optim.name")] + overrides)
        batch = chosen["data"]["batch_size"]
        if chosen["optim"]["name"] == "sgd" and "optim.lr" not in merged and isinstance(batch, int) \
                and not isinstance(batch, bool):  # else _build below names the bad value
            merged["optim.lr"] = f"optim.lr={paper.optim.lr * batch / paper.data.batch_size:.3g}"
        applied = [o for key, o in merged.items() if key not in given]
        overrides = applied + [f"demo={json.dumps(applied)}"] + overrides
    try:
        return _build(method, apply_overrides(raw, overrides))
    except ConfigError as err:
        blamed = [o for o in overrides if err.key and (err.key == _key(o) or err.key.startswith(_key(o) + ".")
                                                       or err.key.startswith(_key(o) + "[")
                                                       or _key(o).startswith(err.key + "."))]
        where = f"override {blamed[-1]}" if blamed else f"{path} with the overrides"
        raise ConfigError(f"{where}: {err}", err.key) from None


def run_config(method: str, config: str | None = None, overrides: list[str] = (), resume: bool = False) -> RunConfig:
    """The config of a command line: a new run's (with DEMO settings on the embedded sample), or with `resume`
    the config.yaml of the run in the output folder plus `overrides`."""
    if not resume:
        return load_config(method, config, overrides, demo=True)
    if config:
        raise RunError("--resume continues with the run's own config.yaml; pass changes as key=value, not --config")
    output = Path(load_config(method, None, overrides).output)
    if not (output / "config.yaml").is_file():
        raise RunError(f"--resume: {output} holds no run (no config.yaml); start one without --resume")
    return load_config(method, output / "config.yaml", overrides)
