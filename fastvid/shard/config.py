"""`ShardConfig`: every setting of `fastvid shard`, one dataclass (mirrored by the CLI flags)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Literal

from fastvid.config import ConfigError

Codec = Literal["h264", "vp9", "mjpeg"]
FlowMethod = Literal["tvl1", "dis", "farneback"]

# Codec quality when `crf` is None: x264 CRF, libvpx-vp9 CRF, MJPEG quantiser scale (2 best .. 31).
DEFAULT_CRF = {"h264": 23, "vp9": 32, "mjpeg": 3}

# Fields that do not change the bytes written; a resumed run may change them freely.
RUNTIME_FIELDS = ("out", "workers", "timeout", "progress", "strict", "ray")


@dataclass
class ShardConfig:
    """What to shard (src), where (out) and how every sample is re-encoded.

    src: a folder of videos (recursive, parent folder = class) or a CSV/JSONL manifest with columns
    `path`, optional `label`, `split`, `key` (relative paths are relative to the manifest's folder).
    short_side: output short side in pixels, a multiple of `align`; 0 keeps the source size, each side
    rounded down to a multiple of `align`.
    align: width and height become multiples of this (16, the default, suits hardware decoders: coded
    size = display size); the long side is rounded, changing the aspect ratio by a few percent at most.
    2 keeps the old rule (even sizes, aspect kept to within a pixel).
    fps: output frame rate; None keeps the source rate (variable-rate sources are resampled to their mean).
    gop: a keyframe exactly every `gop` frames, so random access decodes at most gop-1 extra frames.
    shard_size: bytes after which a shard is closed; max_samples: samples after which it is closed.
    seed: orders the samples inside each split (so a shard mixes classes); same seed, same shards.
    workers: transcoding processes, 0 = all cores (with `ray`: the CPUs of a cluster started for the run; a
    running cluster's CPUs all take tasks).
    timeout: seconds one video may take before its worker is stopped and the file rejected; 0 = no limit.
    ray: None transcodes in this machine's worker processes; a Ray cluster's address (`host:6379`, `auto`)
    or "local" (a cluster started for this run, `workers` CPUs) runs one task per video there instead
    (fastvid/shard/cluster.py). Same bytes either way, so a run may resume on the other.
    """

    src: str
    out: str
    split_files: list[str] = field(default_factory=list)
    default_split: str = "train"
    codec: Codec = "h264"
    crf: int | None = None
    preset: str = "veryfast"
    short_side: int = 128
    align: int = 16
    fps: float | None = None
    gop: int = 16
    audio: bool = True
    audio_rate: int = 24000
    flow: FlowMethod | None = None
    shard_size: int = 256 * 1024 * 1024
    max_samples: int | None = None
    seed: int = 0
    workers: int = 0
    timeout: float = 1800.0
    strict: bool = False
    progress: bool = True
    ray: str | None = None

    def __post_init__(self) -> None:
        if self.short_side < 0:
            raise ConfigError(f"short_side: must be >= 0 pixels (0 keeps the size), got {self.short_side}")
        if self.align not in (2, 4, 8, 16):
            raise ConfigError(f"align: must be 2, 4, 8 or 16 pixels, got {self.align}")
        if self.short_side % self.align:
            raise ConfigError(f"short_side: {self.short_side} is not a multiple of align={self.align}; pick a "
                              f"multiple (e.g. {self.align * round(self.short_side / self.align) or self.align}) "
                              "or a smaller align")
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise ConfigError(f"fps: must be in (0, 1000], got {self.fps}")
        if self.gop < 1:
            raise ConfigError(f"gop: must be >= 1, got {self.gop}")
        if self.audio_rate < 1000:
            raise ConfigError(f"audio_rate: must be >= 1000 Hz, got {self.audio_rate}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size: must be a positive number of bytes, got {self.shard_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples: must be >= 1, got {self.max_samples}")
        if self.workers < 0:
            raise ConfigError(f"workers: must be >= 0 (0 = all cores), got {self.workers}")
        if self.timeout < 0:
            raise ConfigError(f"timeout: must be >= 0 seconds (0 = no limit), got {self.timeout}")
        if self.ray is not None and not self.ray.strip():
            raise ConfigError(f"ray: a Ray cluster's address (host:port, auto) or 'local', got {self.ray!r}")
        if not self.default_split.replace("_", "").isalnum():
            raise ConfigError(f"default_split: letters, digits and _ only, got {self.default_split!r}")

    @property
    def quality(self) -> int:
        """The codec's quality setting (CRF, or the MJPEG quantiser scale)."""
        return DEFAULT_CRF[self.codec] if self.crf is None else self.crf

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def output_options(self) -> dict:
        """The options that decide the bytes written: a resumed run must use the same ones."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_FIELDS}
