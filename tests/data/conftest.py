"""Session fixtures: shard sets of frame-marked clips (tests/clips.py) written by `fastvid.shard`.

Six clips in two classes, 12 to 48 frames (12 < 16 exercises looping), with the stepped-tone audio;
VP9 and MJPEG (DALI's CPU decoder reads both) and H.264 (the PyAV path), and a VP9 set with optical flow."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
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


def _shards(src: Path, out: Path, codec: str, **options) -> Path:
    shard_dataset(ShardConfig(**{"src": str(src), "out": str(out), "codec": codec, "crf": 16, "short_side": 64,
                                 "gop": 4, "workers": 1, "max_samples": 3, "audio_rate": RATE, "progress": False,
                                 **options}))
    return out


@pytest.fixture(scope="session")
def vp9_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("vp9"), "vp9")


@pytest.fixture(scope="session")
def h264_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("h264"), "h264")


@pytest.fixture(scope="session")
def mjpeg_shards(marked_src, tmp_path_factory) -> Path:
    """Full-range 4:2:0 (yuvj420p): the other YUV -> RGB map."""
    return _shards(marked_src, tmp_path_factory.mktemp("mjpeg"), "mjpeg")


@pytest.fixture(scope="session")
def flow_shards(marked_src, tmp_path_factory) -> Path:
    return _shards(marked_src, tmp_path_factory.mktemp("flow"), "vp9", flow="farneback")


@pytest.fixture(scope="session")
def flow_h264_shards(marked_src, tmp_path_factory) -> Path:
    """For NVDEC, which decodes VP9 only from 128x128 up: these clips are 80x64."""
    return _shards(marked_src, tmp_path_factory.mktemp("flow_h264"), "h264", flow="farneback")


SHIFT = (2.0, 1.0)  # (u, v) px per frame of the moving-texture clips


@pytest.fixture(scope="session")
def moving_src(tmp_path_factory) -> Path:
    """Two clips whose texture moves exactly SHIFT px per frame."""
    src = tmp_path_factory.mktemp("moving_src")
    texture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (96, 128, 3)).astype(np.uint8), (0, 0), 1.5)
    for k in range(2):
        path = src / "moving" / f"clip{k}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv444p"
            stream.options = {"crf": "4", "preset": "veryfast"}
            for i in range(10):  # the window slides up-left, so the content moves right and down
                y, x = 20 - int(SHIFT[1]) * i, 40 - int(SHIFT[0]) * i + k
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[y:y + 64, x:x + 80]), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return src


MOVING = {"crf": 8, "audio": False, "flow": "farneback", "max_samples": None}


@pytest.fixture(scope="session")
def moving_shards(moving_src, tmp_path_factory) -> Path:
    return _shards(moving_src, tmp_path_factory.mktemp("moving"), "vp9", **MOVING)


@pytest.fixture(scope="session")
def moving_h264_shards(moving_src, tmp_path_factory) -> Path:
    return _shards(moving_src, tmp_path_factory.mktemp("moving_h264"), "h264", **MOVING)
