"""The views each method trains on, stated after its paper (../shared/papers), one function per method.

Each takes a small dataclass of the knobs the views depend on and returns `list[ViewSpec]`; batch keys
are the view names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from fastvid.config import ConfigError
from fastvid.data.spec import AudioSpec, Dtype, SpatialSpec, TemporalSpec, ViewSpec

# The thesis's spatial transformation (sec. 3): "a random cropping ... resizing ..., a random horizontal flip,
# some random color distortions such as color jittering and random grayscaling and ... a random Gaussian
# blur", the crop "of random size in [0.08, 1] uniform in area" (sec. 5.1). Probabilities and strengths are
# not stated in the thesis: its code's (data_transform.py get_spatial_transform, config.txt strength 0.5; they
# are SimCLR's), colour distortion ColorJitter(0.4, 0.4, 0.4, 0.1) (hue 0.1 of a turn: +-36 degrees) with
# p = 0.8, grayscale p = 0.2, blur p = 0.5, sigma in [0.1, 2].
SIMCLR_SPATIAL = SpatialSpec(scale=(0.08, 1.0), jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.4,
                             hue=0.1, grayscale=0.2, blur=0.5, flip=0.5)


@dataclass
class CrossAndLearnViews:
    """Cross and Learn (Sayed et al. 2018), sec. 4.1 and the RGB+SOD variant of sec. 4.5."""

    second: Literal["flow", "sod"] = "flow"
    size: int = 224
    short_side: int = 256  # "rescale them to a height of 256", then a random 224 crop
    flow_frames: int = 10  # "a stack of 10 consecutive optical flow frames"
    sod_frames: int = 5  # 5 RGB frames -> 4 differences (computed on the model side)
    weighted: bool = True  # draw the window in proportion to its mean flow magnitude (needs --flow shards)
    dtype: Dtype = "float32"


def cross_and_learn_views(cfg: CrossAndLearnViews) -> list[ViewSpec]:
    """"rgb": the temporally centred RGB frame (N, 3, H, W), channel-split; "flow": (N, 2, 10, H, W)
    mean-subtracted, randomly reversed in time; or "sod": (N, 3, 5, H, W). Crop and flip shared."""
    window = cfg.flow_frames if cfg.second == "flow" else cfg.sod_frames
    start = "flow" if cfg.weighted else "random"
    # Flow frame i is the motion i -> i+1: a 10-flow stack spans 11 frames, centred on frame start + 5.
    centre = cfg.flow_frames // 2 if cfg.second == "flow" else (cfg.sod_frames - 1) // 2
    crop = SpatialSpec(size=(cfg.size, cfg.size), crop="resize_crop", short_side=cfg.short_side,
                       flip=0.5, group="pair")
    rgb = ViewSpec("rgb", "frame", TemporalSpec(frames=1, anchor="pair", start=start, window=window, offset=centre),
                   replace(crop, channel_split=True), dtype=cfg.dtype)
    second = TemporalSpec(frames=window, anchor="pair", start=start, window=window)
    if cfg.second == "flow":
        return [rgb, ViewSpec("flow", "flow", second, replace(crop, flow_mean=True, flow_flip=0.5), dtype=cfg.dtype)]
    return [rgb, ViewSpec("sod", "diff", second, crop, dtype=cfg.dtype)]


@dataclass
class VideoContrastViews:
    """Video SimCLR / MoCo (thesis sec. 3): a Random-m clip, two temporal versions, SimCLR spatial draws."""

    frames: int = 16
    stride: int = 1
    size: int = 112
    temporal: Literal["none", "shift", "drop", "reverse", "shuffle"] = "none"
    shift: int = 4  # RandomShift [-s, s] of each version
    frame_wise: bool = False  # thesis Table 3: a new spatial draw per frame
    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop area range, sec. 5.1: "[0.08, 1] uniform in area"
    dtype: Dtype = "float32"

    def __post_init__(self) -> None:
        check_crop_scale(self.crop_scale)


def check_crop_scale(scale: tuple[float, float]) -> None:
    """At config load, so the override is named, not a sample at read time."""
    low, high = scale
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"model.views.crop_scale: a crop-area range [low, high] with 0 < low <= high <= 1, "
                          f"got {list(scale)}", "model.views.crop_scale")


def _two_versions(cfg: VideoContrastViews, names: tuple[str, str]) -> list[ViewSpec]:
    """The thesis's temporal transforms (sec. 3, Fig. 3; its code: data_transform.py): shift moves both
    versions, each by its own RandomShift [-s, s] (their offset is triangular over [-2s, 2s]; the code's
    `range(-s, s)` leaves out +s, the thesis's [-s, s] is followed); drop makes them complementary, one the
    even and one the odd frames of 2m; reverse reverses one; shuffle permutes each."""
    base = TemporalSpec(frames=cfg.frames, stride=cfg.stride, shift=cfg.shift if cfg.temporal == "shift" else 0,
                        drop=cfg.temporal == "drop", shuffle=cfg.temporal == "shuffle")
    second = replace(base, phase=1, reverse=1.0 if cfg.temporal == "reverse" else 0.0)  # the loss is symmetric in i, j
    spatial = replace(SIMCLR_SPATIAL, size=(cfg.size, cfg.size), per_frame=cfg.frame_wise, scale=cfg.crop_scale)
    return [ViewSpec(names[0], "rgb", base, spatial, dtype=cfg.dtype),
            ViewSpec(names[1], "rgb", second, spatial, dtype=cfg.dtype)]


def video_simclr_views(cfg: VideoContrastViews) -> list[ViewSpec]:
    """"clip_i", "clip_j": (N, 3, m, H, W) each."""
    return _two_versions(cfg, ("clip_i", "clip_j"))


def video_moco_views(cfg: VideoContrastViews) -> list[ViewSpec]:
    """"query", "key": (N, 3, m, H, W) each."""
    return _two_versions(cfg, ("query", "key"))


@dataclass
class GDTViews:
    """GDT (Patrick et al. 2021), sec. 3.3: K_tau = 2 time shifts tau of a 1 s clip, each read forward (r_0)
    and reversed (r_1, K_r = 2), video and audio for each: x(T) = g(r(m(x_{i tau}))), so each view is one
    datum before the augmentation g and draws its own g (K_g = 1, "augment each datum at this level"). The
    spatial g is the authors' (github.com/facebookresearch/GDT, datasets/GDTPretrainDataset.py): the short
    side rescaled to a random length in [128, 160], a random crop, a flip and colour jitter (0.4, 0.4, 0.4)."""

    frames: int = 30  # 1 s at 30 fps
    size: int = 112
    short_side: int = 128  # smallest rescaled short side
    short_side_jitter: float = 1.25  # largest / smallest rescaled short side: 160 / 128
    seconds: float = 1.0
    dtype: Dtype = "float32"


def gdt_views(cfg: GDTViews) -> list[ViewSpec]:
    """"video{k}", "video{k}_rev": (N, 3, T, H, W), shift k's frames forward and reversed; "audio{k}",
    "audio{k}_rev": (N, 1, 40, T_mel), the audio window starting at shift k's first frame, its waveform
    forward and reversed. Every view has its own augmentation draw; reversal happens before it."""
    spatial = SpatialSpec(size=(cfg.size, cfg.size), crop="resize_crop", short_side=cfg.short_side,
                          short_side_jitter=cfg.short_side_jitter, flip=0.5, jitter=1.0, brightness=0.4,
                          contrast=0.4, saturation=0.4, hue=0.0)
    videos = [ViewSpec(f"video{k}{rev}", "rgb", TemporalSpec(frames=cfg.frames, anchor=f"tau{k}", reverse=float(r)),
                       spatial, dtype=cfg.dtype) for k in (1, 2) for r, rev in enumerate(("", "_rev"))]
    audios = [ViewSpec(v.name.replace("video", "audio"), "audio", audio=AudioSpec(follow=v.name, seconds=cfg.seconds),
                       dtype=cfg.dtype) for v in videos]
    return videos + audios


@dataclass
class Vi2CLRViews:
    """Vi2CLR (Diba et al. 2021), sec. 4.2: 32-frame temporal crops as positives, and the middle frame of
    each for the 2D (image) stream; random crop, Gaussian blur and colour jitter, temporally consistent;
    "a spatial resolution of 128x128" for the clips, whose middle frame the 2D stream takes."""

    frames: int = 32
    clip_size: int = 128
    frame_size: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)  # "random crop": not stated further; SimCLR's area range
    dtype: Dtype = "float32"

    def __post_init__(self) -> None:
        check_crop_scale(self.crop_scale)


def vi2clr_views(cfg: Vi2CLRViews) -> list[ViewSpec]:
    """"clip1", "clip2": (N, 3, 32, H, W) from two random starts; "frame1", "frame2": (N, 3, H', W'),
    the middle frame of each clip."""
    spatial = replace(SIMCLR_SPATIAL, grayscale=0.0, scale=cfg.crop_scale)
    views = []
    for k in (1, 2):
        views.append(ViewSpec(f"clip{k}", "rgb", TemporalSpec(frames=cfg.frames, anchor=f"clip{k}"),
                              replace(spatial, size=(cfg.clip_size, cfg.clip_size)), dtype=cfg.dtype))
        views.append(ViewSpec(f"frame{k}", "frame", TemporalSpec(frames=1, anchor=f"clip{k}", window=cfg.frames,
                                                                 offset=cfg.frames // 2),
                              replace(spatial, size=(cfg.frame_size, cfg.frame_size)), dtype=cfg.dtype))
    return views


def vi2clr_feature_views(cfg: Vi2CLRViews) -> list[ViewSpec]:
    """Vi2CLR's clustering input, Algorithm 1's R_J = f_VI(X): "clip1" (N, 3, 32, H, W), the temporally
    centred clip, and "frame1" (N, 3, H', W'), its middle frame; centre crops of the short side, no flip,
    colour jitter, grayscale or blur: the same every epoch."""
    plain = SpatialSpec(crop="center", flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0)
    centred = TemporalSpec(frames=cfg.frames, anchor="clip1", start="middle")
    return [ViewSpec("clip1", "rgb", centred, replace(plain, size=(cfg.clip_size,) * 2, short_side=cfg.clip_size),
                     dtype=cfg.dtype),
            ViewSpec("frame1", "frame", replace(centred, frames=1, window=cfg.frames, offset=cfg.frames // 2),
                     replace(plain, size=(cfg.frame_size,) * 2, short_side=cfg.frame_size), dtype=cfg.dtype)]
