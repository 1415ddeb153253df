"""Optical flow between successive output frames (OpenCV), quantised to 8 bits for `KEY.flow.mp4`.

Stored format (agreed with the loader): flow frame t holds the flow from frame t to t+1 as ONE
grey frame of width 2W: left half u, right half v, value = clip(round(128 + u * 127 / BOUND), 1, 255).
Decoding it to RGB gives value back in every channel, so u ~ (value - 128) * BOUND / 127.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import cv2
import numpy as np

BOUND = 20.0  # pixels; flow beyond +-BOUND saturates (as in the TV-L1 two-stream literature)

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ArrayT = TypeVar("ArrayT")  # numpy array or torch tensor


def flow_estimator(method: str) -> FlowFn:
    """A function (prev (H, W) uint8, next (H, W) uint8) -> (H, W, 2) float32 flow in pixels.

    OpenCV runs single-threaded: its threaded flow depends on the thread count, which would make
    shards differ between machines and runs (parallelism comes from the shard workers)."""
    cv2.setNumThreads(1)
    if method == "farneback":
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: dis.calc(a, b, None)
    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise RuntimeError(
                "--flow tvl1 needs OpenCV's contrib modules (cv2.optflow), which the installed OpenCV "
                f"{cv2.__version__} lacks: pip install opencv-contrib-python-headless (in place of "
                "opencv-python-headless), or use --flow dis / --flow farneback")
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return lambda a, b: tvl1.calc(a, b, None)
    raise ValueError(f"unknown flow method {method!r}; known: tvl1, dis, farneback")


def check_flow_method(method: str) -> None:
    """Fail before any work starts when the method cannot run here."""
    flow_estimator(method)


def quantise(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) float flow -> (H, 2W) uint8 grey frame: [u | v], 128 = no motion."""
    q = np.clip(np.rint(128.0 + flow * (127.0 / BOUND)), 1, 255).astype(np.uint8)  # (H, W, 2)
    return np.concatenate([q[..., 0], q[..., 1]], axis=1)  # (H, 2W)


def unpack(frame: np.ndarray) -> np.ndarray:
    """(H, 2W[, C]) decoded flow frame (any channel) -> (H, W, 2) stored values of u, v."""
    grey = frame[..., 0] if frame.ndim == 3 else frame
    w = grey.shape[1] // 2
    return np.stack([grey[:, :w], grey[:, w:]], axis=-1)


def dequantise(value: ArrayT, bound: float | ArrayT = BOUND) -> ArrayT:
    """Stored values (any shape, float; numpy or torch) -> flow in pixels, inverting `quantise`. `bound` is the
    one the sample was written with (its KEY.json's `flow.bound`), per sample when broadcast."""
    return (value - 128.0) * (bound / 127.0)


def mean_magnitude(flow: np.ndarray) -> float:
    """Mean per-pixel flow magnitude in pixels (before quantisation): Cross and Learn samples by it."""
    return float(np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).mean())


def luma_of(value: np.ndarray, full_range: bool) -> np.ndarray:
    """The luma to store so that a standard YUV->RGB conversion yields `value` (chroma is neutral).

    Limited-range streams (h264, vp9) map RGB v to Y = 16 + v * 219 / 255; MJPEG is full range (Y = v)."""
    if full_range:
        return value
    return np.rint(16.0 + value.astype(np.float32) * (219.0 / 255.0)).astype(np.uint8)
