"""Every random draw of a sample, in numpy, from the sample's metadata and a seeded generator.

The DALI pipeline runs `SampleDrawer` once per sample (inside `fn.python_function`) and applies the
draws with deterministic operators: frame indices go to the decoder's `frames=` argument, crops and
flips become one affine matrix per frame for `warp_affine`, colour draws feed `color_twist`. Keeping the
draws here makes them shareable between views (anchors, groups), keyed by (seed, epoch, sample index)
so a seed reproduces a batch whatever the shuffle order, and testable without decoding anything.
"""
from __future__ import annotations

import json
import math
import numpy as np

from fastvid.data.spec import SpatialSpec, TemporalSpec, ViewSpec

NO_BLUR_SIGMA = 1e-3  # DALI's Gaussian window for this sigma has a single tap: the identity


def anchor_start(t: TemporalSpec, num_frames: int, flow_magnitude: list[float] | None,
                 rng: np.random.Generator) -> int:
    """First frame of an anchor window of `t.window or t.span()` frames.

    random: uniform over the starts that keep the window inside the video (0 if it is longer);
    middle: the centred window; flow: P(start) proportional to the mean flow magnitude over the window
    (Cross and Learn, sec. 4.1), uniform when the video does not move at all."""
    window = t.window or t.span()
    last = max(num_frames - window, 0)
    if t.start == "middle":
        return last // 2
    if t.start == "flow":
        if not flow_magnitude:
            raise ValueError("start='flow' needs the shard's flow magnitudes (shard with --flow)")
        mag = np.asarray(flow_magnitude, np.float64)
        starts = max(len(mag) - window + 1, 1)
        weights = np.array([mag[s:s + window].mean() for s in range(starts)])
        if weights.sum() <= 0:
            return int(rng.integers(starts))
        return int(rng.choice(starts, p=weights / weights.sum()))
    return int(rng.integers(last + 1))


def view_frames(t: TemporalSpec, anchor: int, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
    """Frame indices (m,) of one view, the first frame in time order, and whether it was reversed.

    Applies the offset from the anchor, RandomShift [-s, s] (kept inside the video), frame drop, reverse
    and shuffle; indices past the end loop back to the start (the thesis's Random m)."""
    span = t.span()
    start = anchor + t.offset + (int(rng.integers(-t.shift, t.shift + 1)) if t.shift else 0)
    start = min(max(start, 0), max(num_frames - span, 0))
    count = 2 * t.frames if t.drop else t.frames
    idx = start + t.stride * np.arange(count)
    if t.drop:
        idx = idx[int(rng.integers(2))::2]
    reversed_ = bool(rng.random() < t.reverse)
    if reversed_:
        idx = idx[::-1]
    if t.shuffle:
        idx = rng.permutation(idx)
    return (idx % num_frames).astype(np.int32), start, reversed_


def crop_box(s: SpatialSpec, width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) in source pixels of the region that becomes the output."""
    out_h, out_w = s.size
    if s.crop == "random_resized":  # torchvision's RandomResizedCrop draw
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*s.scale)
            ratio = math.exp(rng.uniform(math.log(s.ratio[0]), math.log(s.ratio[1])))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                return float(rng.integers(width - w + 1)), float(rng.integers(height - h + 1)), float(w), float(h)
        ratio = min(max(width / height, s.ratio[0]), s.ratio[1])
        w, h = (width, width / ratio) if width / height < ratio else (height * ratio, height)
        return (width - w) / 2, (height - h) / 2, float(w), float(h)
    k = s.short_side / min(width, height)  # source -> resized scale
    w, h = min(out_w / k, width), min(out_h / k, height)
    if s.crop == "center":
        return (width - w) / 2, (height - h) / 2, w, h
    return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h


def affine(box: tuple[float, float, float, float], flip: bool, size: tuple[int, int]) -> np.ndarray:
    """(2, 3) matrix mapping output pixel coordinates to source coordinates (warp_affine's inverse map)."""
    x0, y0, w, h = box
    out_h, out_w = size
    sx, sy = w / out_w, h / out_h
    if flip:
        return np.array([[-sx, 0.0, x0 + w], [0.0, sy, y0]], np.float32)
    return np.array([[sx, 0.0, x0], [0.0, sy, y0]], np.float32)


def colour(s: SpatialSpec, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """color_twist arguments (brightness, contrast, saturation, hue in degrees) and a blur sigma."""
    b = c = sat = 1.0
    hue = 0.0
    if rng.random() < s.jitter:
        b = rng.uniform(1 - s.brightness, 1 + s.brightness)
        c = rng.uniform(1 - s.contrast, 1 + s.contrast)
        sat = rng.uniform(1 - s.saturation, 1 + s.saturation)
        hue = rng.uniform(-s.hue, s.hue) * 180.0
    if rng.random() < s.grayscale:
        sat = 0.0
    sigma = rng.uniform(*s.blur_sigma) if rng.random() < s.blur else NO_BLUR_SIGMA
    return np.array([b, c, sat, hue], np.float32), float(sigma)


class SampleDrawer:
    """Callable for `fn.python_function`: json bytes -> the tuple of arrays named by `names`.

    `frames` / `flow_frames`: the sorted distinct frames the rgb/frame/diff (flow) views need, and
    `frames.order` / `flow_frames.order`: positions in them of the views' frames, concatenated in view order.
    Per video view v:
    `{v}.affine` (T, 2, 3), `{v}.colour` (T, 4), `{v}.sigma` (T,), `{v}.aux` (3,) = (flip sign,
    temporal flip, channel kept or -1). Per audio view a: `{a}.start` (1,) int32 sample, `{a}.gain` (),
    `{a}.aux` = (reverse, mask starts and widths...). Plus `label` and `index`."""

    def __init__(self, views: list[ViewSpec], key_index: dict[str, int], seed: int, epoch: int = 0):
        self.views = views
        self.key_index = key_index
        self.seed = seed
        self.epoch = epoch
        self.video = [v for v in views if v.modality != "audio"]
        self.audio = [v for v in views if v.modality == "audio"]
        names = [v.name for v in views]
        for a in self.audio:
            if a.audio.follow not in names:
                raise ValueError(f"audio view {a.name!r} follows unknown view {a.audio.follow!r}")
        self.names = ["label", "index"]
        if any(v.modality != "flow" for v in self.video):
            self.names += ["frames", "frames.order"]
        if any(v.modality == "flow" for v in self.video):
            self.names += ["flow_frames", "flow_frames.order"]
        for v in self.video:
            self.names += [f"{v.name}.affine", f"{v.name}.colour", f"{v.name}.sigma", f"{v.name}.aux"]
        for a in self.audio:
            self.names += [f"{a.name}.start", f"{a.name}.gain", f"{a.name}.aux"]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of one sample in this epoch: independent of order, rank and batch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __call__(self, meta_bytes: np.ndarray) -> tuple[np.ndarray, ...]:
        meta = json.loads(meta_bytes.tobytes())
        draw = self.draw(meta)
        return tuple(draw[n] for n in self.names)

    def draw(self, meta: dict) -> dict[str, np.ndarray]:
        """All draws of the sample described by its shard json `meta`."""
        index = self.key_index[meta["key"]]
        rng = self.rng(index)
        n = int(meta["num_frames"])
        magnitude = (meta.get("flow") or {}).get("magnitude")
        anchors: dict[str, int] = {}
        shared: dict[str, tuple[tuple[float, float, float, float], bool]] = {}
        out: dict[str, np.ndarray] = {"label": np.array(meta.get("label_index", -1), np.int64),
                                      "index": np.array(index, np.int64)}
        rgb_frames, flow_frames, first = [], [], {}
        reversed_ = {}
        for v in self.video:
            t = v.temporal
            length = n - 1 if v.modality == "flow" else n  # flow frame i: frame i -> i+1
            if t.anchor not in anchors:
                anchors[t.anchor] = anchor_start(t, length, magnitude, rng)
            idx, first[v.name], reversed_[v.name] = view_frames(t, anchors[t.anchor], length, rng)
            (flow_frames if v.modality == "flow" else rgb_frames).append(idx)
            out.update(self._spatial(v, meta, rng, shared))
        for name, runs in (("frames", rgb_frames), ("flow_frames", flow_frames)):
            if runs:  # decode each frame once, in order (going back costs a seek); rearrange after
                unique, order = np.unique(np.concatenate(runs), return_inverse=True)
                out[name], out[f"{name}.order"] = unique.astype(np.int32), order.astype(np.int32)
        for a in self.audio:
            out.update(self._audio(a, meta, first[a.audio.follow], reversed_[a.audio.follow], rng))
        return out

    def _spatial(self, v: ViewSpec, meta: dict, rng: np.random.Generator,
                 shared: dict[str, tuple[tuple[float, float, float, float], bool]]) -> dict[str, np.ndarray]:
        s, frames = v.spatial, v.temporal.frames
        width, height = int(meta["width"]), int(meta["height"])
        mats, colours, sigmas = [], [], []
        for i in range(frames if s.per_frame else 1):
            if s.group is not None and s.group in shared and not s.per_frame:
                box, flip = shared[s.group]
            else:
                box, flip = crop_box(s, width, height, rng), bool(rng.random() < s.flip)
                if s.group is not None and i == 0:
                    shared[s.group] = (box, flip)
            mats.append(affine(box, flip, s.size))
            c, sigma = colour(s, rng)
            colours.append(c)
            sigmas.append(sigma)
        reps = 1 if s.per_frame else frames  # chunk mode: the one draw for every frame
        channel = int(rng.integers(3)) if s.channel_split else -1
        tflip = float(rng.random() < s.flow_flip)
        sign = -1.0 if mats[0][0, 0] < 0 else 1.0  # a flipped flow field's u changes sign
        return {f"{v.name}.affine": np.repeat(np.stack(mats), reps, axis=0),  # (T, 2, 3)
                f"{v.name}.colour": np.repeat(np.stack(colours), reps, axis=0),  # (T, 4)
                f"{v.name}.sigma": np.repeat(np.array(sigmas, np.float32), reps),  # (T,)
                f"{v.name}.aux": np.array([sign, tflip, channel], np.float32)}

    def _audio(self, a: ViewSpec, meta: dict, first_frame: int, reverse: bool,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        spec = a.audio
        rate = int(meta["audio_rate"])
        start = round(first_frame / float(meta["fps"]) * rate)
        mel_frames = audio_frames(spec, rate)
        masks = []
        for count, limit, extent in ((spec.freq_masks, spec.freq_mask_max, spec.mel_bins),
                                     (spec.time_masks, spec.time_mask_max, mel_frames)):
            for _ in range(count):
                width = int(rng.integers(min(limit, extent) + 1))
                masks += [int(rng.integers(extent - width + 1)), width]
        return {f"{a.name}.start": np.array([start], np.int32),
                f"{a.name}.gain": np.array(rng.uniform(*spec.volume), np.float32),
                f"{a.name}.aux": np.array([float(reverse), *masks], np.float32)}


def audio_frames(spec, rate: int) -> int:
    """Spectrogram frames of a window: centred STFT windows, one per hop plus one."""
    return round(spec.seconds * rate) // hop_samples(spec, rate) + 1


def hop_samples(spec, rate: int) -> int:
    return round(spec.hop_ms * rate / 1000)
