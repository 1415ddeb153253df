"""One source video -> one sample (`KEY.mp4`, `KEY.flac`, `KEY.json`, `KEY.flow.mp4`), with PyAV.

Frames stay in YUV from decoder to encoder: libavfilter rotates, scales and (when asked) resamples
the frame rate; no RGB round trip (flow reads the luma plane). Every encoder runs single-threaded
with fixed settings, so the same input always gives the same bytes; parallelism is across videos.

Bad input never raises out of `process`: a file that cannot give a sample becomes a `Failure`, and a
file that is kept despite a problem (wrong headers, variable frame rate, truncation, 5.1 audio,
silent audio, odd size) carries `Note`s. Both end up in OUT/errors.jsonl.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType

from fastvid.shard.config import ShardConfig
from fastvid.shard.flow import BOUND, flow_estimator, luma_of, mean_magnitude, quantise
from fastvid.shard.sources import Source

ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}
FLOW_QUALITY = {"h264": 4, "vp9": 4, "mjpeg": 2}  # near-lossless: flow values are 8-bit already
MIN_FPS, MAX_FPS, FALLBACK_FPS = 1, 240, Fraction(25)
FLAC_FRAME = 4608


class Rejected(Exception):
    """The source cannot give a sample. kind: a short category for the summary."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass
class Note:
    """A problem with a source that was repaired; the sample is kept."""

    kind: str
    reason: str


@dataclass
class Sample:
    key: str
    split: str
    rel: str
    files: dict[str, bytes]  # extension ("mp4", "json", "flac", "flow.mp4") -> content
    frames: int
    notes: list[Note] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.files.values())


@dataclass
class Failure:
    key: str
    split: str
    rel: str
    kind: str
    reason: str


def _one_line(err: object) -> str:
    """A short one-line reason; FFmpeg errors without their errno and file name."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())[:300]


def x264_options(preset: str, crf: int, gop: int, mbtree: bool = False) -> dict[str, str]:
    """libx264 settings: one thread, a keyframe exactly every `gop` frames, and no MB-tree by default:
    the libx264 PyAV ships (core 165) lets uninitialised stack memory from its lookahead reach MB-tree's
    QP offsets (valgrind), so with MB-tree the same frames sometimes encode to other bytes in another
    process (5 runs in 100 of tests/shard). Its cost: benchmarks/x264_mbtree.py."""
    return {"preset": preset, "crf": str(crf), "threads": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:mbtree={int(mbtree)}"}


class _Encoder:
    """An in-memory mp4 with one video stream; frames are re-stamped 0, 1, 2, ... at `rate`."""

    def __init__(self, codec: str, quality: int, preset: str, gop: int, rate: Fraction,
                 width: int, height: int) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format="mp4")
        self.stream = self.container.add_stream(ENCODERS[codec], rate=rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = self.pix_fmt = pix_fmt_of(codec)
        self.stream.gop_size = gop
        self.time_base = self.stream.time_base = 1 / rate  # the muxer may change the stream's later
        if codec == "h264":
            self.stream.options = x264_options(preset, quality, gop)
        elif codec == "vp9":
            self.stream.options = {"crf": str(quality), "b": "0", "deadline": "realtime", "cpu-used": "8",
                                   "g": str(gop), "keyint_min": str(gop), "threads": "1", "row-mt": "0"}
        else:
            self.stream.options = {"qmin": str(quality), "qmax": str(quality), "threads": "1"}
        self.count = 0
        self.keyframes: list[int] = []  # frame indices of the keyframes: where a reader can start decoding

    def encode(self, frame: av.VideoFrame) -> None:
        frame.pts, frame.time_base = self.count, self.time_base
        frame.pict_type = PictureType.NONE  # a decoded I-frame would force a keyframe: the GOP is ours
        self.count += 1
        self._mux(self.stream.encode(frame))

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:  # packet pts are still in frame units (1 / rate) before muxing
            if packet.is_keyframe:
                self.keyframes.append(int(packet.pts))
        self.container.mux(packets)

    def finish(self) -> bytes:
        self._mux(self.stream.encode(None))
        self.container.close()
        self.keyframes.sort()
        return self.buffer.getvalue()


def pix_fmt_of(codec: str) -> str:
    """MJPEG is full-range 4:2:0 (yuvj420p); the others are limited-range yuv420p."""
    return "yuvj420p" if codec == "mjpeg" else "yuv420p"


def output_size(width: int, height: int, short_side: int, align: int = 2) -> tuple[int, int]:
    """(W, H), both multiples of `align` (never below `align`).

    short_side > 0: the short side scaled to `short_side` and the long side rounded to the nearest
    multiple of `align`. short_side == 0: the source size, each side rounded down to a multiple of
    `align`, so a frame is never larger than the source (636 wide at align 16 gives 624).

    NVDEC decodes whole 16x16 macroblocks: with align=16 the coded size equals the display size, so a
    hardware decoder made for one clip can be reused for the next of the same size. Rounding the long
    side changes the aspect ratio by at most align/2 pixels over it (under 5% at short side 128)."""
    if short_side == 0:
        return max(align, width // align * align), max(align, height // align * align)
    scale = short_side / min(width, height)
    return max(align, align * round(width * scale / align)), max(align, align * round(height * scale / align))


def _plausible(rate: Fraction | None) -> bool:
    return rate is not None and MIN_FPS <= rate <= MAX_FPS


def _probe_timestamps(path: Path) -> tuple[list[int], Fraction]:
    """Sorted video packet timestamps (demux only, no decoding) and their time base."""
    pts: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
        except av.FFmpegError:
            pass  # a truncated file: the decode pass reports it
        return sorted(pts), stream.time_base


def choose_rate(stream: av.video.stream.VideoStream, pts: list[int], time_base: Fraction,
                fps: float | None) -> tuple[Fraction, bool, list[Note]]:
    """(output rate, whether to resample with the fps filter, notes) from flags, headers and timestamps.

    The timestamps are the ground truth: a header that disagrees with them, or is missing, is noted."""
    if fps is not None:
        return Fraction(fps).limit_denominator(1001), True, []
    gaps = np.diff(np.asarray(pts, dtype=np.int64))
    measured = None
    if len(pts) >= 2 and pts[-1] > pts[0]:
        measured = (Fraction(len(pts) - 1) / (Fraction(pts[-1] - pts[0]) * time_base)).limit_denominator(1001)
    if len(gaps) >= 2 and gaps.min() > 0 and gaps.max() > 1.5 * gaps.min() and _plausible(measured):
        lo, hi = float(gaps.min() * time_base), float(gaps.max() * time_base)
        return measured, True, [Note("vfr", f"variable frame rate (frame gaps {lo:.4f}-{hi:.4f} s) "
                                            f"resampled to {float(measured):.3f} fps")]
    header = stream.average_rate
    if _plausible(header) and (measured is None or abs(header / measured - 1) < 0.02):
        return header, False, []
    if _plausible(measured):
        return measured, False, [Note("fps-header", f"frame-rate header {header} disagrees with the timestamps "
                                                    f"({float(measured):.3f} fps); using the timestamps")]
    return FALLBACK_FPS, False, [Note("fps-header", f"no usable frame rate (header {header}, timestamps "
                                                    f"{measured}); assuming {FALLBACK_FPS} fps")]


def _build_graph(frame: av.VideoFrame, time_base: Fraction, size: tuple[int, int], rate: Fraction | None,
                 pix_fmt: str) -> av.filter.Graph:
    """buffer -> rotation (display matrix) -> scale -> [fps] -> pixel format -> sink."""
    graph = av.filter.Graph()
    nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=time_base)]
    turn = -round(frame.rotation) % 360  # clockwise degrees to display upright
    if turn == 90:
        nodes.append(graph.add("transpose", "clock"))
    elif turn == 180:
        nodes += [graph.add("hflip"), graph.add("vflip")]
    elif turn == 270:
        nodes.append(graph.add("transpose", "cclock"))
    nodes.append(graph.add("scale", f"{size[0]}:{size[1]}"))
    if rate is not None:
        nodes.append(graph.add("fps", f"fps={rate}"))
    nodes.append(graph.add("format", pix_fmt))
    nodes.append(graph.add("buffersink"))
    graph.link_nodes(*nodes).configure()
    return graph


def _encode_flac(samples: np.ndarray, rate: int) -> bytes:
    """(N,) int16 mono samples -> FLAC file bytes."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout, stream.format = "mono", "s16"
        for start in range(0, len(samples), FLAC_FRAME):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + FLAC_FRAME], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


class _VideoSink:
    """Receives the filtered output frames: encodes them, and their flow when asked."""

    def __init__(self, cfg: ShardConfig, rate: Fraction, size: tuple[int, int]) -> None:
        self.cfg, self.size = cfg, size
        self.video = _Encoder(cfg.codec, cfg.quality, cfg.preset, cfg.gop, rate, *size)
        self.flow = self.estimate = None
        self.magnitudes: list[float] = []
        self.previous: np.ndarray | None = None
        if cfg.flow:
            self.estimate = flow_estimator(cfg.flow)
            self.flow = _Encoder(cfg.codec, FLOW_QUALITY[cfg.codec], cfg.preset, cfg.gop, rate, 2 * size[0], size[1])

    def add(self, frame: av.VideoFrame) -> None:
        if self.estimate is not None:
            luma = frame.to_ndarray()[: self.size[1]]  # (H, W) Y plane of the (3H/2, W) yuv420p buffer
            if self.previous is not None:
                flow = self.estimate(self.previous, luma)  # (H, W, 2) pixels, frame t -> t+1
                self.magnitudes.append(round(mean_magnitude(flow), 4))
                self._add_flow(quantise(flow))
            self.previous = luma
        self.video.encode(frame)

    def _add_flow(self, value: np.ndarray) -> None:
        h, w2 = value.shape  # (H, 2W)
        planes = np.full((h * 3 // 2, w2), 128, np.uint8)  # Y then neutral U and V: (3H/2, 2W)
        planes[:h] = luma_of(value, full_range=self.flow.pix_fmt == "yuvj420p")
        self.flow.encode(av.VideoFrame.from_ndarray(planes, format=self.flow.pix_fmt))


def _packets(container: av.container.InputContainer, streams: list, error: list[str]):
    """Demuxed packets; a read error (truncated or damaged file) ends the stream and lands in `error`."""
    try:
        yield from container.demux(streams)
    except av.FFmpegError as err:
        error.append(_one_line(err))


def _audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    return container.streams.audio[0] if container.streams.audio else None


def _check_readable(path: Path) -> None:
    """Reject, before any decoding, a file that cannot hold a video: unreadable, empty, or without a video
    stream (the kind tells the summary which)."""
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as err:
        raise Rejected("unreadable", f"cannot read the file: {err.strerror or err}") from None
    if size == 0:
        raise Rejected("zero-byte", "empty file (0 bytes)")
    try:
        with av.open(str(path)) as probe:
            if not probe.streams.video:
                if probe.streams.audio:
                    raise Rejected("audio-only", "audio-only file: no video stream")
                raise Rejected("not-a-video", f"no video stream (container {probe.format.name})")
    except av.FFmpegError as err:
        raise Rejected("not-a-video", f"not a readable media container (not a video, truncated or damaged): {_one_line(err)}") from None


class _VideoTrack:
    """The video stream's decoded frames through the filter graph into a `_VideoSink`. The graph and the
    sink are built at the first frame: its rotation and size decide them. A packet that does not decode
    is counted and skipped, so a damaged stretch costs frames, not the sample."""

    def __init__(self, stream: av.video.stream.VideoStream, cfg: ShardConfig, rate: Fraction,
                 resample: bool) -> None:
        self.stream, self.cfg, self.rate, self.resample = stream, cfg, rate, resample
        self.graph: av.filter.Graph | None = None
        self.sink: _VideoSink | None = None
        self.source_size = (0, 0)  # (W, H) upright, set at the first frame
        self.decoded = self.corrupt = 0
        self.notes: list[Note] = []

    def decode(self, packet: av.Packet) -> None:
        """Push the packet's frames through the graph (stamping frames that have no timestamp)."""
        try:
            frames = packet.decode()
        except av.FFmpegError:
            self.corrupt += 1
            return
        for frame in frames:
            if self.graph is None:
                self._start(frame)
            if frame.pts is None:  # raw streams without timestamps: space the frames at `rate`
                frame.pts = round(self.decoded / (self.rate * self.stream.time_base))
            self.decoded += 1
            self.graph.push(frame)
            self._drain()

    def _start(self, frame: av.VideoFrame) -> None:
        """Graph and sink for the stream, from its first frame: its rotation decides the upright size."""
        turned = -round(frame.rotation) % 360 in (90, 270)
        w, h = (frame.height, frame.width) if turned else (frame.width, frame.height)
        if w % 2 or h % 2:
            self.notes.append(Note("odd-size", f"odd frame size {w}x{h}; scaled to even"))
        out_size = output_size(w, h, self.cfg.short_side, self.cfg.align)
        self.source_size = (w, h)
        self.graph = _build_graph(frame, self.stream.time_base, out_size, self.rate if self.resample else None,
                                  pix_fmt_of(self.cfg.codec))
        self.sink = _VideoSink(self.cfg, self.rate, out_size)

    def _drain(self) -> None:
        """Encode what the graph has ready: the fps filter holds or repeats frames, so a push may give 0 or more."""
        while True:
            try:
                frame = self.graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            self.sink.add(frame)

    def finish(self, container: av.container.InputContainer, read_error: str | None) -> list[Note]:
        """Flush the graph; the notes on what the decode found, checked against what the headers promise."""
        if read_error is not None and self.decoded:
            self.notes.append(Note("truncated", f"reading stopped after {self.decoded} frames: {read_error}"))
        if self.graph is None:
            reason = "no decodable video frames" + (f": {read_error}" if read_error is not None else "")
            raise Rejected("no-frames", reason)
        self.graph.push(None)
        self._drain()
        stream, rate, count = self.stream, self.rate, self.sink.video.count
        promised = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
        if stream.frames and stream.frames != self.decoded:
            self.notes.append(Note("frame-count-header", f"header says {stream.frames} frames, {self.decoded} decoded"))
        elif read_error is None and promised and count / rate < 0.9 * promised - 1 / rate:
            self.notes.append(Note("truncated", f"the headers promise {promised:.2f} s, only "
                                                f"{float(count / rate):.2f} s decode"))
        if self.corrupt:
            self.notes.append(Note("corrupt-packets", f"{self.corrupt} undecodable video packets skipped"))
        return self.notes


class _AudioTrack:
    """The audio stream resampled to mono s16 at `rate` alongside the video. An audio error stops the
    audio only: the sample is kept without it, with a note."""

    def __init__(self, stream: av.audio.stream.AudioStream, rate: int) -> None:
        self.stream = stream
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self.chunks: list[np.ndarray] = []  # (n,) int16 each
        self.error = ""

    def decode(self, packet: av.Packet) -> None:
        """Resample the packet's audio; after an error, ignore the rest of the stream."""
        if self.error:
            return
        try:
            for frame in packet.decode():
                self.chunks += [r.to_ndarray().reshape(-1) for r in self.resampler.resample(frame)]
        except av.FFmpegError as err:
            self.error = _one_line(err)

    def finish(self) -> tuple[np.ndarray, list[Note]]:
        """The samples to store ((N,) int16, empty when dropped) and the notes on what was repaired."""
        if not self.error:
            self.chunks += [r.to_ndarray().reshape(-1) for r in self.resampler.resample(None)]
        channels = self.stream.codec_context.layout.nb_channels
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        notes: list[Note] = []
        if self.error:
            notes.append(Note("audio-error", f"audio dropped, it does not decode: {self.error}"))
            audio = audio[:0]
        elif len(audio) == 0:
            notes.append(Note("audio-error", "audio stream has no decodable samples; dropped"))
        elif np.abs(audio.astype(np.int32)).max() <= 1:
            notes.append(Note("silent-audio", "audio track is silent; stored without audio"))
            audio = audio[:0]
        if len(audio) and channels > 2:
            notes.append(Note("multichannel-audio", f"{channels}-channel audio downmixed to mono"))
        return audio, notes


def _demux(container: av.container.InputContainer, video: _VideoTrack, audio: _AudioTrack | None) -> str | None:
    """One pass over the file, each packet to its track; the read error that ended it early, if any."""
    streams = [video.stream] + ([audio.stream] if audio is not None else [])
    read_error: list[str] = []
    for packet in _packets(container, streams, read_error):
        if audio is not None and packet.stream is audio.stream:
            audio.decode(packet)
        else:
            video.decode(packet)
    return read_error[0] if read_error else None


def _metadata(source: Source, cfg: ShardConfig, label_index: int, rate: Fraction, video: _VideoTrack,
              audio_samples: int) -> bytes:
    """KEY.json: what a reader needs to draw clips without opening the video (README lists the fields)."""
    sink, (source_w, source_h) = video.sink, video.source_size
    has_audio = audio_samples > 0
    meta = {
        "key": source.key, "path": source.rel, "label": source.label, "label_index": label_index,
        "split": source.split, "fps": float(rate), "num_frames": sink.video.count,
        "duration": round(sink.video.count / float(rate), 6), "width": sink.size[0], "height": sink.size[1],
        # what rounding the frame size to a multiple of --align did to the aspect ratio (out / source - 1)
        "aspect_change": round(sink.size[0] * source_h / (sink.size[1] * source_w) - 1, 4),
        "keyframes": sink.video.keyframes,
        "codec": cfg.codec, "has_audio": has_audio, "audio_rate": cfg.audio_rate if has_audio else None,
        "audio_samples": audio_samples,
        "flow": {"method": cfg.flow, "bound": BOUND, "magnitude": sink.magnitudes,
                 "keyframes": sink.flow.keyframes} if cfg.flow else None,
    }
    return json.dumps(meta, sort_keys=True).encode()


def transcode(source: Source, cfg: ShardConfig, label_index: int) -> Sample:
    """Re-encode `source` per `cfg`; raises Rejected when it cannot give a sample."""
    _check_readable(source.path)
    pts, time_base = _probe_timestamps(source.path)
    with av.open(str(source.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, resample, notes = choose_rate(stream, pts, time_base, cfg.fps)
        video = _VideoTrack(stream, cfg, rate, resample)
        audio_stream = _audio(container) if cfg.audio else None
        audio = _AudioTrack(audio_stream, cfg.audio_rate) if audio_stream is not None else None
        read_error = _demux(container, video, audio)
        notes += video.finish(container, read_error)
        samples, audio_notes = audio.finish() if audio is not None else (np.zeros(0, np.int16), [])
    num_frames = video.sink.video.count
    if num_frames == 0:  # frames decoded, none kept: their timestamps span less than one frame at this rate
        raise Rejected("no-frames", f"no frame left at {float(rate):g} fps ({video.decoded} decoded)")
    if cfg.flow and num_frames < 2:
        raise Rejected("no-frames", f"--flow needs at least 2 frames, the video has {num_frames}")
    files = {"mp4": video.sink.video.finish()}
    if video.sink.flow is not None:
        files["flow.mp4"] = video.sink.flow.finish()
    if len(samples):
        files["flac"] = _encode_flac(samples, cfg.audio_rate)
    files["json"] = _metadata(source, cfg, label_index, rate, video, int(len(samples)))
    return Sample(key=source.key, split=source.split, rel=source.rel, files=files, frames=num_frames,
                  notes=notes + audio_notes)


def process(source: Source, cfg: ShardConfig, label_index: int) -> tuple[Sample | Failure, int]:
    """`transcode` that never raises: (sample or failure, source size in bytes)."""
    try:
        size = os.path.getsize(source.path)
    except OSError:
        size = 0
    try:
        return transcode(source, cfg, label_index), size
    except Rejected as err:
        return Failure(source.key, source.split, source.rel, err.kind, err.reason), size
    except Exception as err:  # noqa: BLE001 - a bad file must never stop the run; the reason is recorded
        return Failure(source.key, source.split, source.rel, "error", _one_line(f"{type(err).__name__}: {err}")), size
