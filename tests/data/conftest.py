"""Session fixtures: shard sets of frame-marked clips (tests/clips.py) written by `fastvid.shard`.

Six clips in two classes, 12 to 48 frames (12 < 16 exercises looping), with the stepped-tone audio;
VP9 (DALI's CPU decoder) and H.264 (the PyAV path), and a VP9 set with optical flow."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastvid.shard import ShardConfig, shard_dataset
from tests.clips import write_marked_clip

RATE = 24000
LENGTHS = {"a/clip0": 40, "a/clip1": 24, "a/clip2": 12, "b/clip3": 48, "b/clip4": 30, "b/clip5": 20}


@pytest.fixture(scope="session")
def marked_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name, frames in LENGTHS.items():
        write_marked_clip(src / f"{name}.mp4", frames, height=64, width=80, gop=4, audio_rate=RATE)
    return src


def _shards(src: Path, out: Path, codec: str, flow: str | None = None) -> Path:
    shard_dataset(ShardConfig(src=str(src), out=str(out), codec=codec, crf=16, short_side=64, gop=4, workers=1,
                              max_samples=3, audio_rate=RATE, flow=flow, progress=False))
    return out


@pytest.fixture(scope="session")
def vp9_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("vp9"), "vp9")


@pytest.fixture(scope="session")
def h264_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("h264"), "h264")


@pytest.fixture(scope="session")
def flow_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("flow"), "vp9", flow="farneback")
