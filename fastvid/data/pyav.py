"""Decode chosen frames of an in-memory video with PyAV: DALI's CPU path for H.264 (which its CPU video
decoder refuses) and the PyAV baseline of benchmarks/loader.py."""
from __future__ import annotations

import io

import av
import cv2
import numpy as np


def decode_frames(data: bytes | np.ndarray, frames: np.ndarray, source: np.ndarray | None = None) -> np.ndarray:
    """(len(frames), H, W, 3) uint8 RGB: the frames at the given indices, in the given order.

    Decodes from the start only up to the last frame asked for (short GOP shards keep this cheap), each
    frame once even when asked for twice; converts with OpenCV (3x faster than PyAV's rgb24 path).
    `source`: DALI's source info of the member (uint8 text), quoted in errors so they name the sample."""
    try:
        return _decode(data, np.asarray(frames, np.int64))
    except (av.FFmpegError, ValueError) as err:
        where = "" if source is None else f'"{np.asarray(source, np.uint8).tobytes().decode()}": '
        raise ValueError(f"{where}cannot decode: {err}") from err


def _decode(data: bytes | np.ndarray, frames: np.ndarray) -> np.ndarray:
    """`decode_frames` without the error context: one pass from the start to the last frame wanted."""
    wanted = set(frames.tolist())
    last = int(frames.max())
    got: dict[int, np.ndarray] = {}
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    with av.open(io.BytesIO(raw)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                yuv = frame.to_ndarray(format="yuv420p")  # (H * 3 / 2, W)
                got[i] = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)  # (H, W, 3)
            if i >= last:
                break
    missing = wanted - set(got)
    if missing:
        raise ValueError(f"video has no frame(s) {sorted(missing)[:5]} (decoded {len(got)} wanted frames)")
    return np.stack([got[i] for i in frames.tolist()])  # (T, H, W, 3)
