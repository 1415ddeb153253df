"""Every NVIDIA DALI operator fastvid uses (DALI renames operators between releases: keep them here).

`views_pipeline` reads shards with `fn.readers.webdataset`, asks `SampleDrawer` (numpy, one call per
sample) for every random draw, decodes each video once at the union of the frames its views need,
and applies each view's crop/flip (one affine matrix per frame), colour jitter and blur. It returns
uint8 frames (T, H, W, C) per video view, log-mel spectrograms per audio view, and the draws that
the torch side (`fastvid.data.loader`) still needs (flow sign, channel split, masks, reversal).
`decode_pipeline` is the decode-only ceiling for benchmarks/loader.py.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from fastvid.data.pyav import decode_frames
from fastvid.data.sampling import SampleDrawer, hop_samples
from fastvid.data.spec import ViewSpec

READER = "shards"  # the reader's name: the iterator takes the epoch length from it
CPU_CODECS = ("vp9", "vp8", "mjpeg")  # what DALI's CPU video decoder accepts (not H.264)


@dataclass
class ReaderArgs:
    """What `fn.readers.webdataset` needs, from the manifest and the process's rank."""

    tars: list[str]
    indices: list[str]
    shard_id: int = 0
    num_shards: int = 1
    shuffle_buffer: int = 256
    pad_last_batch: bool = False


def _read(reader: ReaderArgs, exts: list[str]):
    """The members named by `exts` of each sample, in a shuffled, sharded stream."""
    return fn.readers.webdataset(
        paths=reader.tars, index_paths=reader.indices, ext=exts, name=READER,
        random_shuffle=reader.shuffle_buffer > 0, initial_fill=max(reader.shuffle_buffer, 1),
        shard_id=reader.shard_id, num_shards=reader.num_shards, pad_last_batch=reader.pad_last_batch,
        missing_component_behavior="error", dtypes=[types.UINT8] * len(exts))


def _decode(data, frames, codec: str, device: str):
    """(F, H, W, 3) uint8 frames at `frames` (any order, repeats allowed); device "cpu" or "mixed"."""
    if device == "cpu" and codec not in CPU_CODECS:  # H.264 on the CPU: PyAV inside the pipeline
        return fn.python_function(data, frames, function=decode_frames, num_outputs=1)
    return fn.decoders.video(data, device=device, frames=frames)


def _spatial(frames, view: ViewSpec, draws: dict):
    """Crop + resize + flip as one warp per frame, then colour jitter/grayscale and blur."""
    name = view.name
    out = fn.warp_affine(frames, matrix=fn.per_frame(draws[f"{name}.affine"]), size=list(view.spatial.size),
                         inverse_map=True, fill_value=0, interp_type=types.INTERP_LINEAR)
    if view.modality == "flow":  # flow fields get no photometric augmentation
        return out
    colour = draws[f"{name}.colour"]  # (T, 4): brightness, contrast, saturation, hue
    out = fn.color_twist(out, brightness=fn.per_frame(colour[:, 0]), contrast=fn.per_frame(colour[:, 1]),
                         saturation=fn.per_frame(colour[:, 2]), hue=fn.per_frame(colour[:, 3]))
    return fn.gaussian_blur(out, sigma=fn.per_frame(draws[f"{name}.sigma"]))


def _flow_planes(frames):
    """(F, H, 2W, 3) decoded flow frames -> (F, H, W, 2) uint8 (u, v) from the left and right halves."""
    luma = frames[:, :, :, 0:1]  # chroma is neutral: any channel carries the value
    u = fn.slice(luma, rel_start=[0.0], rel_shape=[0.5], axes=[2])
    v = fn.slice(luma, rel_start=[0.5], rel_shape=[0.5], axes=[2])
    return fn.cat(u, v, axis=3)


def _audio(flac, view: ViewSpec, draws: dict, rate: int, device: str):
    """(F_mel, T_mel) float32 log-mel spectrogram of the window starting at the followed view's first frame."""
    spec = view.audio
    wave, _ = fn.decoders.audio(flac, sample_rate=rate, downmix=True, dtype=types.FLOAT)  # (S,)
    window = fn.slice(wave, start=draws[f"{view.name}.start"], shape=[round(spec.seconds * rate)], axes=[0],
                      out_of_bounds_policy="pad")
    window = window * draws[f"{view.name}.gain"]  # volume jitter
    if device == "mixed":
        window = window.gpu()
    win = round(spec.window_ms * rate / 1000)
    power = fn.spectrogram(window, nfft=max(win, 2 ** int(np.ceil(np.log2(win)))), window_length=win,
                           window_step=hop_samples(spec, rate), center_windows=True)  # (F, T)
    mel = fn.mel_filter_bank(power, sample_rate=rate, nfilter=spec.mel_bins, freq_high=rate / 2)
    return fn.to_decibels(mel, multiplier=10.0, cutoff_db=-80.0)  # (F_mel, T_mel)


@pipeline_def
def views_pipeline(reader: ReaderArgs, views: list[ViewSpec], drawer: SampleDrawer, codec: str,
                   audio_rate: int, device: str):
    """Outputs, in order: `output_names(views, drawer)`."""
    flow_views = [v for v in views if v.modality == "flow"]
    audio_views = [v for v in views if v.modality == "audio"]
    rgb_views = [v for v in views if v.modality not in ("flow", "audio")]
    exts = ["json"] + (["mp4"] if rgb_views else []) + (["flow.mp4"] if flow_views else []) \
        + (["flac"] if audio_views else [])
    members = dict(zip(exts, _read(reader, exts)))
    draws = dict(zip(drawer.names, fn.python_function(members["json"], function=drawer,
                                                       num_outputs=len(drawer.names))))
    outputs = [draws["label"], draws["index"]]
    for group, source in ((rgb_views, "mp4"), (flow_views, "flow.mp4")):
        if not group:
            continue
        name = "frames" if source == "mp4" else "flow_frames"
        decoded = fn.sequence_rearrange(_decode(members[source], draws[name], codec, device),
                                        new_order=draws[f"{name}.order"])  # (F_views, H, W, 3)
        if source == "flow.mp4":
            decoded = _flow_planes(decoded)
        first = 0
        for view in group:  # each view is a fixed-length run of the one decode
            frames = decoded[first:first + view.temporal.frames]
            first += view.temporal.frames
            outputs += [_spatial(frames, view, draws), draws[f"{view.name}.aux"]]
    for view in audio_views:
        outputs += [_audio(members["flac"], view, draws, audio_rate, device), draws[f"{view.name}.aux"]]
    return tuple(outputs)


def output_names(views: list[ViewSpec]) -> list[str]:
    """Names of `views_pipeline`'s outputs, in its order."""
    names = ["label", "index"]
    ordered = [v for v in views if v.modality not in ("flow", "audio")] + \
        [v for v in views if v.modality == "flow"] + [v for v in views if v.modality == "audio"]
    for v in ordered:
        names += [v.name, f"{v.name}.aux"]
    return names


@pipeline_def
def decode_pipeline(reader: ReaderArgs, codec: str, device: str, frames_of: Callable[[np.ndarray], np.ndarray]):
    """Decode-only ceiling: the frames `frames_of(json bytes)` names, no augmentation."""
    data, meta = _read(reader, ["mp4", "json"])
    return _decode(data, fn.python_function(meta, function=frames_of, num_outputs=1), codec, device)
