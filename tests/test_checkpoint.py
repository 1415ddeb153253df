"""Checkpoints without pickles (issue 14): round trips of training state, atomic saves, the newest complete
checkpoint chosen and the skipped ones named, and crafted pickles refused with nothing executed."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvid.checkpoint import (PARTIAL, STATE, TENSORS, CheckpointError, load_checkpoint, load_encoders,
                                newest_checkpoint, save_checkpoint, save_encoders)
from fastvid.checksum import json_checksum
from fastvid.cli import main
from fastvid.models import Encoder


class Payload:
    """Unpickling this runs `os.system`: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def training_state() -> dict:
    """What a trainer saves: weights, an optimiser with int keys and step tensors, a scheduler, plain
    progress data, and every RNG (numpy's holds a uint32 array, Python's a tuple of ints)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "progress": {"step": 7, "loader": {"epoch": 1, "position": 12}, "nan": float("inf")},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "bf16": torch.ones(2, dtype=torch.bfloat16)}}


def assert_same(a, b) -> None:
    assert type(a) is type(b) or isinstance(a, dict) and type(b) is dict, (type(a), type(b))  # OrderedDict -> dict
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_restores_every_part(tmp_path: Path) -> None:
    state = training_state()
    path = save_checkpoint(tmp_path / "step_00000007", state)
    assert sorted(p.name for p in path.iterdir()) == [STATE, TENSORS]
    loaded = load_checkpoint(path)
    assert_same(state, loaded)
    np.random.set_state(loaded["rng"]["numpy"])  # the restored RNG states are usable as they are
    random.setstate(loaded["rng"]["python"])
    torch.set_rng_state(loaded["rng"]["torch"])
    optimizer = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    optimizer.load_state_dict(loaded["optimizer"])
    assert optimizer.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]


def test_objects_that_are_not_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="progress/fn is a function"):
        save_checkpoint(tmp_path / "step_1", {"progress": {"fn": lambda: 0}})
    assert not list(tmp_path.iterdir())  # the partial folder is removed


def test_newest_complete_checkpoint_is_taken_and_skipped_ones_named(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        save_checkpoint(folder / f"step_{step:08d}", {"step": step, "w": torch.full((3,), float(step))})
    # 40: killed during its save (one file of two written); 30: a byte flipped after the save.
    partial = folder / f"step_00000040{PARTIAL}"
    partial.mkdir()
    (partial / TENSORS).write_bytes(b"\0" * 64)
    data = bytearray((folder / "step_00000030" / TENSORS).read_bytes())
    data[-1] ^= 0xFF
    (folder / "step_00000030" / TENSORS).write_bytes(bytes(data))
    path, state, skipped = newest_checkpoint(folder)
    assert path.name == "step_00000020" and state["step"] == 20 and torch.equal(state["w"], torch.full((3,), 20.0))
    assert len(skipped) == 2
    assert "step_00000040.partial: incomplete (its save was interrupted)" in skipped[0]
    assert "step_00000030" in skipped[1] and "checksum" in skipped[1]
    # A truncated state.json and a missing tensors file are skipped the same way.
    (folder / "step_00000020" / STATE).write_text('{"format": "fastvid-checkpoint", "vers')
    (folder / "step_00000010" / TENSORS).unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint.*not JSON.*missing") as err:
        newest_checkpoint(folder)
    assert "\n" not in str(err.value)


def test_accelerate_pickles_are_not_loaded(tmp_path: Path) -> None:
    """A folder of Accelerate pickles (one crafted) in place of a checkpoint: refused, nothing executed."""
    marker = tmp_path / "pwned"
    old = tmp_path / "checkpoints" / "step_00000005"
    old.mkdir(parents=True)
    (old / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"x": Payload(marker)}, old / "optimizer.bin")
    with pytest.raises(CheckpointError, match=r"step_00000005: no state\.json"):
        newest_checkpoint(tmp_path / "checkpoints")
    assert not marker.exists()


def test_encoders_round_trip_and_crafted_pickle_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    encoder = Encoder("resnet9", in_channels=1)
    path = save_encoders(tmp_path / "encoders.pt", {"method": "gdt", "config": {"a": 1}, "step": 3},
                         {"audio": encoder.export()})
    loaded = load_encoders(path)
    assert (loaded["method"], loaded["config"], loaded["step"]) == ("gdt", {"a": 1}, 3)
    assert loaded["encoders"]["audio"]["arch"] == "resnet9" and loaded["encoders"]["audio"]["in_channels"] == 1
    weights = loaded["encoders"]["audio"]["state_dict"]
    assert_same(dict(sorted(encoder.export()["state_dict"].items())), dict(sorted(weights.items())))
    Encoder("resnet9", in_channels=1).net.load_state_dict(weights)
    assert not list(tmp_path.glob("*" + PARTIAL))
    # A crafted encoders.pt (torch.save of a pickle that runs a command): refused by `fastvid eval`.
    marker = tmp_path / "pwned"
    torch.save({"method": "x", "encoders": {"video": Payload(marker)}}, tmp_path / "evil.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload(marker)))
    for evil in ("evil.pt", "raw.pt"):
        assert main(["eval", "--checkpoint", str(tmp_path / evil), "--probe", "motion"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fastvid eval: error: {tmp_path / evil}: not a safetensors") and "\n" not in err
    assert not marker.exists()


@pytest.mark.slow
def test_resume_after_a_save_killed_midway_falls_back_with_the_same_next_step_loss(shards, tmp_path, capsys) -> None:
    """A save of step 2 killed after one of its files (left as step_00000002.partial) and a damaged later
    checkpoint: --resume takes step 1, says which and why, and step 2 gives the uninterrupted loss."""
    from fastvid.run_config import load_config
    from fastvid.train import train
    from tests.train_helpers import tiny

    split = tmp_path / "split"
    whole = train(tiny("video_simclr", shards, split, "train.max_steps=2", "train.checkpoint_every=1"))
    checkpoints = split / "checkpoints"
    killed = checkpoints / f"step_00000002{PARTIAL}"
    (checkpoints / "step_00000002").rename(killed)
    (killed / STATE).unlink()  # the kill came before state.json was written
    save_checkpoint(checkpoints / "step_00000003", {"step": 3})
    (checkpoints / "step_00000003" / STATE).write_text("{")  # and a later one damaged on disk
    capsys.readouterr()
    resumed = train(load_config("video_simclr", split / "config.yaml", ["train.max_steps=2"]), resume=True)
    out = capsys.readouterr().out
    assert "skipped checkpoint " in out and "step_00000003/state.json: not JSON" in out
    assert f"step_00000002{PARTIAL}: incomplete" in out and "resumed from " in out and "step_00000001 at step 1" in out
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-6)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002", "step_00000003"]


@pytest.mark.parametrize("tensors", [None, [], {"bytes": 1}, {"bytes": "1", "crc32": "00000000"},
                                     {"bytes": True, "crc32": "00000000"}, {"bytes": 1, "crc32": 0}])
def test_a_state_json_with_a_bad_tensors_entry_is_a_checkpoint_error(tmp_path: Path, tensors) -> None:
    import json

    path = save_checkpoint(tmp_path / "step_00000001", {"w": torch.ones(2)})
    header = json.loads((path / STATE).read_text())
    if tensors is None:
        del header["tensors"]
    else:
        header["tensors"] = tensors
    header["crc32"] = json_checksum(header)  # a well-formed file with a bad entry: the entry is what is named
    (path / STATE).write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"state\.json: its \"tensors\" entry is not") as err:
        load_checkpoint(path)
    assert str(path / STATE) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("meta", ['[1, 2]', 'null', '{"encoders": {"video": 3}}', '{"encoders": {"video": []}}',
                                  '{"encoders": {"video": {"arch": "r3d_18"}}}',
                                  '{"encoders": {"video": {"arch": 1, "in_channels": 3}}}'])
def test_encoders_metadata_of_the_wrong_shape_is_a_checkpoint_error(tmp_path: Path, meta: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "encoders.pt"
    save_file({"video/w": torch.ones(2)}, path, metadata={"fastvid": meta})
    with pytest.raises(CheckpointError) as err:
        load_encoders(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_processes_beyond_the_saved_ones_get_distinct_deterministic_rngs() -> None:
    """Resumed with more processes than saved the run: each extra one gets its own seeded streams, the same
    on every resume, never a copy of process 0's."""
    from types import SimpleNamespace

    from fastvid.checkpoint import restore_run_state, rng_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(5)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "objects": {},
             "rng": [rng_state(), rng_state()]}
    torch.manual_seed(6)
    saved["rng"][1] = rng_state()

    def draws(rank: int) -> tuple:
        restore_run_state(SimpleNamespace(process_index=rank), model, optimizer, {}, saved)
        return tuple(torch.rand(3).tolist()), random.random(), float(np.random.rand())

    first, second, third, fourth = (draws(rank) for rank in range(4))
    assert draws(0) == first and draws(2) == third and draws(3) == fourth  # deterministic
    assert len({first, second, third, fourth}) == 4
    assert all(a != b for a, b in zip(third, first)) and all(a != b for a, b in zip(fourth, third))


@pytest.mark.parametrize("damage", ["a digit", "a key"])
def test_a_changed_state_json_is_damage_and_the_previous_checkpoint_is_taken(tmp_path: Path, damage: str) -> None:
    """One character changed in state.json (issue 21, item 5): step 6 -> 7 used to resume at step 7, a
    damaged key to fail with a traceback; both are now a checksum mismatch, skipped with one line."""
    folder = tmp_path / "checkpoints"
    for step in (5, 6):
        save_checkpoint(folder / f"step_{step:08d}", {"progress": {"step": step}, "w": torch.full((2,), float(step))})
    state = folder / "step_00000006" / STATE
    text = state.read_text()
    changed = text.replace('"step": 6', '"step": 7') if damage == "a digit" else text.replace('"progress"', '"progresz"')
    assert changed != text and len(changed) == len(text)
    state.write_text(changed)
    path, loaded, skipped = newest_checkpoint(folder)
    assert path.name == "step_00000005" and loaded["progress"] == {"step": 5}
    assert len(skipped) == 1 and skipped[0].startswith(f"{state}: checksum ") and skipped[0].endswith("(damaged)")
    assert "\n" not in skipped[0]


def test_a_flipped_bit_in_a_weight_of_encoders_pt_is_refused(tmp_path: Path) -> None:
    """A bit flipped in encoders.pt that makes a weight 1e37 (issue 21, item 5) used to evaluate silently."""
    path = save_encoders(tmp_path / "encoders.pt", {"method": "gdt", "config": {}, "step": 3},
                         {"audio": Encoder("resnet9", in_channels=1).export()})
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x7E  # a high byte of the last float32 weight: its exponent jumps
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path}: checksum [0-9a-f]{{8}}, the file says '[0-9a-f]{{8}}' "
                                              r"\(damaged\)$"):
        load_encoders(path)


def test_a_state_json_without_its_checksum_is_refused(tmp_path: Path) -> None:
    """Every state.json fastvid wrote carries its CRC-32: one without it is damaged, not an older format."""
    import json

    path = save_checkpoint(tmp_path / "step_00000001", {"w": torch.ones(2)})
    header = json.loads((path / STATE).read_text())
    del header["crc32"]
    (path / STATE).write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"state\.json: checksum \w{8}, the file says None \(damaged\)"):
        load_checkpoint(path)
