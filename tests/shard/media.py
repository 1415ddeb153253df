"""Media the shard tests need beyond tests/clips.py: rotated, variable-rate, damaged and odd inputs,
and readers for what a shard holds."""
from __future__ import annotations

import io
import struct
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.clips import marked_frame


def decode_rgb(data: bytes) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of an in-memory video."""
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decode_audio(data: bytes) -> tuple[np.ndarray, int, int]:
    """(samples,) float32 mono audio, sample rate and channel count of an in-memory audio file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().astype(np.float32).reshape(stream.channels, -1) for f in container.decode(stream)]
        return np.concatenate(chunks, axis=1)[0] / 32768.0, stream.rate, stream.channels


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a shard."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def with_audio(video: Path, dst: Path, samples: np.ndarray, rate: int) -> Path:
    """Copy `video`'s stream into `dst` and add `samples` ((C, N) float32) as AAC audio."""
    layouts = {1: "mono", 2: "stereo", 6: "5.1"}
    with av.open(str(video)) as src, av.open(str(dst), "w") as out:
        v_in = src.streams.video[0]
        v_out = out.add_stream_from_template(v_in)
        a_out = out.add_stream("aac", rate=rate)
        a_out.layout = layouts[samples.shape[0]]
        for packet in src.demux(v_in):
            if packet.size:
                packet.stream = v_out
                out.mux(packet)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32), format="fltp", layout=a_out.layout.name)
        frame.sample_rate = rate
        out.mux(a_out.encode(frame))
        out.mux(a_out.encode(None))
    return dst


def write_vfr_clip(path: Path, gaps_ms: list[int], height: int = 48, width: int = 64) -> Path:
    """An h264 mp4 of marked frames whose frame i lasts gaps_ms[i] milliseconds (variable rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)  # millisecond timestamps
        stream.options = {"crf": "12", "preset": "veryfast", "bf": "0"}
        pts = 0
        for i, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(marked_frame(i, height, width), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
            pts += gap
        container.mux(stream.encode(None))
    return path


def rotated_copy(src: Path, dst: Path) -> Path:
    """`src` (mp4) with its track matrix set to 'display rotated 90 degrees clockwise' (as phones write)."""
    data = bytearray(src.read_bytes())
    matrix = data.find(b"tkhd") - 4 + 48  # box start + header, version/flags, times, ids, layer, volume
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    dst.write_bytes(bytes(data))
    return dst


def patched_avi(src: Path, dst: Path, *, rate: int | None = None, length: int | None = None) -> Path:
    """An AVI copy whose stream header claims another frame rate (dwRate, dwScale=1) or frame count."""
    data = bytearray(src.read_bytes())
    strh = data.find(b"strh") + 8  # fccType fccHandler dwFlags wPriority wLanguage dwInitialFrames dwScale dwRate
    avih = data.find(b"avih") + 8  # dwMicroSecPerFrame ... dwTotalFrames at +16
    if rate is not None:
        struct.pack_into("<II", data, strh + 20, 1, rate)
        struct.pack_into("<I", data, avih, 1_000_000 // rate)
    if length is not None:
        struct.pack_into("<I", data, strh + 32, length)
        struct.pack_into("<I", data, avih + 16, length)
    dst.write_bytes(bytes(data))
    return dst


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of a mono window."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])
