"""Faults around `fastvid shard` (issue 14): unusual entries in SRC each get one line in errors.jsonl, and
a full disk ends the run with one line, no partial file left, and a rerun that finishes the job."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fastvid.cli import main
from fastvid.shard import read_manifest
from fastvid.shard.info import check, verify
from fastvid.shard.writer import ShardWriter
from tests.clips import write_marked_clip
from tests.shard.test_shard_dataset import assert_identical_shards

ARGS = ["--short-side", "32", "--max-samples", "1", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        write_marked_clip(root / "c" / f"v{i}.mp4", 6, height=48, width=64, gop=4)
    return root


def test_unusual_entries_get_one_line_each(videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    os.symlink(videos / "c" / "v0.mp4", src / "c" / "v0.mp4")
    os.symlink(videos / "c", src / "linked")  # a folder symlink: followed, its videos are sharded
    os.symlink("..", src / "c" / "loop")  # a symlink loop back to SRC
    os.symlink(src / "nowhere.mp4", src / "c" / "broken.mp4")
    os.mkfifo(src / "c" / "pipe.mp4")  # reading it would block for ever
    (src / "locked").mkdir()
    for name in (b"\xff\xfe.mp4", b"caf\xe9.mp4"):  # two names that are not UTF-8 (Latin-1 files)
        (src / "c" / os.fsdecode(name)).write_bytes((videos / "c" / "v1.mp4").read_bytes())
    scandir = os.scandir

    def unreadable(path):  # the test may run as root, who reads any folder: refuse this one as chmod 000 would
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)
    out = tmp_path / "out"
    assert main(["shard", str(src), str(out), *ARGS]) == 0
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted((e["path"], e["kind"]) for e in errors) == sorted([
        ("c/broken.mp4", "broken-symlink"), ("c/caf\\xe9.mp4", "undecodable-name"), ("c/loop", "symlink-loop"),
        ("c/pipe.mp4", "not-a-file"), ("c/\\xff\\xfe.mp4", "undecodable-name"), ("locked", "unreadable")])
    assert all(not e["kept"] and e["reason"] and "\n" not in e["reason"] for e in errors)
    assert read_manifest(out)["samples"] == 5  # c/v0 and linked/v0..v3
    summary = capsys.readouterr().out
    assert "rejected: 6 (broken-symlink 1, not-a-file 1, symlink-loop 1, undecodable-name 2, unreadable 1)" in summary
    assert main(["shard", str(src), str(out), *ARGS, "--strict"]) == 1  # a rerun finds them again


def _fill_disk(out: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make writes under `out` fail with ENOSPC after two shards: a 3-shard-sized tmpfs where the machine
    lets the test mount one, else ShardWriter.add raising on its third call."""
    if how == "tmpfs":
        out.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(out)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return
    add, calls = ShardWriter.add, []

    def failing(self, sample):
        calls.append(sample.key)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        add(self, sample)

    monkeypatch.setattr(ShardWriter, "add", failing)


@pytest.mark.parametrize("how", ["mocked", "tmpfs"])
def test_full_disk_one_line_no_partial_files_then_resume(videos: Path, tmp_path: Path, how: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    reference = tmp_path / "ref"
    assert main(["shard", str(videos), str(reference), *ARGS]) == 0
    out = tmp_path / "out"
    _fill_disk(out, monkeypatch, how)
    try:
        capsys.readouterr()
        assert main(["shard", str(videos), str(out), *ARGS]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fastvid shard: error: writing {out}") and "No space left on device" in err, err
        assert "\n" not in err and "rerun the same command" in err
        assert not list(out.glob("*.partial")) and not (out / "dataset.json").exists()
        if how == "tmpfs":  # room again
            subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)
        else:
            monkeypatch.undo()
        assert main(["shard", str(videos), str(out), *ARGS]) == 0
        for name in ("train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"):
            assert_identical_shards(out / name, reference / name)
        assert check(out) == [] and verify(out) == [] and read_manifest(out)["samples"] == 4
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(out)], check=False)


@pytest.mark.parametrize("where", ["class-folder", "src-itself"])
def test_out_holding_videos_of_src_is_refused_before_writing(videos: Path, tmp_path: Path, where: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    """`fastvid shard src src/c` and `fastvid shard flat flat`: one line naming OUT and a video in it, nothing
    written (their videos would be in no shard, or lost with OUT) (issue 21, item 2)."""
    src = tmp_path / "src"
    shutil.copytree(videos, src)
    if where == "src-itself":
        src = src / "c"
    out = src / "c" if where == "class-folder" else src
    before = sorted(p.name for p in out.iterdir())
    assert main(["shard", str(src), str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastvid shard: error: OUT {out} holds ") and "\n" not in err, err
    assert "v0.mp4" in err.split(", a file of SRC")[0]
    assert sorted(p.name for p in out.iterdir()) == before


def test_new_out_inside_src_shards_every_video_and_reruns_alike(videos: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(videos, src)
    out = src / "shards"
    assert main(["shard", str(src), str(out), *ARGS]) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert read_manifest(out)["samples"] == 4 and len(first) == 4
    assert main(["shard", str(src), str(out), *ARGS]) == 0  # its own shards are not taken for videos
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first and read_manifest(out)["samples"] == 4


def test_src_without_video_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    assert main(["shard", str(src), str(out), *ARGS]) == 2
    assert capsys.readouterr().err.strip() == f"fastvid shard: error: SRC {src}: no video to shard (it is empty)"
    assert not out.exists()
    (src / "readme.txt").write_text("not a video")
    assert main(["shard", str(src), str(out), *ARGS]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"fastvid shard: error: no file of {src} could be sharded (see {out / 'errors.jsonl'})"
    assert json.loads((out / "errors.jsonl").read_text())["path"] == "readme.txt"
