"""Declarative loader settings: `DataConfig` (where the shards are, batching, seeds) and `ViewSpec`
(what one view of a video is: which frames, which spatial and aural augmentation, which output).

A method states its views as a list of `ViewSpec`s; `fastvid.data.plans` compiles each into the plan of its
modality, which draws it per sample (`fastvid.data.sampling`), has the loader's worker processes
(`fastvid.data.source`) decode only the GOPs it needs, and builds its part of the DALI pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Modality = Literal["rgb", "frame", "diff", "flow", "audio"]
Dtype = Literal["float32", "float16", "bfloat16"]

# ImageNet statistics, the normalisation used by the torchvision video backbones.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


@dataclass
class TemporalSpec:
    """Which frames a view takes.

    Views naming the same `anchor` share one draw of the anchor window start (the thesis's shared
    "Random m" clip); each view then reads `frames` frames `stride` apart from `start + offset`. With a
    shift s the window is 2s frames longer and each view starts s + r into it, r its own draw in [-s, s]
    (RandomShift: two views of an anchor lie a triangular -2s..2s apart). With drop, one draw per anchor
    picks the parity the views of phase 0 keep; views of phase 1 keep the other (complementary versions).
    Frame indices past the end loop back to the start."""

    frames: int = 16  # m: frames delivered
    stride: int = 1
    anchor: str = "clip"
    start: Literal["random", "middle", "flow"] = "random"  # flow: P(start) ~ mean flow magnitude
    window: int | None = None  # frames the anchor window spans (default: what the view reads)
    offset: int = 0  # first frame relative to the anchor start
    shift: int = 0  # RandomShift [-s, s], in source frames
    drop: bool = False  # read 2m frames, keep the even or the odd ones
    phase: int = 0  # drop: 0 keeps the anchor's drawn parity, 1 the other one
    reverse: float = 0.0  # probability of reversing the frame order
    shuffle: bool = False  # random permutation of the m frames

    def span(self) -> int:
        """Frames of the source video a draw covers before looping: the frames read and the 2s a shift
        can move them."""
        return ((2 if self.drop else 1) * self.frames - 1) * self.stride + 1 + 2 * self.shift


@dataclass
class SpatialSpec:
    """Spatial augmentation of a view. One random draw serves every frame of the view (chunk-consistent)
    unless `per_frame` asks for a new draw per frame (thesis Table 3). Views with the same `group` share
    the crop and flip draw (Cross and Learn's RGB frame and its flow stack).

    Colour jitter takes torchvision ColorJitter's ranges but is one linear colour map, so it differs in
    three details: contrast pivots on mid-grey 128 (torchvision: the image's mean grey), hue turns the
    YIQ chroma plane (torchvision: an HSV hue shift), and values are clamped once at the end."""

    size: tuple[int, int] = (112, 112)  # output (H, W)
    crop: Literal["random_resized", "resize_crop", "center"] = "random_resized"
    scale: tuple[float, float] = (0.2, 1.0)  # random_resized: area fraction
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)  # random_resized: aspect ratio w/h
    short_side: int = 128  # resize_crop: the short side is scaled to this before the random crop
    # resize_crop: draw the short side in [short_side, short_side_jitter * short_side] instead, rounded to a
    # pixel (GDT's scale jitter: [128, 160] for 112 crops)
    short_side_jitter: float = 1.0
    flip: float = 0.5  # probability of a horizontal flip
    jitter: float = 0.0  # probability of colour jitter
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # torchvision's ColorJitter unit, a fraction of a full turn: shift in [-hue, hue] * 360 deg
    grayscale: float = 0.0  # probability
    blur: float = 0.0  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in output pixels
    channel_split: bool = False  # keep one random colour channel, copied to all three
    group: str | None = None
    per_frame: bool = False
    normalize: bool = True  # (x / 255 - mean) / std for RGB
    flow_mean: bool = False  # subtract each flow frame's mean vector (camera motion)
    flow_flip: float = 0.0  # probability of reversing the flow stack in time

    def __post_init__(self) -> None:
        if not 0.0 <= self.hue <= 0.5:  # torchvision's bound: more than half a turn would wrap around
            raise ValueError(f"hue {self.hue} is a fraction of a full turn (torchvision's unit) and must be in "
                             "[0, 0.5]")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale {tuple(self.scale)}: a crop-area range (low, high) with 0 < low <= high <= 1")
        if self.short_side_jitter < 1.0:
            raise ValueError(f"short_side_jitter {self.short_side_jitter} must be >= 1 (the largest short side "
                             "over the smallest)")


@dataclass
class AudioSpec:
    """Log-mel spectrogram of the flac window that starts with the first frame of view `follow`.
    Defaults follow GDT's audio setup at the shard rate: 1 s windows, 40 mel bands, 10 ms hop."""

    follow: str
    seconds: float = 1.0
    mel_bins: int = 40
    window_ms: float = 20.0
    hop_ms: float = 10.0
    volume: tuple[float, float] = (0.9, 1.1)  # gain range (volume jitter)
    freq_masks: int = 1
    freq_mask_max: int = 8  # mel bins
    time_masks: int = 1
    time_mask_max: int = 20  # spectrogram frames


@dataclass
class ViewSpec:
    """One entry of a batch: `name` becomes the batch key.

    Output: rgb/diff/flow -> (N, C, T, H, W); frame -> (N, C, H, W); audio -> (N, 1, F_mel, T_mel).
    diff delivers the frames (temporal.frames of them); the model takes their differences."""

    name: str
    modality: Modality = "rgb"
    temporal: TemporalSpec = field(default_factory=TemporalSpec)
    spatial: SpatialSpec = field(default_factory=SpatialSpec)
    audio: AudioSpec | None = None
    dtype: Dtype = "float32"

    def __post_init__(self) -> None:  # what each modality needs besides is checked by its plan (fastvid.data.plans)
        if self.temporal.frames < 1 or self.temporal.stride < 1:
            raise ValueError(f"view {self.name!r}: frames and stride must be >= 1")


@dataclass
class DataConfig:
    """Where the shards are and how batches are formed. `shards`: a dataset.json or its directory."""

    shards: str
    split: str = "train"
    batch_size: int = 8
    shuffle: bool = True  # each epoch a full permutation seeded by (seed, epoch); false: shard order
    seed: int = 0
    # cpu: PyAV in `workers` processes decodes only the GOPs the views need (any codec) into 4:2:0 planes;
    # augmentation (with YUV -> RGB) runs on the loader's device. gpu: DALI's NVDEC decoder, given only those GOPs (the workers cut them
    # out). dali-cpu: DALI's CPU decoder likewise (VP9/MJPEG only). auto: cpu (gpu is not measured yet).
    decode: Literal["auto", "cpu", "gpu", "dali-cpu"] = "auto"
    workers: int = 0  # decode processes; 0: one per CPU core
    threads: int = 2  # DALI's CPU threads (augmentation when the device is the CPU)
    # Batches computed ahead by each worker and by the pipeline.
    prefetch: int = 2
    drop_last: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    verify: bool = True  # check each member read against the CRC-32 `fastvid shard` recorded (~0.1-0.4% of decoding)
    # Validation while training (`fastvid.validation`, every train.val_every steps): held-out clips.
    # auto: the shards' "val" split, else "test", else none; "none": no validation; "holdout" (the demo): the end
    # of each source clip of the embedded sample, and no training clip that shares a frame with it
    val_split: str = "auto"
    val_clips: int = 64  # at most this many validation clips, spread evenly over the split in shard order
    val_gallery: int = 256  # training clips (centre crops) forming the kNN gallery on labelled shards; 0: no kNN
