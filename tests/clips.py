"""Synthetic test clips whose frames say which frame they are.

Every frame is drawn so that its index survives lossy coding, resizing, cropping and flipping:
  - R and G are uniform over the frame and spell the index in base 16 (16 levels, 16 apart),
    so the index can be read from any crop: `frame_index(frame)`.
  - B is a horizontal ramp (dark on the left, bright on the right), so a horizontal flip and the
    horizontal position of a crop can be read back: `ramp_direction(frame)`.
  - The index is also printed on the frame in small digits for people looking at a failure.
Audio, when asked for, is a sine whose frequency changes each video frame (frame i plays
`audio_tone(i)` Hz), so tests can check that an audio window lines up with its video frames.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

LEVEL = 16  # distance between two code levels of R or G
MAX_FRAMES = 256


def marked_frame(index: int, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB frame that encodes `index` (0 <= index < 256)."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} outside [0, {MAX_FRAMES})")
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = LEVEL // 2 + LEVEL * (index // 16)
    frame[..., 1] = LEVEL // 2 + LEVEL * (index % 16)
    frame[..., 2] = np.linspace(16, 240, width, dtype=np.float32).round().astype(np.uint8)[None, :]
    scale = max(height / 240, 0.3)
    cv2.putText(frame, str(index), (2, height - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the index of a (H, W, 3) RGB frame made by `marked_frame` (any crop or resize of it).

    The median ignores the printed digits. Accepts uint8 or float frames in [0, 255]."""
    r = float(np.median(frame[..., 0]))
    g = float(np.median(frame[..., 1]))
    hi = int(round((r - LEVEL // 2) / LEVEL))
    lo = int(round((g - LEVEL // 2) / LEVEL))
    return 16 * min(max(hi, 0), 15) + min(max(lo, 0), 15)


def ramp_direction(frame: np.ndarray) -> int:
    """+1 if the blue ramp rises left to right (not flipped), -1 if it falls (flipped)."""
    b = frame[..., 2].astype(np.float64).mean(axis=0)
    return 1 if b[-1] > b[0] else -1


def audio_tone(index: int) -> float:
    """Frequency in Hz of the tone played during video frame `index`."""
    return 200.0 + 50.0 * index


def write_marked_clip(
    path: str | Path,
    num_frames: int = 48,
    *,
    height: int = 96,
    width: int = 128,
    fps: int | Fraction = 25,
    codec: str = "h264",
    gop: int = 8,
    audio_rate: int | None = None,
    audio_channels: int = 1,
) -> Path:
    """Encode a clip of `num_frames` marked frames (and optionally the stepped-tone audio) with PyAV.

    codec: "h264" (mp4), "vp9" (mp4/webm), "mjpeg" (avi/mp4) or anything PyAV can encode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}.get(codec, codec)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if encoder == "mjpeg" else "yuv420p"
        stream.gop_size = gop
        if encoder == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        elif encoder == "libvpx-vp9":
            stream.options = {"crf": "12", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif encoder == "mjpeg":
            stream.options = {"q:v": "2"}
        audio_stream = None
        if audio_rate:
            audio_stream = container.add_stream("aac" if path.suffix in (".mp4", ".mov") else "libopus",
                                                rate=audio_rate)
            audio_stream.layout = "mono" if audio_channels == 1 else "stereo"
        for i in range(num_frames):
            video_frame = av.VideoFrame.from_ndarray(marked_frame(i, height, width), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            samples = _stepped_tone(num_frames, float(fps), audio_rate)
            planes = np.repeat(samples[None, :], audio_channels, axis=0).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=audio_stream.layout.name)
            frame.sample_rate = audio_rate
            for packet in audio_stream.encode(frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path


def _stepped_tone(num_frames: int, fps: float, rate: int) -> np.ndarray:
    """Mono float32 audio: during video frame i a sine at audio_tone(i) Hz, phase-continuous."""
    per_frame = rate / fps
    total = int(round(num_frames * per_frame))
    frame_of_sample = np.minimum((np.arange(total) / per_frame).astype(np.int64), num_frames - 1)
    freq = 200.0 + 50.0 * frame_of_sample
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return (0.5 * np.sin(phase)).astype(np.float32)
