"""Faults a user causes end in one line naming the file and the reason, before anything is written (issue 21,
item 7): a full disk during a checkpoint or encoders write, a dataset.json that is a list, lacks `shards`, is
empty or not UTF-8, clips too small for CaffeNet, and an eval checkpoint that is a folder."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from fastvid import checkpoint
from fastvid.checkpoint import PARTIAL, save_checkpoint, save_encoders
from fastvid.cli import main
from fastvid.models import Encoder


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 KiB tmpfs where the machine lets the test mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                          check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_during_a_checkpoint_write_is_one_line(small_disk: Path) -> None:
    """It used to raise SafetensorError ('Error while serializing: I/O error ...') or an [Errno 28] naming no file."""
    kept = save_checkpoint(small_disk / "step_00000001", {"w": torch.ones(4)})
    target = small_disk / "step_00000002"
    with pytest.raises(OSError) as err:
        save_checkpoint(target, {"w": torch.ones(100_000)})  # 400 kB
    assert str(err.value) == f"writing {target}: No space left on device; nothing partial is left and the " \
                             "checkpoints before it are kept"
    assert sorted(p.name for p in small_disk.iterdir()) == [kept.name]
    with pytest.raises(OSError, match=rf"^writing {small_disk / 'encoders.pt'}: No space left on device; "):
        save_encoders(small_disk / "encoders.pt", {"method": "gdt", "config": {}, "step": 1},
                      {"video": Encoder("caffenet_bn").export()})
    assert not list(small_disk.glob("*" + PARTIAL))


def test_a_metadata_write_error_names_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state.json's write failing with an OSError that names no file (as `write()` does)."""
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_fsync", full)
    with pytest.raises(OSError, match=rf"^writing {tmp_path / 'step_00000001'}: No space left on device;"):
        save_checkpoint(tmp_path / "step_00000001", {"w": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, reason", [
    (b"[1, 2]", "a JSON list, not the mapping `fastvid shard` writes"),
    (b'{"version": 1}', "no `shards` list of {tar, index, split, samples, ...} entries"),
    (b"", "empty"),
    (b"  \n", "empty"),
    (b'\xff\xfe{"version": 1}', "not UTF-8 text (byte 0)"),
])
def test_a_dataset_json_fastvid_did_not_write_is_one_line(tmp_path: Path, content: bytes, reason: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_bytes(content)
    for argv in (["info", str(data)], ["train", "--method", "video_simclr", "--data", str(data),
                                       "--output", str(tmp_path / "run"), "train.device=cpu"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fastvid {argv[0]}: error: {data / 'dataset.json'}: {reason}") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_clips_too_small_for_caffenet_fail_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """They used to fail at the first step ('Output size is too small'), after config.yaml and tb/ were written."""
    out = tmp_path / "run"
    assert main(["train", "--method", "cross_and_learn", "--output", str(out), "model.views.size=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastvid train: error: override model.views.size=64: model.views.size: CaffeNet needs crops of " \
                  "at least 67 px, got 64"
    assert not out.exists()


@pytest.mark.parametrize("folder", ["run", "checkpoint", "empty"])
def test_an_eval_checkpoint_that_is_a_folder_says_what_to_pass(tmp_path: Path, folder: str,
                                                                capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    step = save_checkpoint(run / "checkpoints" / "step_00000001", {"w": torch.ones(2)})
    save_encoders(run / "encoders.pt", {"method": "gdt", "config": {}, "step": 1},
                  {"video": Encoder("caffenet_bn").export()})
    path = {"run": run, "checkpoint": step, "empty": tmp_path / "empty"}[folder]
    path.mkdir(exist_ok=True)
    assert main(["eval", "--checkpoint", str(path), "--probe", "motion"]) == 2
    hint = {"run": f"pass {run / 'encoders.pt'}",
            "checkpoint": "a training checkpoint: pass the encoders.pt its run writes at the end",
            "empty": "pass the encoders.pt a training run writes at the end"}[folder]
    assert capsys.readouterr().err.strip() == f"fastvid eval: error: {path}: a folder, not an encoders file; {hint}"
