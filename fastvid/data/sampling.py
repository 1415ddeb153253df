"""Every random draw of a sample, in numpy, from the sample's metadata and a seeded generator.

The loader's workers run `SampleDrawer` once per sample (`fastvid.data.source`) and DALI applies the
draws with deterministic operators: frame indices go to the decoder's `frames=` argument, a crop and
flip become one region of interest for `resize` (a matrix per frame for `warp_affine` in frame-wise
mode), each colour draw is one affine map of RGB for `coord_transform`. Keeping the draws here makes them
shareable between views (anchors, groups), keyed by (seed, epoch, sample index)
so a seed reproduces a batch whatever the shuffle order, and testable without decoding anything.
"""
from __future__ import annotations

import math
import numpy as np

from fastvid.data.spec import SpatialSpec, TemporalSpec, ViewSpec



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


def view_frames(t: TemporalSpec, anchor: int, num_frames: int, rng: np.random.Generator,
                parity: int = 0) -> tuple[np.ndarray, int, bool]:
    """Frame indices (m,) of one view, the first frame in time order, and whether it was reversed.

    Applies RandomShift (the view starts s + r into its anchor window, r uniform in [-s, s]), then the
    offset, frame drop (keeping the frames of parity (`parity` + phase) mod 2 of the 2m read, `parity` the
    anchor's draw), reverse and shuffle; indices past the end loop back to the start (the thesis's
    Random m), so an offset into a looped anchor window follows the loop (Vi2CLR's middle frame of a short
    clip)."""
    start = anchor
    if t.shift:  # the anchor window has s frames to spare on each side of the unshifted clip
        start = anchor + t.shift + int(rng.integers(-t.shift, t.shift + 1))
    start = (start + t.offset) % num_frames
    count = 2 * t.frames if t.drop else t.frames
    idx = start + t.stride * np.arange(count)
    if t.drop:
        idx = idx[(parity + t.phase) % 2::2]
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
    short = s.short_side
    if s.crop == "resize_crop" and s.short_side_jitter > 1.0:  # GDT's authors: round(uniform(min, max))
        short = round(rng.uniform(s.short_side, s.short_side * s.short_side_jitter))
    k = short / min(width, height)  # source -> resized scale
    w, h = min(out_w / k, width), min(out_h / k, height)
    if s.crop == "center":
        return (width - w) / 2, (height - h) / 2, w, h
    return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h


def roi(box: tuple[float, float, float, float], flip: bool) -> np.ndarray:
    """(4,) `resize` region (y0, x0, y1, x1) in source pixels; x1 < x0 mirrors it (a horizontal flip)."""
    x0, y0, w, h = box
    return np.array([y0, x0 + w, y0 + h, x0] if flip else [y0, x0, y0 + h, x0 + w], np.float32)


def affine(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(2, 3) matrix mapping output pixel coordinates to source coordinates (warp_affine's inverse map)
    that samples the same region as `resize` with `region`: frame-wise mode's per-frame geometry."""
    y0, x0, y1, x1 = region.tolist()
    out_h, out_w = size
    return np.array([[(x1 - x0) / out_w, 0.0, x0], [0.0, (y1 - y0) / out_h, y0]], np.float32)


# RGB -> YIQ: hue turns and saturation scales the (I, Q) chroma plane, leaving luma Y (grey) alone.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def colour(s: SpatialSpec, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One colour draw as a (3, 4) affine map [M | t] of 0-255 RGB (`coord_transform`), and a blur sigma
    (0: no blur).

    Brightness b, contrast c about mid-grey 128, saturation and hue (torchvision's ColorJitter ranges;
    hue as a turn of the YIQ chroma plane, the linear stand-in for an HSV hue shift), grayscale as
    saturation 0, then channel splitting (one channel copied to all three): all linear, so one matrix."""
    b = c = sat = 1.0
    hue = 0.0
    if rng.random() < s.jitter:
        b = rng.uniform(1 - s.brightness, 1 + s.brightness)
        c = rng.uniform(1 - s.contrast, 1 + s.contrast)
        sat = rng.uniform(1 - s.saturation, 1 + s.saturation)
        hue = rng.uniform(-s.hue, s.hue) * 2 * np.pi  # torchvision's unit: a fraction of a full turn
    if rng.random() < s.grayscale:
        sat = 0.0
    cos, sin = sat * np.cos(hue), sat * np.sin(hue)
    chroma = YIQ_TO_RGB @ np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]]) @ RGB_TO_YIQ
    m = b * c * chroma  # grey (1, 1, 1) is a fixed direction of `chroma`, so the offset stays grey
    if s.channel_split:
        m = m[[int(rng.integers(3))] * 3]
    sigma = rng.uniform(*s.blur_sigma) if rng.random() < s.blur else 0.0
    return np.concatenate([m, np.full((3, 1), 128.0 * (1 - c))], axis=1).astype(np.float32), float(sigma)


class SampleDrawer:
    """`draw(meta, index)`: a sample's shard json and dataset position -> the arrays named by `names`, for
    epoch `epoch`.

    `frames` / `flow_frames`: the sorted distinct frames the rgb/frame/diff (flow) views need, and
    `frames.order` / `flow_frames.order`: positions in them of the views' frames, concatenated in view order.
    Per video view v, with R = T frames in frame-wise mode and R = 1 otherwise (one draw for all frames):
    `{v}.roi` (R, 4) resize region (y0, x0, y1, x1) and, in frame-wise mode, `{v}.affine` (T, 2, 3) the
    same as warp_affine matrices, `{v}.colour` (R, 3, 4) colour map of 0-255 RGB, `{v}.sigma` (R,) blur
    sigma (a tiny one for frames without blur), `{v}.blur` () whether any frame is blurred, `{v}.aux` (4,)
    = (u scale, v scale, temporal flip, bound): the factors that map source-pixel flow to output pixels (u's
    negative under a flip) and the bound its stored values were quantised with (KEY.json's `flow.bound`;
    0 for a view that is not flow).
    Per audio view a: `{a}.start` (1,) int32 sample, `{a}.gain` (), `{a}.reverse` () int32,
    `{a}.aux` = (mask starts and widths...). Plus `label` and `index`."""

    def __init__(self, views: list[ViewSpec], seed: int, epoch: int = 0):
        self.views = views
        self.seed = seed
        self.epoch = epoch
        self.video = [v for v in views if v.modality != "audio"]
        self.audio = [v for v in views if v.modality == "audio"]
        names = [v.name for v in views]
        for a in self.audio:
            if a.audio.follow not in names:
                raise ValueError(f"audio view {a.name!r} follows unknown view {a.audio.follow!r}")
        # An anchor shared with a flow view is drawn over the n - 1 flow frames (flow i: frame i -> i+1).
        self.flow_anchors = {v.temporal.anchor for v in self.video if v.modality == "flow"}
        self.names = ["label", "index"]
        if any(v.modality != "flow" for v in self.video):
            self.names += ["frames", "frames.order"]
        if any(v.modality == "flow" for v in self.video):
            self.names += ["flow_frames", "flow_frames.order"]
        for v in self.video:
            parts = ("roi", "colour", "sigma", "blur", "aux") + (("affine",) if v.spatial.per_frame else ())
            self.names += [f"{v.name}.{part}" for part in parts]
        for a in self.audio:
            self.names += [f"{a.name}.start", f"{a.name}.gain", f"{a.name}.reverse", f"{a.name}.aux"]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of one sample in this epoch: independent of order, rank and batch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def draw(self, meta: dict, index: int) -> dict[str, np.ndarray]:
        """All draws of the sample described by its shard json `meta`, at dataset position `index`."""
        rng = self.rng(index)
        n = int(meta["num_frames"])
        if n < 1 + any(v.modality == "flow" for v in self.video):  # a flow frame needs two video frames
            raise ValueError(f"num_frames {n} is too few for these views")
        magnitude = (meta.get("flow") or {}).get("magnitude")
        anchors: dict[str, int] = {}
        parities: dict[str, int] = {}  # per anchor: which half of 2m frames the drop views of phase 0 keep
        shared: dict[str, tuple[tuple[float, float, float, float], bool]] = {}
        out: dict[str, np.ndarray] = {"label": np.array(meta.get("label_index", -1), np.int64),
                                      "index": np.array(index, np.int64)}
        rgb_frames, flow_frames, first = [], [], {}
        reversed_ = {}
        for v in self.video:
            t = v.temporal
            length = n - 1 if v.modality == "flow" else n  # flow frame i: frame i -> i+1
            if t.anchor not in anchors:
                anchors[t.anchor] = anchor_start(t, n - 1 if t.anchor in self.flow_anchors else n, magnitude, rng)
            if t.drop and t.anchor not in parities:
                parities[t.anchor] = int(rng.integers(2))
            idx, first[v.name], reversed_[v.name] = view_frames(t, anchors[t.anchor], length, rng,
                                                                parities.get(t.anchor, 0))
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
        s = v.spatial
        width, height = int(meta["width"]), int(meta["height"])
        regions, colours, sigmas = [], [], []
        for i in range(v.temporal.frames if s.per_frame else 1):
            if s.group is not None and s.group in shared and not s.per_frame:
                box, flip = shared[s.group]
            else:
                box, flip = crop_box(s, width, height, rng), bool(rng.random() < s.flip)
                if s.group is not None and i == 0:
                    shared[s.group] = (box, flip)
            regions.append(roi(box, flip))
            c, sigma = colour(s, rng)
            colours.append(c)
            sigmas.append(sigma)
        tflip = float(rng.random() < s.flow_flip)
        bound = float(meta["flow"]["bound"]) if v.modality == "flow" else 0.0
        y0, x0, y1, x1 = regions[0].tolist()
        scale_u, scale_v = s.size[1] / (x1 - x0), s.size[0] / (y1 - y0)  # output px per source px; < 0: flipped
        out = {f"{v.name}.roi": np.stack(regions),  # (R, 4)
                f"{v.name}.colour": np.stack(colours),  # (R, 3, 4)
                # DALI's window for a tiny sigma has one tap: frame-wise mode's unblurred frames
                f"{v.name}.sigma": np.maximum(np.array(sigmas, np.float32), 1e-3),  # (R,)
                f"{v.name}.blur": np.array(max(sigmas) > 0),
                f"{v.name}.aux": np.array([scale_u, scale_v, tflip, bound], np.float32)}
        if s.per_frame:
            out[f"{v.name}.affine"] = np.stack([affine(r, s.size) for r in regions])  # (T, 2, 3)
        return out

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
                f"{a.name}.reverse": np.array(int(reverse), np.int32),
                f"{a.name}.aux": np.array(masks, np.float32)}


def audio_frames(spec, rate: int) -> int:
    """Spectrogram frames of a window: centred STFT windows, one per hop plus one."""
    return round(spec.seconds * rate) // hop_samples(spec, rate) + 1


def hop_samples(spec, rate: int) -> int:
    return round(spec.hop_ms * rate / 1000)
