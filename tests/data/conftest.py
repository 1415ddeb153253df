"""Session fixtures: small shard sets of frame-marked clips (VP9 and H.264, with audio).

TEMPORARY writer until fastvid.shard.shard_dataset lands; then this builds them with shard_dataset."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from tests.clips import _stepped_tone, write_marked_clip

RATE = 24000
LENGTHS = [40, 24, 12, 48, 30, 20]  # frames per clip; 12 < 16 exercises looping


def _flac(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as c:
        s = c.add_stream("flac", rate=RATE)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        f.sample_rate = RATE
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _make(out: Path, codec: str) -> Path:
    out.mkdir(parents=True)
    shards = []
    for n, chunk in enumerate([LENGTHS[:3], LENGTHS[3:]]):
        tar = out / f"train-{n:06d}.tar"
        with tarfile.open(tar, "w") as t:
            for j, frames in enumerate(chunk):
                key = f"clip{n}{j}"
                mp4 = write_marked_clip(out / f"{key}.mp4", frames, codec=codec, height=64, width=80, gop=4)
                meta = {"key": key, "label_index": n, "num_frames": frames, "fps": 25.0, "width": 80, "height": 64,
                        "audio_rate": RATE, "has_audio": True, "flow": None}
                for ext, data in (("flac", _flac(_stepped_tone(frames, 25.0, RATE))), ("json", json.dumps(meta).encode()),
                                  ("mp4", mp4.read_bytes())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
                mp4.unlink()
        subprocess.run(["wds2idx", str(tar), str(tar.with_suffix(".idx"))], check=True, capture_output=True)
        shards.append({"tar": tar.name, "index": tar.with_suffix(".idx").name, "split": "train", "samples": len(chunk)})
    (out / "dataset.json").write_text(json.dumps({"version": 1, "shards": shards, "options": {"codec": codec, "audio_rate": RATE}}))
    return out


@pytest.fixture(scope="session")
def vp9_shards(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("shards") / "vp9", "vp9")


@pytest.fixture(scope="session")
def h264_shards(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("shards") / "h264", "h264")
