"""Decode chosen frames of an in-memory video with PyAV, seeking to keyframes: the CPU decode stage of the
loader (run in DALI's worker processes, one single-threaded decoder each) and the baselines of
benchmarks/loader.py.

Cost follows the frames asked for, not the video's length: `plan_runs` groups the wanted frames into runs
that each start at a keyframe (KEY.json's `keyframes`, written by `fastvid shard`), so a clip near the
end of a long video costs what one near its start costs. Inside a run, frames that are not wanted and
that no other frame references (non-reference B-frames) are not decoded at all.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import cv2
import numpy as np


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
                  where: str = "", box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(len(frames), h, w, 3) uint8 RGB: the frames at the sorted, distinct indices `frames`, cut to
    `box` = (x0, y0, x1, y1) (even coordinates; None: whole frames).

    `keyframes`: frame indices where decoding may start; `fps`: the rate the frames are stamped at
    (frame i has presentation time i / fps). Raises ValueError naming `where` when the member does not
    decode or lacks a frame."""
    try:
        return decode_runs(data, np.asarray(frames, np.int64), keyframes, fps, box)[0]
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"{where + ': ' if where else ''}cannot decode: {err}") from err


def decode_runs(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int],
                fps: float, box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, int]:
    """`decode_frames` without the error context, and the number of frames the decoder produced."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    slot = {int(f): k for k, f in enumerate(frames.tolist())}
    out: np.ndarray | None = None
    got = produced = 0
    with av.open(io.BytesIO(raw)) as container:
        stream = container.streams.video[0]
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
                        if out is None:
                            x0, y0, x1, y1 = box or (0, 0, frame.width, frame.height)
                            out = np.empty((len(frames), y1 - y0, x1 - x0, 3), np.uint8)  # (T, h, w, 3)
                        _to_rgb(frame, out[slot[i]], box)
                        got += 1
                    done = i >= last
                if done:
                    break
    if got != len(frames):
        raise ValueError(f"video lacks frames among {frames.tolist()[:8]}... (got {got} of {len(frames)})")
    return out, produced


def cut_member(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int], fps: float,
               where: str = "") -> tuple[bytes, np.ndarray]:
    """`cut_runs` with errors naming `where`, and indices as int32 (DALI's `frames` argument)."""
    try:
        cut, new = cut_runs(data, np.asarray(frames, np.int64), keyframes, fps)
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"{where + ': ' if where else ''}cannot cut: {err}") from err
    return cut, new.astype(np.int32)


def cut_runs(data: bytes | np.ndarray, frames: np.ndarray, keyframes: Sequence[int],
             fps: float) -> tuple[bytes, np.ndarray]:
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


def _to_rgb(frame: av.VideoFrame, dst: np.ndarray, box: tuple[int, int, int, int] | None) -> None:
    """Write `frame`'s `box` as (h, w, 3) RGB into `dst`: OpenCV for limited-range 4:2:0 (3x faster than
    PyAV's rgb24 path), from the box of each plane copied once into one I420 buffer; PyAV's swscale for
    anything else (full-range MJPEG)."""
    x0, y0, x1, y1 = box or (0, 0, frame.width, frame.height)
    if frame.format.name != "yuv420p":
        dst[...] = frame.to_ndarray(format="rgb24")[y0:y1, x0:x1]
        return
    h, w = y1 - y0, x1 - x0
    i420 = np.empty((h * 3 // 2, w), np.uint8)  # planar, flat: Y (h, w), then U and V (h/2, w/2) each
    flat, luma, chroma = i420.reshape(-1), h * w, (h // 2) * (w // 2)
    targets = (flat[:luma].reshape(h, w), flat[luma:luma + chroma].reshape(h // 2, w // 2),
               flat[luma + chroma:].reshape(h // 2, w // 2))
    for plane, target, k in zip(frame.planes, targets, (1, 2, 2)):  # k: subsampling of the plane
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)  # the decoder's memory, padded rows
        target[...] = rows[y0 // k:y1 // k, x0 // k:x1 // k]
    cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420, dst=dst)  # (3h/2, w) I420 -> (h, w, 3)
