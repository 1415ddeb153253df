"""One process per output folder (issue 21, item 4): a second `fastvid shard` into a held OUT, or a second
`fastvid train` into a held run folder, stops with one line before writing; kill -9 of the holder leaves no
stale lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastvid.cli import main
from fastvid.errors import RunError
from fastvid.lock import FolderInUse, lock_folder
from tests.clips import write_marked_clip
from tests.train_helpers import CPU, TINY

HOLD = "import sys, time; from fastvid.lock import lock_folder; lock = lock_folder(sys.argv[1], 'the holder'); " \
       "print('locked', flush=True); time.sleep(120)"


def holder(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_held_folder_is_refused_and_kill9_frees_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    proc = holder(folder)
    try:
        with pytest.raises(FolderInUse, match=rf"^{folder}: in use by another process \(pid {proc.pid}, the holder\)"):
            lock_folder(folder, "a test")
    finally:
        kill9(proc)
    with lock_folder(folder, "a test") as lock:  # no stale lock after kill -9
        assert lock_folder(folder, "a test") is lock  # this process again: the same lock, not a refusal
        assert (folder / ".lock").read_text() == f"pid {os.getpid()}, a test\n"
    proc = holder(folder)  # released at the end of the `with`
    kill9(proc)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="file: is a file, not a folder"):
        lock_folder(tmp_path / "file", "a test")


def test_second_shard_run_into_a_held_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    write_marked_clip(src / "c" / "v0.mp4", 4, height=32, width=48, gop=4)
    args = ["shard", str(src), str(out), "--short-side", "32", "--workers", "1", "--no-progress"]
    proc = holder(out)
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"fastvid shard: error: {out}: in use by another process (pid {proc.pid}, the holder); " \
                      "wait for it to end or choose another folder for fastvid shard"
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of its own written
    finally:
        kill9(proc)
    assert main(args) == 0 and (out / "dataset.json").is_file()


def test_second_training_run_into_a_held_folder_is_one_line(shards: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    proc = holder(out)
    try:
        argv = ["train", "--method", "video_simclr", "--data", shards, "--output", str(out), "--max-steps", "1",
                *CPU, *TINY["video_simclr"]]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"fastvid train: error: {out}: in use by another process (pid {proc.pid}, the holder); " \
                      "wait for it to end or choose another folder for fastvid train"
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no config.yaml, no tb/
    finally:
        kill9(proc)


def test_a_forked_worker_does_not_keep_the_lock(tmp_path: Path) -> None:
    """Workers are forked while the folder is held; one still alive (or still exiting after its parent's
    kill -9) must not keep others out once its parent let go."""
    import multiprocessing
    import time

    folder = tmp_path / "out"
    lock = lock_folder(folder, "a test")
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    try:
        lock.release()
        kill9(holder(folder))  # another process takes the folder while the forked child lives
    finally:
        child.kill()
        child.join()
