"""Decode chosen frames of an in-memory video with PyAV, seeking to keyframes: the CPU decode stage of the
loader (run in DALI's worker processes, one single-threaded decoder each) and the baselines of
benchmarks/loader.py.

Cost follows the frames asked for, not the video's length: `plan_runs` groups the wanted frames into runs
that each start at a keyframe (KEY.json's `keyframes`, written by `fastvid shard`), so a clip near the
end of a long video costs what one near its start costs. Inside a run, frames that are not wanted and
that no other frame references (non-reference B-frames) are not decoded at all.

Frames leave as the decoder made them, 4:2:0 planes (`Planes`), not RGB: half the bytes through shared
memory, and no conversion here. The pipeline resizes the planes and folds YUV -> RGB (`yuv_to_rgb`) into the
view's colour map, one affine map per pixel it applies anyway (on the GPU when there is one).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

# BT.601 Y'CbCr -> R'G'B' on 0-255 values, as [M | t] applied to (Y, U, V): limited range (16-235 luma,
# 16-240 chroma: H.264 and VP9 shards, what OpenCV's I420 conversion assumes) and full range (JPEG: MJPEG shards).
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB


def yuv_to_rgb(full_range: bool) -> np.ndarray:
    """(3, 4) float64 affine map [M | t] taking (Y, U, V) to (R, G, B), both on 0-255."""
    y, c = (1.0, 1.0) if full_range else (255 / 219, 255 / 224)
    m = np.array([[y, 0.0, 2 * (1 - _KR) * c],
                  [y, -2 * (1 - _KB) * _KB / _KG * c, -2 * (1 - _KR) * _KR / _KG * c],
                  [y, 2 * (1 - _KB) * c, 0.0]])
    offset = np.array([0.0 if full_range else 16.0, 128.0, 128.0])
    return np.concatenate([m, -(m @ offset)[:, None]], axis=1)


@dataclass
class Planes:
    """Decoded 4:2:0 frames cut to a box of even corners: `luma` (T, h, w, 1), `chroma` (T, h/2, w/2, 2)
    holding (U, V) pairs (None when only luma was asked for), and whether the values are full range."""

    luma: np.ndarray
    chroma: np.ndarray | None
    full_range: bool

    def rgb(self) -> np.ndarray:
        """(T, h, w, 3) uint8 RGB, chroma repeated over its 2x2 pixels (for inspection and tests: the
        loader converts in its pipeline)."""
        chroma = self.chroma.repeat(2, axis=1).repeat(2, axis=2)
        yuv = np.concatenate([self.luma, chroma], axis=3).astype(np.float32)
        m = yuv_to_rgb(self.full_range).astype(np.float32)
        return np.clip(yuv @ m[:, :3].T + m[:, 3] + 0.5, 0, 255).astype(np.uint8)

    def grey(self) -> np.ndarray:
        """(T, h, w, 1) uint8: the grey level each luma value shows (what a neutral-chroma frame holds,
        such as `fastvid shard`'s flow frames)."""
        m = yuv_to_rgb(self.full_range)
        levels = np.clip(np.arange(256) * m[0, 0] + m[0, 3] + m[0, 1:3].sum() * 128 + 0.5, 0, 255)
        return levels.astype(np.uint8)[self.luma]


def plan_runs(frames: Sequence[int], keyframes: Sequence[int]) -> list[tuple[int, int]]:
    """(start keyframe, last frame) decode runs covering the sorted, distinct `frames`.

    A run continues through the next wanted frame when no keyframe lies between the decoder's position
    and that frame, or only the very next one (decoding on is then the cheapest way there); otherwise a
    new run seeks to the last keyframe at or before it. Frames decoded = sum(last - start + 1)."""
    keys = np.asarray(keyframes, np.int64)
    runs: list[tuple[int, int]] = []
    for f in frames:
        key = int(keys[np.searchsorted(keys, f, side="right") - 1]) if len(keys) and keys[0] <= f else 0
        if runs and key <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], int(f))
        else:
            runs.append((key, int(f)))
    return runs


def decode_frames(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int], fps: float,
                  where: str = "", box: tuple[int, int, int, int] | None = None, chroma: bool = True,
                  length: int | None = None) -> Planes:
    """The frames at the sorted, distinct indices `frames`, cut to `box` = (x0, y0, x1, y1) (even
    coordinates; None: whole frames), as 4:2:0 planes (luma only unless `chroma`).

    `keyframes`: frame indices where decoding may start; `fps`: the rate the frames are stamped at
    (frame i has presentation time i / fps); `length`: the frames KEY.json says the member holds (None: not
    checked). Raises ValueError naming `where` when the member does not decode, lacks a frame, or holds
    another number of frames than `length` (frames drawn from a wrong count would repeat or go unread)."""
    try:
        return decode_runs(data, np.asarray(frames, np.int64), keyframes, fps, box, chroma, length)[0]
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"{where + ': ' if where else ''}cannot decode: {err}") from err


def decode_runs(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int], fps: float,
                box: tuple[int, int, int, int] | None = None, chroma: bool = True,
                length: int | None = None) -> tuple[Planes, int]:
    """`decode_frames` without the error context, and the number of frames the decoder produced."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    slot = {int(f): k for k, f in enumerate(frames.tolist())}
    out: Planes | None = None
    got = produced = 0
    with av.open(io.BytesIO(raw)) as container:
        stream = container.streams.video[0]
        check_length(stream, length)
        stream.codec_context.thread_count = 1  # parallelism comes from the workers, not from threads
        # pts per frame, as a float: Fraction arithmetic per packet cost a millisecond per clip
        ticks = float(1 / (Fraction(fps).limit_denominator(1_000_000) * stream.time_base))
        codec, skipping = stream.codec_context, False
        for start, last in plan_runs(frames.tolist(), keyframes):
            container.seek(round(start * ticks), stream=stream, backward=True, any_frame=False)
            done = False
            for packet in container.demux(stream):
                # A frame nobody wants is decoded only if others reference it: skip it otherwise.
                unwanted = packet.pts is not None and round(packet.pts / ticks) not in slot
                if unwanted != skipping:  # setting it costs a PyAV property call: only on a change
                    codec.skip_frame, skipping = ("NONREF" if unwanted else "DEFAULT"), unwanted
                for frame in packet.decode():
                    produced += 1
                    i = round(frame.pts / ticks)
                    if i in slot and start <= i <= last:
                        if frame.format.name not in _PLANAR_420:  # not what `fastvid shard` writes
                            frame = frame.reformat(format="yuv420p")
                        if out is None:
                            out = _planes_for(len(frames), box or (0, 0, frame.width, frame.height), chroma,
                                              frame.format.name == "yuvj420p")
                        _copy_planes(frame, out, slot[i], box)
                        got += 1
                    done = i >= last
                if done:
                    break
    if got != len(frames):
        raise ValueError(f"video lacks frames among {frames.tolist()[:8]}... (got {got} of {len(frames)})")
    return out, produced


_PLANAR_420 = ("yuv420p", "yuvj420p")  # limited- and full-range 4:2:0 with three planes


def check_length(stream: av.video.stream.VideoStream, length: int | None) -> None:
    """Raise ValueError when the container's frame count (the mp4 sample table `fastvid shard` writes;
    read without decoding) is known and is not `length`: the video's own count wins over KEY.json's."""
    if length is not None and stream.frames and stream.frames != length:
        raise ValueError(f"KEY.json says {length} frames, the video holds {stream.frames}")


def _planes_for(count: int, box: tuple[int, int, int, int], chroma: bool, full_range: bool) -> Planes:
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    return Planes(np.empty((count, h, w, 1), np.uint8),
                  np.empty((count, h // 2, w // 2, 2), np.uint8) if chroma else None, full_range)


def cut_member(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int], fps: float,
               where: str = "", length: int | None = None) -> tuple[bytes, np.ndarray]:
    """`cut_runs` with errors naming `where`, and indices as int32 (DALI's `frames` argument)."""
    try:
        cut, new = cut_runs(data, np.asarray(frames, np.int64), keyframes, fps, length)
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"{where + ': ' if where else ''}cannot cut: {err}") from err
    return cut, new.astype(np.int32)


def cut_runs(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int],
             fps: float, length: int | None = None) -> tuple[bytes, np.ndarray]:
    """A shorter mp4 holding only the GOPs that cover the sorted, distinct `frames`, and their indices in it.

    For decoders that read a clip from its first frame (DALI's): packets are copied, not decoded, so the
    decoder's work follows the frames wanted rather than their position in the video. The shards' GOPs
    are closed (x264 with a fixed keyint and no scene cut; VP9 and MJPEG), so each GOP decodes alone."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    keys = np.asarray(keyframes, np.int64)
    wanted = np.asarray(frames, np.int64)
    new = np.empty(len(wanted), np.int64)
    buffer = io.BytesIO()
    with av.open(io.BytesIO(raw)) as source, av.open(buffer, "w", format="mp4") as out:
        stream = source.streams.video[0]
        check_length(stream, length)
        target = out.add_stream_from_template(stream)
        ticks = float(1 / (Fraction(fps).limit_denominator(1_000_000) * stream.time_base))
        offset = 0  # frames of the cut clip before this run
        for start, last in plan_runs(wanted.tolist(), keys):
            after = keys[keys > last]
            end = int(after[0]) if len(after) else None  # the run's GOPs end before this keyframe
            inside = (wanted >= start) & (wanted <= last)
            new[inside] = offset + wanted[inside] - start
            source.seek(round(start * ticks), stream=stream, backward=True, any_frame=False)
            shift = offset * ticks - start * ticks  # run frame `start` becomes cut frame `offset`
            count = 0
            for packet in source.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                i = round(packet.pts / ticks)
                if end is not None and i >= end and packet.is_keyframe:
                    break
                if i < start:
                    continue
                packet.pts = round(packet.pts + shift)
                packet.dts = None if packet.dts is None else round(packet.dts + shift)
                packet.stream = target
                out.mux(packet)
                count = max(count, i - start + 1)
            offset += count
    return buffer.getvalue(), new


def _copy_planes(frame: av.VideoFrame, out: Planes, k: int, box: tuple[int, int, int, int] | None) -> None:
    """Copy `box` of each plane of a 4:2:0 `frame` into frame `k` of `out`, straight from the decoder's
    memory (rows padded to `line_size`)."""
    x0, y0, x1, y1 = box or (0, 0, frame.width, frame.height)
    planes = frame.planes if out.chroma is not None else frame.planes[:1]
    targets = (out.luma[k, :, :, 0], *((out.chroma[k, :, :, 0], out.chroma[k, :, :, 1]) if out.chroma is not None else ()))
    for plane, target, sub in zip(planes, targets, (1, 2, 2)):  # sub: the plane's subsampling
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        target[...] = rows[y0 // sub:y1 // sub, x0 // sub:x1 // sub]
