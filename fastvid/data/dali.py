"""Every NVIDIA DALI operator fastvid uses (DALI renames operators between releases: keep them here).

`views_pipeline` takes each sample from `ShardSource` (`fastvid.data.source`), a parallel
`fn.external_source` whose worker processes read the members, draw every augmentation and decode only
the GOPs the views need into 4:2:0 planes; it then applies each view's crop/flip (one `resize` of a region
per plane: chroma at half the coordinates), blur, colour map (which also takes YUV to RGB) and
normalisation. It returns float (3, T, H, W) per RGB view, uint8 (T, H, W, 2) per flow
view, log-mel spectrograms of the (possibly reversed) waveform per audio view, and the draws the torch
side (`fastvid.data.loader`) still needs (flow scale and temporal flip, SpecAugment masks). With
decode="dali" the workers pass the member bytes on and DALI's video decoder decodes them
(`device="mixed"`: NVDEC); every augmentation operator here also runs on the GPU.
"""
from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from fastvid.data.sampling import hop_samples
from fastvid.data.source import ShardSource
from fastvid.data.spec import RGB_MEAN, RGB_STD, ViewSpec


def used_draws(views: list[ViewSpec], decode: str) -> set[str]:
    """The `SampleDrawer` outputs this module's pipeline reads (the source sends only these)."""
    used = {"label", "index", "frames.order", "flow_frames.order"}
    if decode == "dali":
        used |= {"frames", "flow_frames"}
    planes = decode == "pyav"
    for v in views:
        if v.modality == "audio":
            used |= {f"{v.name}.{p}" for p in ("start", "gain", "reverse", "aux")}
            continue
        used.add(f"{v.name}.affine" if v.spatial.per_frame else f"{v.name}.roi")
        if v.modality == "flow":
            used.add(f"{v.name}.aux")
            continue
        if planes or _has_colour(v):
            used.add(f"{v.name}.colour")
        if v.spatial.blur > 0:
            used |= {f"{v.name}.blur", f"{v.name}.sigma"}
    return used


def _has_colour(view: ViewSpec) -> bool:
    """Whether any draw of the view's colour map can differ from the identity."""
    s = view.spatial
    return s.jitter > 0 or s.grayscale > 0 or s.channel_split


_PLANES = ("luma", "chroma", "flow")  # the source's decoded outputs (FHWC)


def _source(source: ShardSource, device: str) -> dict:
    """The source's outputs by name; decoded planes carry the FHWC layout and move to the GPU with
    device="mixed"."""
    layouts = ["FHWC" if n in _PLANES else "" for n in source.names]
    outputs = fn.external_source(source, num_outputs=len(source.names), parallel=True, batch=False,
                                 layout=layouts)
    named = dict(zip(source.names, outputs))
    if device == "mixed":
        named.update({n: named[n].gpu() for n in _PLANES if n in named})
    return named


def _decode(named: dict, member: str, frames_name: str, source: ShardSource, device: str) -> list:
    """The sorted distinct frames `frames_name` of `member`: [luma, chroma] planes decoded in the workers,
    [(F, H, W, 1) grey levels] of flow decoded there, or [(F, H, W, 3) RGB] from DALI's decoder."""
    if source.decode == "pyav":
        return [named["luma"], named["chroma"]] if member == "mp4" else [named["flow"]]
    return [fn.decoders.video(named[member], device=device, frames=named[frames_name])]


def _resample(frames, view: ViewSpec, draws: dict, scale: float = 1.0):
    """Crop + resize + flip of (T, H, W, C) frames to the view's size: a single `resize` of the region
    (x1 < x0 mirrors it), or per frame a `warp_affine` matrix (frame-wise mode, thesis Table 3). `scale`:
    the plane's pixels per luma pixel (0.5 for 4:2:0 chroma)."""
    name, s = view.name, view.spatial
    if s.per_frame:
        matrix = draws[f"{name}.affine"] if scale == 1 else draws[f"{name}.affine"] * scale
        return fn.warp_affine(frames, matrix=fn.per_frame(matrix), size=list(s.size),
                              inverse_map=True, fill_value=0, interp_type=types.INTERP_LINEAR)
    region = draws[f"{name}.roi"][0] if scale == 1 else draws[f"{name}.roi"][0] * scale  # (4,): y0, x0, y1, x1
    return fn.resize(frames, size=list(s.size), roi_start=region[0:2], roi_end=region[2:4],
                     roi_relative=False, interp_type=types.INTERP_LINEAR)


def _spatial(frames: list, view: ViewSpec, draws: dict):
    """Decoded frames -> the view: (3, T, h, w) float RGB, or (T, h, w, 2) uint8 flow. `frames`: [luma,
    chroma] 4:2:0 planes, or one (T, H, W, C) array (RGB, or flow's u | v planes).

    Crop + resize + flip first, so the rest runs on the small output frames (4:2:0 planes: each resized to
    the output size, then joined into YUV pixels); blur only in the samples that drew it (a conditional
    splits the batch: DALI's CPU blur with a one-tap window still costs over half of a real one);
    colour jitter, grayscale, channel splitting and YUV -> RGB as one affine colour map; normalisation and
    the CFHW layout in one `crop_mirror_normalize`. One draw per view, per-sample arguments, which DALI
    applies to every frame of the sequence; in frame-wise mode the matrices and colour maps are per frame."""
    name, s = view.name, view.spatial

    def per(draw):  # (R, ...) draws -> a DALI argument: one per frame, or the sample's single one
        return fn.per_frame(draw) if s.per_frame else draw[0]

    if len(frames) == 2:
        out = fn.cat(_resample(frames[0], view, draws), _resample(frames[1], view, draws, 0.5), axis=3)
    else:
        out = _resample(frames[0], view, draws)
    if view.modality == "flow":  # flow fields get no photometric augmentation
        return out
    if s.blur > 0:
        if draws[f"{name}.blur"]:
            out = fn.gaussian_blur(out, sigma=per(draws[f"{name}.sigma"]))
    # The colour map is DALI's costliest CPU op here: skip it where it is the identity (never on planes)
    if len(frames) == 2 or _has_colour(view):
        colour = draws[f"{name}.colour"]  # (R, 3, 4): [M | t] on the 0-255 pixels (YUV from planes) -> RGB
        out = fn.coord_transform(out, M=per(colour[:, :, 0:3]), T=per(colour[:, :, 3]), dtype=types.UINT8)
    mean, std = (RGB_MEAN, RGB_STD) if s.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return fn.crop_mirror_normalize(out, mean=[255 * m for m in mean], std=[255 * d for d in std],
                                    dtype=types.FLOAT16 if view.dtype == "float16" else types.FLOAT,
                                    output_layout="CFHW")


def _flow_planes(frames):
    """(F, H, 2W, C) decoded flow frames -> (F, H, W, 2) uint8 (u, v) from the left and right halves."""
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
    # Reverse the waveform itself (flip needs a layout: view the (S,) window as a 1-row image).
    window = fn.reshape(fn.flip(fn.reshape(window, shape=[1, -1, 1], layout="HWC"),
                                horizontal=draws[f"{view.name}.reverse"]), shape=[-1], layout="")
    if device == "mixed":
        window = window.gpu()
    win = round(spec.window_ms * rate / 1000)
    power = fn.spectrogram(window, nfft=max(win, 2 ** int(np.ceil(np.log2(win)))), window_length=win,
                           window_step=hop_samples(spec, rate), center_windows=True)  # (F, T)
    mel = fn.mel_filter_bank(power, sample_rate=rate, nfilter=spec.mel_bins, freq_high=rate / 2)
    return fn.to_decibels(mel, multiplier=10.0, cutoff_db=-80.0)  # (F_mel, T_mel)


@pipeline_def(enable_conditionals=True)
def views_pipeline(source: ShardSource, views: list[ViewSpec], audio_rate: int, device: str):
    """Outputs, in order: `output_names(views)`."""
    flow_views = [v for v in views if v.modality == "flow"]
    audio_views = [v for v in views if v.modality == "audio"]
    rgb_views = [v for v in views if v.modality not in ("flow", "audio")]
    draws = _source(source, device)
    outputs = [draws["label"], draws["index"]]
    for group, member in ((rgb_views, "mp4"), (flow_views, "flow.mp4")):
        if not group:
            continue
        name = "frames" if member == "mp4" else "flow_frames"
        decoded = [fn.sequence_rearrange(x, new_order=draws[f"{name}.order"])  # (F_views, H, W, C) each
                   for x in _decode(draws, member, name, source, device)]
        if member == "flow.mp4":
            decoded = [_flow_planes(decoded[0])]
        first = 0
        for view in group:  # each view is a fixed-length run of the one decode
            frames = [x[first:first + view.temporal.frames] for x in decoded]
            first += view.temporal.frames
            outputs.append(_spatial(frames, view, draws))
            if member == "flow.mp4":
                outputs.append(draws[f"{view.name}.aux"])
    for view in audio_views:
        outputs += [_audio(draws["flac"], view, draws, audio_rate, device), draws[f"{view.name}.aux"]]
    return tuple(outputs)


def output_names(views: list[ViewSpec]) -> list[str]:
    """Names of `views_pipeline`'s outputs, in its order."""
    names = ["label", "index"]
    ordered = [v for v in views if v.modality not in ("flow", "audio")] + \
        [v for v in views if v.modality == "flow"] + [v for v in views if v.modality == "audio"]
    for v in ordered:
        names += [v.name] + ([f"{v.name}.aux"] if v.modality in ("flow", "audio") else [])
    return names
