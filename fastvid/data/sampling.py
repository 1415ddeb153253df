"""The random draws of a view, in numpy, from a sample's metadata and a seeded generator: which frames,
which crop and flip, which colour map and blur.

The view plans (`fastvid.data.plans`) call these once per sample in the loader's workers and DALI applies
the results with deterministic operators: frame indices select the decoded frames, a crop and flip become
one region of interest for `resize` (a matrix per frame for `warp_affine` in frame-wise mode), each colour
draw is one affine map of RGB for `coord_transform`. Plain functions of a generator, so they are testable
without decoding anything.
"""
from __future__ import annotations

import math
import numpy as np

from fastvid.data.spec import AudioSpec, SpatialSpec, TemporalSpec


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


def audio_frames(spec: AudioSpec, rate: int) -> int:
    """Spectrogram frames of a window: centred STFT windows, one per hop plus one."""
    return round(spec.seconds * rate) // hop_samples(spec, rate) + 1


def hop_samples(spec: AudioSpec, rate: int) -> int:
    """STFT hop in samples at `rate`."""
    return round(spec.hop_ms * rate / 1000)
