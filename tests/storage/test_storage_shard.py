"""`fastvid shard SRC s3://...` into a real S3 server: killed with SIGKILL mid-run and run again, the bucket
holds the bytes of an uninterrupted local run; `fastvid info --verify` reads it back."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastvid.cli import main
from fastvid.shard import ShardConfig, read_manifest, shard_dataset
from fastvid.shard.info import check, verify
from fastvid.storage import PARTIAL, open_storage
from tests.clips import write_marked_clip

ARGS = ["--short-side", "64", "--max-samples", "1", "--workers", "1", "--flow", "farneback", "--no-progress"]


def test_shard_into_the_store_killed_and_rerun_equals_a_local_run(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "cache"))  # the staging folder
    src = tmp_path / "src"
    for i in range(12):
        write_marked_clip(src / "c" / f"v{i}.mp4", 40, height=96, width=128)
    ref = tmp_path / "ref"
    shard_dataset(ShardConfig(src=str(src), out=str(ref), short_side=64, max_samples=1, workers=1,
                              flow="farneback", progress=False))
    url = f"s3://{s3.bucket}/killed"
    bucket = open_storage(url)
    proc = subprocess.Popen([sys.executable, "-m", "fastvid.cli", "shard", str(src), url, *ARGS],
                            cwd=Path(__file__).parents[2])
    deadline = time.time() + 120
    while sum(n.endswith(".tar") for n in bucket.list()) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    listed = bucket.list()
    assert "dataset.json" not in listed, "the run ended before it could be killed"
    kept = {n: s.stamp for n, s in listed.items() if n.endswith(".tar")}
    journaled = [json.loads(line)["tar"] for line in bucket.read_log(".progress.jsonl").splitlines()[1:]]
    assert 3 <= len(kept) < 12 and set(journaled) <= set(kept)

    assert main(["shard", str(src), url, *ARGS]) == 0
    listed = bucket.list()
    assert {n: listed[n].stamp for n in journaled} == {n: kept[n] for n in journaled}  # journaled: not redone
    names = sorted(p.name for p in ref.iterdir() if p.suffix in (".tar", ".idx"))
    assert sorted(n for n in listed if n.endswith((".tar", ".idx"))) == names
    assert not [n for n in listed if n.endswith(PARTIAL)]
    for name in names:  # the same bytes as an uninterrupted local run
        assert bucket.read(name) == (ref / name).read_bytes(), name
    remote, local = read_manifest(url), read_manifest(ref)
    assert remote["options"].pop("out") == url and local["options"].pop("out") == str(ref)
    assert [{**s, "tar": s["tar"].rsplit("/", 1)[1], "index": s["index"].rsplit("/", 1)[1]} for s in remote["shards"]] \
        == [{**s, "tar": Path(s["tar"]).name, "index": Path(s["index"]).name} for s in local["shards"]]
    assert check(url) == [] and verify(url) == []
    assert main(["info", url, "--verify"]) == 0


def test_a_rerun_redoes_a_damaged_object_and_rewrites_a_missing_index(s3, tmp_path, monkeypatch):
    """The local resume's integrity checks, on objects: a tar with other bytes (another ETag) is checked
    member by member and redone; a deleted index is rewritten from its tar."""
    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    for i in range(3):
        write_marked_clip(src / "c" / f"v{i}.mp4", 12, height=48, width=64)
    url = f"s3://{s3.bucket}/damaged"
    args = ["shard", str(src), url, "--short-side", "32", "--max-samples", "1", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    bucket = open_storage(url)
    good = {n: bucket.read(n) for n in ("train-000000.tar", "train-000001.idx")}
    data = bytearray(good["train-000000.tar"])
    data[600] ^= 0xFF  # inside the first member's data
    bucket.write("train-000000.tar", bytes(data), tmp_path)
    bucket.delete("train-000001.idx")
    assert check(url) != [] and verify(url) != []
    summary = shard_dataset(ShardConfig(src=str(src), out=url, short_side=32, max_samples=1, workers=1,
                                        progress=False))
    assert [line.split(":")[0] for line in summary.redone] == ["train-000000.tar", "train-000001.idx"]
    assert "checksum" in summary.redone[0] and "missing" in summary.redone[1]
    assert {n: bucket.read(n) for n in good} == good
    assert check(url) == [] and verify(url) == []


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs `pip install 'fastvid[ray]'`")
def test_ray_shards_into_the_store_equal_a_local_run(s3, tmp_path, monkeypatch):
    """`fastvid shard SRC s3://... --ray`: tasks on a cluster started for the run, shards published to the bucket
    by the driver, byte for byte a local run's."""
    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    for i in range(6):
        write_marked_clip(src / "c" / f"v{i}.mp4", 12, height=48, width=64)
    ref = tmp_path / "ref"
    shard_dataset(ShardConfig(src=str(src), out=str(ref), short_side=32, max_samples=2, workers=1, progress=False))
    url = f"s3://{s3.bucket}/ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # as tests/shard/test_ray.py
    done = subprocess.run([sys.executable, "-m", "fastvid.cli", "shard", str(src), url, "--short-side", "32",
                           "--max-samples", "2", "--workers", "2", "--ray", "--no-progress"],
                          cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    bucket = open_storage(url)
    listed = bucket.list()
    names = sorted(p.name for p in ref.iterdir() if p.suffix in (".tar", ".idx"))
    assert len(names) == 6 and sorted(n for n in listed if n.endswith((".tar", ".idx"))) == names
    for name in names:
        assert bucket.read(name) == (ref / name).read_bytes(), name
    assert read_manifest(url)["options"]["ray"] == "local" and check(url) == []
