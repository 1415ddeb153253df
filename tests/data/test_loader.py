"""The DALI loader on VP9 and H.264 shards of frame-marked clips: frames, crops, audio, presets, seeds,
sharding, resuming and errors, all read back from the decoded pixels."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvid.data import AudioSpec, DataConfig, LoaderError, SpatialSpec, TemporalSpec, ViewSpec, build_loader
from fastvid.data.plans import SampleDrawer
from fastvid.data.views import (CrossAndLearnViews, GDTViews, Vi2CLRViews, VideoContrastViews, cross_and_learn_views,
                                gdt_views, vi2clr_views, video_moco_views, video_simclr_views)
from fastvid.shard import read_manifest
from tests.clips import audio_tone, frame_index, ramp_direction
from tests.data.conftest import SHIFT

# Each test with a `device` runs the CPU path here and, on a GPU machine, the mixed (NVDEC) decode with
# every augmentation on the GPU: the same draws must give the same frames, crops, colours and shapes.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


# NVDEC decodes VP9 only from 128x128 up and the marked clips are 80x64: on the GPU, read their H.264 twins.
H264_TWIN = {"vp9_shards": "h264_shards", "flow_shards": "flow_h264_shards", "moving_shards": "moving_h264_shards"}


def on_device(request, device: str, fixture: str) -> Path:
    return request.getfixturevalue(fixture if device == "cpu" else H264_TWIN[fixture])
PLAIN = SpatialSpec(size=(32, 32), normalize=False, crop="random_resized", scale=(0.3, 0.6))


def metas(shards: Path) -> dict[str, dict]:
    out = {}
    for shard in read_manifest(shards)["shards"]:
        with tarfile.open(shard["tar"]) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(t.extractfile(m).read())
                    out[meta["key"]] = meta
    return out


def pixels(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) or (3, H, W) in [0, 1] -> (T, H, W, 3) in [0, 255]."""
    x = x if x.dim() == 4 else x.unsqueeze(1)
    return x.permute(1, 2, 3, 0).float().cpu().numpy() * 255.0


def blue_profile(frame: np.ndarray) -> np.ndarray:
    """The blue ramp's fitted values at the left and right edges: the horizontal crop position, size and
    flip. Top rows only (the printed index digits sit at the bottom); the fit averages out coding noise."""
    ramp = frame[: frame.shape[0] // 3, :, 2].mean(axis=0)
    slope, left = np.polyfit(np.arange(len(ramp)), ramp, 1)
    return np.array([left, left + slope * (len(ramp) - 1)])


def cfg(shards, **kw) -> DataConfig:
    """Two decode workers: several processes, started in a moment even on the 16-core GPU machine."""
    return DataConfig(shards=str(shards), batch_size=kw.pop("batch_size", 3), shuffle=kw.pop("shuffle", True),
                      threads=1, workers=2, **kw)


TEMPORAL_VIEWS = [
    ViewSpec("shifted", temporal=TemporalSpec(frames=6, stride=2, shift=3, reverse=0.5), spatial=PLAIN),
    ViewSpec("dropped", temporal=TemporalSpec(frames=4, drop=True), spatial=PLAIN),
    ViewSpec("shuffled", temporal=TemporalSpec(frames=16, shuffle=True), spatial=PLAIN),  # loops the 12-frame clip
    ViewSpec("middle", "frame", temporal=TemporalSpec(frames=1, offset=3), spatial=replace(PLAIN, group="g")),
    ViewSpec("grouped", temporal=TemporalSpec(frames=3, anchor="other"), spatial=replace(PLAIN, group="g")),
]


@pytest.mark.parametrize("codec", ["vp9", "h264"])
@pytest.mark.parametrize("device", DEVICES)
def test_views_decode_exactly_the_drawn_frames(codec, request, device):
    shards = request.getfixturevalue(f"{codec}_shards")
    if device == "cuda" and codec == "vp9":  # 80x64 clips: below NVDEC's VP9 minimum
        with pytest.raises(LoaderError, match="NVDEC decodes VP9 only from 128x128"):
            build_loader(cfg(shards, decode="gpu"), TEMPORAL_VIEWS, device=device)
    # every backend that reads these shards on this device: PyAV workers (auto), DALI's decoder (VP9 on the
    # CPU, NVDEC for H.264 on the GPU)
    backends = {("cpu", "vp9"): ("auto", "dali-cpu"), ("cuda", "h264"): ("auto", "gpu")}.get((device, codec), ("auto",))
    for decode in backends:
        _check_drawn_frames(build_loader(cfg(shards, decode=decode), TEMPORAL_VIEWS, device=device), shards)


def _check_drawn_frames(loader, shards) -> None:
    by_key = metas(shards)
    key_of = {i: k for k, i in loader.key_index.items()}
    drawer = SampleDrawer(TEMPORAL_VIEWS, seed=0, epoch=0)
    seen = 0
    for batch in loader:
        for n, index in enumerate(batch["index"].tolist()):
            draw = drawer.draw(by_key[key_of[index]], index)
            for view in TEMPORAL_VIEWS:
                want = draw[view.name].frames.tolist()
                frames = pixels(batch[view.name][n])
                assert [frame_index(f) for f in frames] == want, (view.name, index)
                y0, x0, y1, x1 = draw[view.name].roi[0]
                flipped = x1 < x0  # a mirrored region
                assert {ramp_direction(f) for f in frames} == {-1 if flipped else 1}
                profiles = np.stack([blue_profile(f) for f in frames])
                assert np.abs(profiles - profiles[0]).max() < 4.5, view.name  # one crop for the whole view
            assert batch["label"][n] == by_key[key_of[index]]["label_index"]
            seen += 1
    assert seen == 6 - 6 % 3


def test_crops_differ_between_views_and_samples_and_groups_share(vp9_shards):
    batch = next(iter(build_loader(cfg(vp9_shards, batch_size=4), TEMPORAL_VIEWS)))
    profile = {v.name: [blue_profile(pixels(batch[v.name][n])[0]) for n in range(4)] for v in TEMPORAL_VIEWS}
    for n in range(4):
        assert np.abs(profile["middle"][n] - profile["grouped"][n]).max() < 4.5  # shared crop and flip
        assert np.abs(profile["shifted"][n] - profile["dropped"][n]).max() > 6.0  # own draws
    assert all(np.abs(profile["shifted"][0] - profile["shifted"][n]).max() > 6.0 for n in (1, 2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_frame_wise_mode_draws_per_frame(request, device):
    shards = on_device(request, device, "vp9_shards")
    view = ViewSpec("v", temporal=TemporalSpec(frames=8), spatial=replace(PLAIN, per_frame=True, jitter=1.0))
    batch = next(iter(build_loader(cfg(shards), [view], device=device)))
    frames = pixels(batch["v"][0])
    profiles = np.stack([blue_profile(f) for f in frames])
    assert min(np.abs(profiles[i] - profiles[j]).max() for i in range(8) for j in range(i)) > 1.0  # own crops


@pytest.mark.parametrize("device", DEVICES)
def test_colour_jitter_is_the_drawn_map_on_every_frame(request, device):
    shards = on_device(request, device, "vp9_shards")
    # Brightness alone: each sample's frames must be the unjittered frames times that sample's drawn b,
    # every frame alike (the old test instead required two random draws to differ by a margin).
    plain = replace(PLAIN, crop="center", short_side=32, flip=0.0, jitter=0.0)
    jittered = replace(plain, jitter=1.0, brightness=0.3, contrast=0.0, saturation=0.0, hue=0.0)
    views = [ViewSpec("v", temporal=TemporalSpec(frames=4), spatial=spatial) for spatial in (plain, jittered)]
    batches = [next(iter(build_loader(cfg(shards), [view], device=device))) for view in views]
    assert torch.equal(batches[0]["index"], batches[1]["index"])
    loader = build_loader(cfg(shards), views[1:])
    drawer, by_key = SampleDrawer(views[1:], seed=0), metas(shards)
    key_of = {i: k for k, i in loader.key_index.items()}
    gains = []
    for n, index in enumerate(batches[1]["index"].tolist()):
        gain = float(drawer.draw(by_key[key_of[index]], index)["v"].colour[0, 0, 0])  # M = b * I
        want = np.clip(pixels(batches[0]["v"][n]) * gain, 0, 255)  # (T, H, W, 3)
        got = pixels(batches[1]["v"][n])
        # uint8 rounding only: the plain view was rounded once (then scaled by b), the jittered one once
        assert np.abs(got - want).max() <= 0.5 * gain + 0.5 + 1e-3, (n, gain)
        gains.append(gain)
    assert len(set(gains)) == len(gains) and all(0.7 <= g <= 1.3 for g in gains)


@pytest.mark.parametrize("device", DEVICES)
def test_audio_window_aligns_with_its_frames(request, device):
    shards = on_device(request, device, "vp9_shards")
    views = [ViewSpec("v", temporal=TemporalSpec(frames=4, reverse=0.5), spatial=PLAIN),
             ViewSpec("a", "audio", audio=AudioSpec(follow="v", seconds=0.4, freq_masks=0, time_masks=0))]
    spec = views[1].audio
    # Slaney mel scale (DALI's default) is linear below 1 kHz: bin k+1 of 42 points is centred on
    # (k + 1) * mel_max / 41 mel, 200/3 Hz per mel; the tones (200 + 50 i Hz) stay below 1 kHz here.
    mel_max = 15 + 27 * np.log(12000 / 1000) / np.log(6.4)
    centres = (np.arange(1, spec.mel_bins + 1) * mel_max / (spec.mel_bins + 1)) * 200 / 3
    for batch in build_loader(cfg(shards), views, device=device):
        for n in range(batch["v"].shape[0]):
            idx = [frame_index(f) for f in pixels(batch["v"][n])]
            first, reverse = min(idx), idx[0] > idx[-1]
            spectrogram = batch["a"][n, 0].cpu().numpy()  # (40, T_mel), 10 ms per column
            if reverse:
                spectrogram = spectrogram[:, ::-1]
            for col in (5, 15, 25):  # 50, 150, 250 ms after the first frame
                frame = first + int(col * 0.01 * 25)
                if frame >= 12:  # the shortest clip's audio may have ended
                    continue
                expected = np.argmin(np.abs(centres - audio_tone(frame)))
                assert abs(int(spectrogram[:, col].argmax()) - expected) <= 1, (first, col)


PRESETS = {
    "simclr": (video_simclr_views(VideoContrastViews(frames=4, size=32, temporal="shift", dtype="float16")),
               {"clip_i": (3, 4, 32, 32), "clip_j": (3, 4, 32, 32)}, torch.float16),
    "moco": (video_moco_views(VideoContrastViews(frames=4, size=32, temporal="drop", dtype="bfloat16")),
             {"query": (3, 4, 32, 32), "key": (3, 4, 32, 32)}, torch.bfloat16),
    "vi2clr": (vi2clr_views(Vi2CLRViews(frames=8, clip_size=32, frame_size=48)),
               {"clip1": (3, 8, 32, 32), "frame1": (3, 48, 48), "clip2": (3, 8, 32, 32), "frame2": (3, 48, 48)},
               torch.float32),
    "gdt": (gdt_views(GDTViews(frames=6, size=32, short_side=40, seconds=0.5)),
            {**{f"video{k}": (3, 6, 32, 32) for k in ("1", "1_rev", "2", "2_rev")},
             **{f"audio{k}": (1, 40, 51) for k in ("1", "1_rev", "2", "2_rev")}},
            torch.float32),
    "cross_and_learn_sod": (cross_and_learn_views(CrossAndLearnViews(second="sod", size=32, short_side=40,
                                                                     weighted=False)),
                            {"rgb": (3, 32, 32), "sod": (3, 5, 32, 32)}, torch.float32),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("device", DEVICES)
def test_presets_shapes_and_dtypes(name, request, device):
    shards = on_device(request, device, "vp9_shards")
    views, shapes, dtype = PRESETS[name]
    batch = next(iter(build_loader(cfg(shards), views, device=device)))
    assert set(batch) == set(shapes) | {"label", "index"}
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == (3, *shape) and batch[key].dtype == dtype, key
        assert torch.isfinite(batch[key].float()).all()


@pytest.mark.parametrize("device", DEVICES)
def test_cross_and_learn_flow_preset(request, device):
    shards = on_device(request, device, "flow_shards")
    views = cross_and_learn_views(CrossAndLearnViews(size=32, short_side=40))
    loader = build_loader(cfg(shards), views, device=device)
    batch = next(iter(loader))
    assert tuple(batch["rgb"].shape) == (3, 3, 32, 32) and tuple(batch["flow"].shape) == (3, 2, 10, 32, 32)
    flow = batch["flow"].cpu()
    assert flow.abs().max() <= 20.0 + 1e-3
    assert flow.mean(dim=(3, 4)).abs().max() < 1e-4  # each frame's mean motion subtracted
    rgb = batch["rgb"].cpu()
    # channel splitting: before normalisation the three channels are one channel copied
    raw = rgb * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 1], raw[:, 2], atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_flow_is_rescaled_with_its_crop(request, device):
    shards = on_device(request, device, "moving_shards")
    # The texture moves SHIFT px per source frame; after a crop of w x h source pixels resized to 16 x 24
    # the motion is SHIFT * (24 / w, 16 / h) output px, and u changes sign when the crop is mirrored.
    views = [ViewSpec("f", "flow", TemporalSpec(frames=4), SpatialSpec(size=(16, 24), scale=(0.3, 1.0), flip=0.5))]
    loader = build_loader(cfg(shards, batch_size=1, shuffle=False), views, device=device)
    by_key, key_of = metas(shards), {i: k for k, i in loader.key_index.items()}
    drawer = SampleDrawer(views, seed=0, epoch=0)
    flips = set()
    for _ in range(3):  # epochs: new crops
        for batch in loader:
            index = int(batch["index"][0])
            draw = drawer.draw(by_key[key_of[index]], index)
            y0, x0, y1, x1 = draw["f"].roi[0].tolist()
            flow = batch["f"][0, :, :, 3:-3, 3:-3]  # (2, T, h, w) away from the borders
            expected = (SHIFT[0] * 24 / (x1 - x0), SHIFT[1] * 16 / (y1 - y0))
            for c in (0, 1):
                assert float(flow[c].median()) == pytest.approx(expected[c], abs=0.15 + 0.1 * abs(expected[c])), c
            flips.add(bool(x1 < x0))
        drawer.epoch += 1
    assert flips == {False, True}


def test_seed_reproduces_a_batch(vp9_shards):
    views = video_simclr_views(VideoContrastViews(frames=4, size=32, temporal="shuffle"))
    a = next(iter(build_loader(cfg(vp9_shards, seed=7), views)))
    b = next(iter(build_loader(cfg(vp9_shards, seed=7), views)))
    c = next(iter(build_loader(cfg(vp9_shards, seed=8), views)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["clip_i"], c["clip_i"])


def test_two_ranks_cover_the_data_once(vp9_shards):
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=PLAIN)]
    seen = []
    for rank in (0, 1):
        loader = build_loader(cfg(vp9_shards, batch_size=2, drop_last=False), views, rank=rank, world_size=2)
        got = [i for batch in loader for i in batch["index"].tolist()]
        assert len(got) == loader.samples() == 3 and len(loader) == 2
        seen += got
    assert sorted(seen) == list(range(6))


def test_epochs_reshuffle_and_resume_mid_epoch(vp9_shards):
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=PLAIN)]
    loader = build_loader(cfg(vp9_shards, batch_size=2), views)
    epoch0 = [b["index"].tolist() for b in loader]
    epoch1 = [b["index"].tolist() for b in loader]
    assert loader.epoch == 2 and sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) == list(range(6))
    loader.set_epoch(1)
    it = iter(loader)
    first = next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "consumed": 1}
    resumed = build_loader(cfg(vp9_shards, batch_size=2), views)
    resumed.load_state_dict(state)
    rest = [b for b in resumed]
    assert [b["index"].tolist() for b in rest] == epoch1[1:] and first["index"].tolist() == epoch1[0]
    assert epoch0 != epoch1  # a new shuffle each epoch


def _copy_without(shards: Path, out: Path, drop: str) -> tuple[Path, str]:
    """A copy of the shard set whose first shard lacks member `drop` of its first sample."""
    shutil.copytree(shards, out)
    manifest = read_manifest(out)
    tar = Path(manifest["shards"][0]["tar"])
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    victim = members[0][0].name.split(".", 1)[0] + "." + drop
    with tarfile.open(tar, "w") as t:
        for m, data in members:
            if m.name != victim:
                t.addfile(m, io.BytesIO(data))
    subprocess.run(["wds2idx", str(tar), manifest["shards"][0]["index"]], check=True, capture_output=True)
    return out, victim.split(".")[0]


def test_missing_member_names_shard_and_key_or_is_skipped(vp9_shards, tmp_path):
    out, key = _copy_without(vp9_shards, tmp_path / "broken", "flac")
    views = gdt_views(GDTViews(frames=4, size=32, short_side=40, seconds=0.2))
    with pytest.raises(LoaderError, match=rf"train-000000\.tar.*{key}.*\.flac"):
        build_loader(cfg(out), views)
    loader = build_loader(cfg(out, on_error="skip", batch_size=1), views)
    assert loader.skipped == [f"train-000000.tar:{key}"]
    got = sorted(i for b in loader for i in b["index"].tolist())
    assert len(got) == 5 and key not in loader.key_index
    video_only = build_loader(cfg(out), [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=PLAIN)])
    assert video_only.skipped == []  # the flac is not needed there


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_undecodable_member_names_shard_and_key_or_is_skipped(codec, request, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(request.getfixturevalue(f"{codec}_shards"), out)
    tar = Path(read_manifest(out)["shards"][0]["tar"])
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as t:
        mp4 = next(m for m in t.getmembers() if m.name.endswith(".mp4"))
    data[mp4.offset_data + 64: mp4.offset_data + mp4.size] = b"\x00" * (mp4.size - 64)
    tar.write_bytes(bytes(data))
    key = mp4.name.split(".")[0]
    views = [ViewSpec("v", temporal=TemporalSpec(frames=2), spatial=PLAIN)]  # unverified: the decoder finds it
    with pytest.raises(LoaderError, match=rf"train-000000\.tar:{key}"):
        list(build_loader(cfg(out, batch_size=2, drop_last=False, verify=False), views))
    loader = build_loader(cfg(out, batch_size=1, on_error="skip", verify=False), views)
    with pytest.warns(UserWarning, match=rf"train-000000\.tar:{key}: undecodable \(.*cannot decode.*\); replaced"):
        got = [i for b in loader for i in b["index"].tolist()]
    assert loader.undecodable == {f"train-000000.tar:{key}"} and loader.skipped == [f"train-000000.tar:{key}"]
    assert key not in loader.key_index and len(loader) == 5
    # its place in the epoch went to the next sample of the order: 6 batches, none of them the bad one
    assert len(got) == 6 and set(got) == set(loader.key_index.values())
    again = [i for b in loader for i in b["index"].tolist()]  # the next epoch reads around it
    assert sorted(again) == sorted(loader.key_index.values())


def test_empty_split_is_an_error(vp9_shards):
    with pytest.raises(LoaderError, match="no shards of split 'val'"):
        build_loader(cfg(vp9_shards, split="val"), [ViewSpec("v")])


@pytest.mark.parametrize("damage", ["empty", "cut", "swapped", "shifted"])
def test_damaged_index_is_an_error_not_less_data(vp9_shards, tmp_path, damage):
    """An index that disagrees with dataset.json (issue 21, item 3) stops the loader at its start, naming
    the index: before, an empty or cut one trained on 3 or 4 of the 6 clips, a swapped one on the wrong
    members, without a word."""
    out = tmp_path / "shards"
    shutil.copytree(vp9_shards, out)
    idx = out / "train-000000.idx"
    lines = idx.read_text().splitlines(keepends=True)
    if damage == "empty":
        idx.write_text("")
    elif damage == "cut":
        idx.write_text(lines[0])  # the header still counts 3
    elif damage == "swapped":
        shutil.copy(out / "train-000001.idx", idx)  # another shard's: 3 samples too
    fields = lines[2].split()
    if damage == "shifted":  # a member moved into the middle of its neighbour
        fields[1] = str(int(fields[1]) - 512)
        idx.write_text("".join(lines[:2] + [" ".join(fields) + "\n"] + lines[3:]))
    reason = {"empty": r"its header \(none\) does not count its 0 sample lines",
              "cut": "its header v1.2 3 does not count its 0 sample lines",
              "swapped": "member .* is not one dataset.json records for train-000000.tar",
              "shifted": rf"member {fields[3]} at offset {fields[1]} overlaps the one before it"}[damage]
    for on_error in ("raise", "skip"):
        with pytest.raises(LoaderError, match=rf"^{idx}: {reason}.*; rerun the `fastvid shard` command"):
            build_loader(cfg(out, on_error=on_error), [ViewSpec("v")])


LOADER_THEN_WAIT = {
    # DALI's pool of decode workers, forked while the loader builds its pipeline
    "fork": """
import sys, time
from fastvid.data import DataConfig, TemporalSpec, ViewSpec, build_loader
loader = build_loader(DataConfig(shards=sys.argv[1], batch_size=2, threads=1, workers=2, shuffle=True),
                      [ViewSpec("v", temporal=TemporalSpec(frames=2))])
next(iter(loader))
print("ready", flush=True)
time.sleep(120)
""",
    # a spawned worker (the loader spawns once CUDA is initialised, as on a GPU machine) unpickles the source
    "spawn": """
import multiprocessing, sys, time
from fastvid.data import DataConfig, ViewSpec, build_loader
source = build_loader(DataConfig(shards=sys.argv[1]), [ViewSpec("v")]).source()
worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
worker.source = source  # pickled with the process object, unpickled in the worker
worker.start()
time.sleep(5)  # the worker has imported fastvid and unpickled the source
print("ready", flush=True)
time.sleep(120)
""",
}


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_decode_workers_end_when_the_loader_process_is_killed(vp9_shards, start):
    """kill -9 of a trainer used to leave its decode workers running (~600 MB each on a GPU machine;
    issue 21, item 8): they now end with it."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", LOADER_THEN_WAIT[start], str(vp9_shards)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= (2 if start == "fork" else 1)  # the decode workers (and any helper DALI starts)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
