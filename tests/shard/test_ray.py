"""`fastvid shard --ray` on a real local Ray cluster (2 CPUs, started once for the module): the same shards,
indexes and dataset.json as local workers, byte for byte; a driver killed with -9 then rerun still gives them;
a damaged video and a task that crashes its worker (retried, then recorded) end in errors.jsonl.

Every Ray driver is a `fastvid shard` subprocess, so this process never starts Ray's threads (the local
pool's tests fork workers from it)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastvid.cli import main
from fastvid.config import ConfigError
from fastvid.shard import ShardConfig, read_manifest, shard_dataset
from fastvid.shard.cluster import RETRIES
from fastvid.shard.config import RUNTIME_FIELDS
from tests.clips import write_marked_clip
from tests.shard.test_shard_dataset import assert_identical_shards, journaled_mtimes

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs `pip install 'fastvid[ray]'`")

ROOT = Path(__file__).parents[2]
# Token authentication (Ray's default) would need the head's token in every driver; these clusters listen on
# this machine only and live for one test module.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
OPTIONS = {"short_side": 32, "gop": 4, "shard_size": 6000}  # several shards, closed by size: the hard case
ARGS = ["--short-side", "32", "--gop", "4", "--shard-size", "6000"]
HOLD_CLUSTER = ("import sys, ray; ray.init(num_cpus=2, include_dashboard=False); "
                "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a 2-CPU Ray cluster; it ends with the process holding it (closing its stdin)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        yield address
    finally:
        holder.stdin.close()
        if holder.wait(timeout=60) is None:
            holder.kill()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for label in ("jump", "walk"):
        for i in range(4):
            write_marked_clip(root / label / f"{label}{i}.mp4", 8 + 2 * i, height=48, width=64, gop=4,
                              audio_rate=16000 if i == 0 else None)
    return root


@pytest.fixture(scope="module")
def reference(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same videos sharded by local worker processes."""
    out = tmp_path_factory.mktemp("local")
    shard_dataset(ShardConfig(src=str(videos), out=str(out), workers=2, progress=False, **OPTIONS))
    return out


def fastvid_shard(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastvid.cli", "shard", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def comparable(out: Path) -> dict:
    """dataset.json without what names the run rather than the data (OUT, workers, --ray ...) and the
    checksum over them."""
    manifest = json.loads((out / "dataset.json").read_text())
    for name in RUNTIME_FIELDS:
        del manifest["options"][name]
    del manifest["crc32"]
    return manifest


def assert_same_output(out: Path, reference: Path) -> None:
    tars = sorted(p.name for p in reference.glob("*.tar"))
    assert len(tars) >= 3 and sorted(p.name for p in out.glob("*.tar")) == tars
    for name in tars:
        assert_identical_shards(out / name, reference / name)
        idx = name.replace(".tar", ".idx")
        assert (out / idx).read_bytes() == (reference / idx).read_bytes(), idx
    assert comparable(out) == comparable(reference)
    assert (out / "errors.jsonl").read_bytes() == (reference / "errors.jsonl").read_bytes()


@pytest.mark.parametrize("where", ["cluster", "started-for-the-run"])
def test_ray_shards_equal_local_shards_with_a_progress_bar(where: str, videos: Path, reference: Path, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    ray = ["--ray", request.getfixturevalue("cluster")] if where == "cluster" else ["--workers", "2", "--ray"]
    proc = fastvid_shard(str(videos), str(tmp_path), *ARGS, *ray)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_same_output(tmp_path, reference)
    assert "shard: 100%" in stderr and "8/8 [" in stderr and "frames=" + str(read_manifest(tmp_path)["frames"]) in stderr
    assert json.loads((tmp_path / "dataset.json").read_text())["options"]["ray"] == (ray[1] if len(ray) == 2 else
                                                                                  "local")
    assert stdout.startswith("8 samples (train 8)")


def test_killed_driver_then_rerun_gives_the_same_bytes(cluster: str, tmp_path: Path) -> None:
    videos = tmp_path / "src"
    for i in range(8):
        write_marked_clip(videos / "c" / f"v{i}.mp4", 40, height=96, width=128)
    args = ["--short-side", "64", "--max-samples", "1", "--flow", "farneback", "--no-progress"]
    shard_dataset(ShardConfig(src=str(videos), out=str(tmp_path / "ref"), short_side=64, max_samples=1,
                              flow="farneback", workers=2, progress=False))
    out = tmp_path / "out"
    proc = fastvid_shard(str(videos), str(out), *args, "--ray", cluster)
    deadline = time.time() + 90
    while len(list(out.glob("*.tar"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists(), "the run ended before it could be killed"
    journaled = journaled_mtimes(out)
    assert 1 <= len(journaled) < 8
    rerun = fastvid_shard(str(videos), str(out), *args, "--ray", cluster)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    assert "shards kept from an earlier run" in rerun.stdout.read()
    assert {k: (out / k).stat().st_mtime_ns for k in journaled} == journaled  # journaled shards were kept
    assert_same_output(out, tmp_path / "ref")


# A driver whose transcoding crashes its Ray worker (SIGSEGV) on b.mp4 every time and hangs on c.mp4; each
# attempt at b.mp4 leaves a line in ATTEMPTS. Defined in __main__, so Ray ships the function itself to the workers.
FAULTY_DRIVER = """
import os, signal, sys, time
import fastvid.shard.run as run
from fastvid.cli import main

ATTEMPTS, real = sys.argv[1], run._work

def faulty(source, cfg, labels):
    if source.path.name == "b.mp4":
        with open(ATTEMPTS, "a") as f:
            f.write(f"{os.getpid()}\\n")
        os.kill(os.getpid(), signal.SIGSEGV)
    if source.path.name == "c.mp4":
        time.sleep(600)
    return real(source, cfg, labels)

run._work = faulty
sys.exit(main(["shard", *sys.argv[2:]]))
"""


def test_damaged_video_crash_and_hang_are_recorded(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "src" / "c"
    for name in ("a", "b", "c", "d"):
        write_marked_clip(src / f"{name}.mp4", 6, height=48, width=64)
    damaged = bytearray((src / "d.mp4").read_bytes())
    damaged[: len(damaged) // 2] = bytes(len(damaged) // 2)  # its header and first frames zeroed
    (src / "d.mp4").write_bytes(bytes(damaged))
    attempts, out = tmp_path / "attempts.txt", tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", FAULTY_DRIVER, str(attempts), str(src.parent), str(out),
                           "--short-side", "32", "--timeout", "15", "--no-progress", "--ray", cluster],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors = {e["path"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert sorted((path, e["kind"], e["kept"]) for path, e in errors.items()) == [
        ("c/b.mp4", "crashed", False), ("c/c.mp4", "timeout", False), ("c/d.mp4", "not-a-video", False)]
    assert f"failed {RETRIES + 1} times" in errors["c/b.mp4"]["reason"] and "15 s" in errors["c/c.mp4"]["reason"]
    assert len(set(attempts.read_text().split())) == RETRIES + 1  # each attempt in a fresh worker
    manifest = read_manifest(out)
    assert manifest["samples"] == 1 and "rejected: 3 (crashed 1, not-a-video 1, timeout 1)" in proc.stdout


def test_ray_address_must_not_be_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ray"):
        ShardConfig(src=str(tmp_path), out=str(tmp_path / "out"), ray=" ")


def test_no_cluster_at_the_address_is_one_line(videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    assert main(["shard", str(videos), str(tmp_path), "--no-progress", "--ray", address]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastvid shard: error: Ray cluster at {address}: nothing answers") and "\n" not in err, err
