"""Every NVIDIA DALI operator fastvid uses (DALI renames operators between releases: keep them here).

`views_pipeline` takes each sample from `ShardSource` (`fastvid.data.source`), a parallel
`fn.external_source` whose worker processes read the members, draw every augmentation and decode only
the GOPs the views need into 4:2:0 planes (or, for DALI's own decoder, cut those GOPs out); each view's
plan (`fastvid.data.plans`) then composes the operators below into its part of the graph: crop/flip (one
`resize` of a region per plane: chroma at half the coordinates), blur, colour map (which also takes YUV to
RGB) and normalisation for RGB, the (u, v) planes for flow, log-mel spectrograms for audio. With a GPU
(`device="mixed"`) the decoded planes move there and every operator here runs on it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types

if TYPE_CHECKING:
    from fastvid.data.plans import ViewPlans
    from fastvid.data.plans.base import GraphContext
    from fastvid.data.source import ShardSource


def external_source(source: ShardSource, device: str) -> dict[str, Any]:
    """The source's outputs by name (`source.names`, with `source.layouts`); decoded planes (layout FHWC)
    move to the GPU with device="mixed"."""
    outputs = fn.external_source(source, num_outputs=len(source.names), parallel=True, batch=False,
                                 layout=source.layouts)
    named = dict(zip(source.names, outputs))
    if device == "mixed":
        named.update({n: named[n].gpu() for n, layout in zip(source.names, source.layouts) if layout})
    return named


def decode_video(data, frames, device: str):
    """(F, H, W, 3) RGB: the frames `frames` of the (cut) member `data`, by DALI's video decoder."""
    return fn.decoders.video(data, device=device, frames=frames)


def rearrange(frames, order):
    """(len(order), H, W, C): `frames` in the order `order`."""
    return fn.sequence_rearrange(frames, new_order=order)


def per_frame(draw, frame_wise: bool):
    """(R, ...) draws -> a DALI argument: one per frame (frame-wise mode), or the sample's single one."""
    return fn.per_frame(draw) if frame_wise else draw[0]


def resample(frames, size: tuple[int, int], roi=None, affine=None, scale: float = 1.0):
    """Crop + resize + flip of (T, H, W, C) frames to `size`: a single `resize` of the region `roi` (R, 4)
    (y0, x0, y1, x1; x1 < x0 mirrors it), or per frame a `warp_affine` matrix `affine` (T, 2, 3) (frame-wise
    mode, thesis Table 3). `scale`: the plane's pixels per luma pixel (0.5 for 4:2:0 chroma)."""
    if affine is not None:
        matrix = affine if scale == 1 else affine * scale
        return fn.warp_affine(frames, matrix=fn.per_frame(matrix), size=list(size),
                              inverse_map=True, fill_value=0, interp_type=types.INTERP_LINEAR)
    region = roi[0] if scale == 1 else roi[0] * scale  # (4,): y0, x0, y1, x1
    return fn.resize(frames, size=list(size), roi_start=region[0:2], roi_end=region[2:4],
                     roi_relative=False, interp_type=types.INTERP_LINEAR)


def join_planes(luma, chroma):
    """(T, h, w, 3) YUV pixels from resized (T, h, w, 1) luma and (T, h, w, 2) chroma."""
    return fn.cat(luma, chroma, axis=3)


def blur(frames, sigma):
    return fn.gaussian_blur(frames, sigma=sigma)


def colour_map(frames, matrix, offset):
    """[M | t] on every pixel's three 0-255 values, back to uint8."""
    return fn.coord_transform(frames, M=matrix, T=offset, dtype=types.UINT8)


def normalise(frames, mean: tuple[float, ...], std: tuple[float, ...], half: bool):
    """(T, H, W, 3) uint8 -> (3, T, H, W) float (x / 255 - mean) / std, float16 when `half`."""
    return fn.crop_mirror_normalize(frames, mean=[255 * m for m in mean], std=[255 * d for d in std],
                                    dtype=types.FLOAT16 if half else types.FLOAT, output_layout="CFHW")


def flow_planes(frames):
    """(F, H, 2W, C) decoded flow frames -> (F, H, W, 2) uint8 (u, v) from the left and right halves."""
    luma = frames[:, :, :, 0:1]  # chroma is neutral: any channel carries the value
    u = fn.slice(luma, rel_start=[0.0], rel_shape=[0.5], axes=[2])
    v = fn.slice(luma, rel_start=[0.5], rel_shape=[0.5], axes=[2])
    return fn.cat(u, v, axis=3)


def audio_window(flac, rate: int, start, samples: int, gain, reverse, device: str):
    """(S,) float32 mono window of `samples` samples from `start` (zero past the end), times `gain`,
    reversed where `reverse`."""
    wave, _ = fn.decoders.audio(flac, sample_rate=rate, downmix=True, dtype=types.FLOAT)  # (S,)
    window = fn.slice(wave, start=start, shape=[samples], axes=[0], out_of_bounds_policy="pad")
    window = window * gain  # volume jitter
    # Reverse the waveform itself (flip needs a layout: view the (S,) window as a 1-row image).
    window = fn.reshape(fn.flip(fn.reshape(window, shape=[1, -1, 1], layout="HWC"), horizontal=reverse),
                        shape=[-1], layout="")
    return window.gpu() if device == "mixed" else window


def log_mel(window, rate: int, window_samples: int, hop: int, mel_bins: int):
    """(F_mel, T_mel) float32 log-mel spectrogram of a waveform: centred windows, power in decibels."""
    nfft = max(window_samples, 2 ** int(np.ceil(np.log2(window_samples))))
    power = fn.spectrogram(window, nfft=nfft, window_length=window_samples, window_step=hop,
                           center_windows=True)  # (F, T)
    mel = fn.mel_filter_bank(power, sample_rate=rate, nfilter=mel_bins, freq_high=rate / 2)
    return fn.to_decibels(mel, multiplier=10.0, cutoff_db=-80.0)  # (F_mel, T_mel)


@pipeline_def(enable_conditionals=True)
def views_pipeline(source: ShardSource, plans: ViewPlans, ctx: GraphContext):
    """Outputs, in order: `plans.output_names`, each from the plan that names it."""
    named = external_source(source, ctx.device)
    outputs = {"label": named["label"], "index": named["index"]}
    for member in plans.members:
        outputs.update(member.graph(named, ctx))
    return tuple(outputs[n] for n in plans.output_names)
