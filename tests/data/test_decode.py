"""The decode stage: runs that start at keyframes, the frames they give (read back from frame-marked clips,
every codec), a cost set by the frames asked for and not by their position, and shards without keyframes."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from fastvid.data import DataConfig, LoaderError, SpatialSpec, TemporalSpec, ViewSpec, build_loader
from fastvid.data.pyav import cut_member, decode_frames, decode_runs, plan_runs
from fastvid.shard import read_manifest
from fastvid.shard.config import ShardConfig
from fastvid.shard.sources import Source
from fastvid.shard.transcode import process
from fastvid.shard.writer import dali_index
from tests.clips import frame_index, write_marked_clip

LONG, GOP = 250, 16


def decoded_frames(runs: list[tuple[int, int]]) -> int:
    """Frames a decoder produces for `runs` when it skips none."""
    return sum(last - start + 1 for start, last in runs)


def test_runs_start_at_the_keyframe_before_and_go_on_while_no_keyframe_intervenes():
    keys = list(range(0, 100, 16))
    assert plan_runs([3, 4, 5, 20, 21, 50], keys) == [(0, 5), (16, 21), (48, 50)]
    assert plan_runs([40, 47, 63, 64], keys) == [(32, 64)]  # the keyframe 48 comes next anyway: decode on
    assert plan_runs([5], [0]) == [(0, 5)] and plan_runs([7, 8, 9], list(range(10))) == [(7, 9)]
    assert decoded_frames(plan_runs([3, 4, 5, 20, 21, 50], keys)) == 6 + 6 + 3


@pytest.fixture(scope="module", params=["h264", "vp9", "mjpeg"])
def long_member(request, tmp_path_factory) -> tuple[bytes, dict]:
    """A 250-frame frame-marked clip (10 s at 25 fps) as `fastvid shard` stores it, with its json."""
    folder = tmp_path_factory.mktemp(f"long_{request.param}")
    clip = write_marked_clip(folder / "long.mp4", LONG, height=64, width=80, gop=25)
    cfg = ShardConfig(src=str(folder), out="unused", codec=request.param, short_side=64, gop=GOP, audio=False)
    sample, _ = process(Source(path=clip, rel=clip.name, label="a", split="train", key="k"), cfg, 0)
    return sample.files["mp4"], json.loads(sample.files["json"])


def test_decoded_frames_are_the_frames_asked_for(long_member):
    data, meta = long_member
    rng = np.random.default_rng(0)
    for _ in range(12):
        frames = np.unique(rng.integers(0, LONG, rng.integers(1, 40)))
        got = decode_frames(data, frames, meta["keyframes"], meta["fps"]).rgb()
        assert [frame_index(f) for f in got] == frames.tolist()
    every = decode_frames(data, np.arange(LONG), meta["keyframes"], meta["fps"]).rgb()
    assert [frame_index(f) for f in every] == list(range(LONG))


def test_planes_convert_to_the_rgb_the_decoder_gives(long_member):
    """The planes' YUV -> RGB (BT.601, limited range for H.264/VP9, full range for MJPEG) is FFmpeg's own,
    apart from chroma upsampling at the digits' sharp edges."""
    data, meta = long_member
    frames = np.arange(40, 56)
    planes = decode_frames(data, frames, meta["keyframes"], meta["fps"])
    with av.open(io.BytesIO(data)) as c:
        assert planes.full_range == (c.streams.video[0].codec_context.name == "mjpeg")
        ffmpeg = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])[frames]
    diff = np.abs(planes.rgb().astype(int) - ffmpeg)
    assert np.median(diff) <= 1 and (diff > 4).mean() < 0.02
    grey = decode_frames(data, frames, meta["keyframes"], meta["fps"], chroma=False)
    assert grey.chroma is None and np.array_equal(grey.luma, planes.luma)


def test_a_box_cuts_exactly_that_part_of_each_plane(long_member):
    """The workers pass on only the union of the views' crops; any even box, odd half-heights included."""
    data, meta = long_member
    frames = np.arange(30, 40)
    whole = decode_frames(data, frames, meta["keyframes"], meta["fps"])
    for x0, y0, x1, y1 in ((0, 0, meta["width"], meta["height"]), (8, 2, 70, 48), (2, 6, 8, 8)):
        part = decode_frames(data, frames, meta["keyframes"], meta["fps"], box=(x0, y0, x1, y1))
        assert np.array_equal(part.luma, whole.luma[:, y0:y1, x0:x1])
        assert np.array_equal(part.chroma, whole.chroma[:, y0 // 2:y1 // 2, x0 // 2:x1 // 2])


def test_a_window_near_the_end_costs_what_one_near_the_start_costs(long_member):
    data, meta = long_member
    keys = meta["keyframes"]
    costs = {}
    for start in (0, 3, 100, 117, LONG - 16):
        window = np.arange(start, start + 16)
        _, produced = decode_runs(data, window, keys, meta["fps"])
        assert produced <= decoded_frames(plan_runs(window.tolist(), keys)) <= 16 + GOP - 1
        costs[start] = produced
    # decoding from the first frame instead (what the loader did before) grows with the position; even
    # with its non-reference frames skipped it produces most of the video
    _, from_start = decode_runs(data, np.arange(LONG - 16, LONG), [0], meta["fps"])
    assert max(costs.values()) <= 31 and from_start >= LONG // 2


def test_cut_keeps_exactly_the_gops_the_frames_need(long_member):
    """What DALI's decoder gets: the needed GOPs copied out (no re-encoding), decoding to the same pixels."""
    data, meta = long_member
    keys, rng = meta["keyframes"], np.random.default_rng(1)
    with av.open(io.BytesIO(data)) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for frames in (np.arange(LONG - 20, LONG - 4), np.arange(100, 116), np.unique(rng.integers(0, LONG, 20))):
        cut, new = cut_member(data, frames, keys, meta["fps"])
        with av.open(io.BytesIO(cut)) as c:
            got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert all(np.array_equal(got[n], every[f]) for n, f in zip(new, frames))
        spans = sum(min([k for k in keys if k > last] + [LONG]) - start for start, last in plan_runs(frames, keys))
        assert len(got) == spans and (len(frames) > 16 or spans <= 2 * GOP)


def test_damaged_member_names_the_sample(long_member):
    data, meta = long_member
    with pytest.raises(ValueError, match="shard.tar:k.mp4: cannot decode"):
        decode_frames(data[:200], np.arange(4), meta["keyframes"], meta["fps"], where="shard.tar:k.mp4")


def test_a_member_without_keyframes_names_its_sample(h264_shards, tmp_path):
    """`fastvid shard` has always written KEY.json's keyframes (the loader seeks by them): a KEY.json without
    them is damage, named by sample and member, not decoded from a guessed GOP."""
    damaged = tmp_path / "damaged"
    shutil.copytree(h264_shards, damaged)
    shard = read_manifest(damaged)["shards"][0]
    tar = Path(shard["tar"])
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(tar, "w") as t:
        for m, data in members:
            if m.name.endswith(".json"):
                meta = json.loads(data)
                del meta["keyframes"]
                data = json.dumps(meta).encode()
                m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    Path(shard["index"]).write_text(dali_index(tar))
    manifest = json.loads((damaged / "dataset.json").read_text())  # the json members changed size: unrecord them
    del manifest["crc32"]
    for s in manifest["shards"]:
        del s["members"]
    (damaged / "dataset.json").write_text(json.dumps(manifest))
    views = [ViewSpec("v", temporal=TemporalSpec(frames=8), spatial=SpatialSpec(size=(32, 32), normalize=False))]
    with pytest.raises(LoaderError, match=r"train-000000\.tar:\S+\.mp4: KEY\.json lists no keyframes"):
        list(build_loader(DataConfig(shards=str(damaged), batch_size=3, threads=1, workers=1, shuffle=False), views))


@pytest.mark.parametrize("shards", ["vp9_shards", "mjpeg_shards", "flow_shards"])
def test_pyav_and_dali_decoders_give_the_same_frames(shards, request):
    """decode="cpu" (PyAV workers, seeking, 4:2:0 planes converted in the colour map) and decode="dali-cpu"
    (DALI's decoder from the file's start, RGB): the same draws give the same frames and flow, to within the
    two YUV -> RGB conversions' rounding. Limited range (VP9) and full range (MJPEG). (On a GPU,
    tests/data/test_loader.py compares the NVDEC path with these.)"""
    path = request.getfixturevalue(shards)
    temporal = TemporalSpec(frames=6, stride=2, shift=2, reverse=0.5)
    views = [ViewSpec("plain", temporal=temporal, spatial=SpatialSpec(size=(32, 32), normalize=False)),
             ViewSpec("jittered", temporal=replace(temporal, anchor="other"),
                      spatial=SpatialSpec(size=(32, 32), normalize=False, jitter=0.8, blur=0.5)),
             ViewSpec("framewise", temporal=replace(temporal, anchor="third"),  # chroma: half the matrices
                      spatial=SpatialSpec(size=(32, 32), normalize=False, per_frame=True, jitter=0.8))]
    if shards == "flow_shards":
        views.append(ViewSpec("flow", modality="flow", temporal=replace(temporal, frames=4),
                              spatial=SpatialSpec(size=(32, 32), normalize=False)))
    batches = {d: list(build_loader(DataConfig(shards=str(path), batch_size=3, threads=1, workers=2, decode=d), views))
               for d in ("cpu", "dali-cpu")}
    assert len(batches["cpu"]) == 2
    for a, b in zip(*batches.values()):
        assert a["index"].tolist() == b["index"].tolist()
        for n in range(3):
            assert [frame_index(f) for f in _pixels(a["plain"][n])] == [frame_index(f) for f in _pixels(b["plain"][n])]
        for name in ("plain", "jittered", "framewise"):
            diff = (a[name] - b[name]).abs()
            # the conversions upsample chroma differently: they part only at sharp colour edges (the digits)
            assert diff.mean() < 1 / 255 and (diff > 3.5 / 255).float().mean() < 0.01, name
        if "flow" in a:  # grey levels from the luma vs DALI's RGB: one quantisation step of 2 x 20 / 255 px at most
            assert (a["flow"] - b["flow"]).abs().max() <= 2 * 20 / 127 * 1.01


def _pixels(x) -> np.ndarray:
    return x.permute(1, 2, 3, 0).numpy() * 255.0  # (3, T, H, W) in [0, 1] -> (T, H, W, 3)


def test_garbage_metadata_names_the_sample(vp9_shards, tmp_path):
    out = tmp_path / "garbage"
    shutil.copytree(vp9_shards, out)
    shard = read_manifest(out)["shards"][0]
    with tarfile.open(shard["tar"]) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(".json"))
    data = bytearray(Path(shard["tar"]).read_bytes())
    data[member.offset_data:member.offset_data + 8] = b"#garbage"
    Path(shard["tar"]).write_bytes(bytes(data))
    key = member.name.split(".")[0]
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=SpatialSpec(size=(32, 32)))]
    with pytest.raises(LoaderError, match=rf"train-000000\.tar:{key}.*unusable metadata"):
        list(build_loader(DataConfig(shards=str(out), batch_size=2, threads=1, workers=2), views))


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_flipped_bytes_fail_verification_by_name_or_are_skipped(codec, request, tmp_path):
    """PyAV decodes a damaged H.264 member without a word; with data.verify the recorded CRC-32 catches it."""
    out = tmp_path / "flipped"
    shutil.copytree(request.getfixturevalue(f"{codec}_shards"), out)
    shard = read_manifest(out)["shards"][0]
    with tarfile.open(shard["tar"]) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(".mp4"))
    data = bytearray(Path(shard["tar"]).read_bytes())
    middle = member.offset_data + member.size // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    Path(shard["tar"]).write_bytes(bytes(data))
    key = member.name.split(".")[0]
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=SpatialSpec(size=(32, 32)))]
    config = DataConfig(shards=str(out), batch_size=1, threads=1, workers=2, verify=True)
    with pytest.raises(LoaderError, match=rf"train-000000\.tar:{key}\.mp4: checksum [0-9a-f]+, recorded"):
        list(build_loader(config, views))
    loader = build_loader(replace(config, on_error="skip"), views)
    with pytest.warns(UserWarning, match=rf"train-000000\.tar:{key}: undecodable \(.*checksum"):
        got = [i for b in loader for i in b["index"].tolist()]
    assert loader.undecodable == {f"train-000000.tar:{key}"} and len(got) == 6


@pytest.mark.parametrize("damage", ["cut inside a member", "cut past the index", "no tar", "no index"])
def test_damaged_or_missing_shard_files_are_one_line_errors(damage, vp9_shards, tmp_path):
    """A tar cut short used to end training with a segmentation fault: the sizes in its index say so first."""
    out = tmp_path / "damaged"
    shutil.copytree(vp9_shards, out)
    shard = read_manifest(out)["shards"][0]
    tar, index = Path(shard["tar"]), Path(shard["index"])
    with tarfile.open(tar) as t:
        last = [m for m in t.getmembers() if m.isfile()][-1]
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=SpatialSpec(size=(32, 32)))]
    config = DataConfig(shards=str(out), batch_size=2, threads=1, workers=2, drop_last=False)
    if damage == "cut past the index":  # the members are whole; only the tar's end blocks are gone
        tar.write_bytes(tar.read_bytes()[:last.offset_data + last.size])
        assert sum(len(b["index"]) for b in build_loader(config, views)) == 6
        return
    if damage == "cut inside a member":
        tar.write_bytes(tar.read_bytes()[:last.offset_data + last.size // 2])
        message = r"train-000000\.tar: \d+ bytes, its index needs \d+: truncated or damaged"
    elif damage == "no tar":
        tar.unlink()
        message = r"train-000000\.tar: missing"
    else:
        index.unlink()
        message = r"train-000000\.idx: cannot read the shard's index .*rerun"
    with pytest.raises(LoaderError, match=message) as err:
        build_loader(config, views)
    assert "\n" not in str(err.value)
