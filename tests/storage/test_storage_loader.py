"""The loader, `fastvid info` and `read_manifest` on shards in a real S3 server: the same samples as from the
local folder, and one-line errors for a missing object or bucket, a wrong key and a stopped server."""
from __future__ import annotations

import http.client
import http.server
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from fastvid.data import AudioSpec, DataConfig, LoaderError, SpatialSpec, TemporalSpec, ViewSpec, build_loader
from fastvid.data.source import write_order
from fastvid import storage
from fastvid.errors import MissingFile, UserError
from fastvid.shard import read_manifest
from fastvid.storage import ObjectStorage, StorageError, open_storage
from tests.clips import frame_index
from tests.storage.conftest import upload
from tests.storage.seaweed import SeaweedServer

VIEWS = [ViewSpec("v", temporal=TemporalSpec(frames=4), spatial=SpatialSpec(size=(32, 32), normalize=False)),
         ViewSpec("a", modality="audio", audio=AudioSpec(follow="v", seconds=0.4))]


def batches(shards: str, workers: int = 1, **overrides) -> list[dict[str, torch.Tensor]]:
    cfg = DataConfig(shards=shards, batch_size=2, threads=1, workers=workers, drop_last=False, seed=3, **overrides)
    return list(build_loader(cfg, VIEWS))


def test_manifest_from_the_store_names_objects(s3_shards, local_shards):
    remote, local = read_manifest(s3_shards), read_manifest(local_shards)
    assert [s["tar"] for s in remote["shards"]] == [f"{s3_shards}/{s['tar'].rsplit('/', 1)[1]}" for s in local["shards"]]
    assert {k: v for k, v in remote.items() if k != "shards"} == {k: v for k, v in local.items() if k != "shards"}


def test_every_sample_from_the_store_equals_the_local_read(s3_shards, local_shards):
    """Members byte for byte, sample by sample (one request each), then whole batches through DALI."""
    from fastvid.data.loader import build_loader as build

    cfg = DataConfig(shards=str(local_shards), batch_size=2, threads=1, workers=2)
    local = build(cfg, VIEWS).source()
    remote = build(DataConfig(shards=s3_shards, batch_size=2, threads=1, workers=2), VIEWS).source()
    for position in range(len(local.table.keys)):
        assert remote.fetch(position) == local.fetch(position)
    got, want = batches(s3_shards, workers=2), batches(str(local_shards), workers=2)  # 2: read-ahead by worker
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in g)
    # the frames are the clips' own (their marks), not merely equal garbage
    for clip in (c for b in got for c in b["v"]):  # (3, T, H, W) in [0, 1]
        marks = [frame_index(f) for f in clip.permute(1, 2, 3, 0).numpy() * 255.0]
        assert all(b > a for a, b in zip(marks, marks[1:])), marks


def test_a_missing_object_is_named_and_skipped_with_on_error_skip(s3, s3_shards, local_shards, tmp_path):
    url = upload(local_shards, f"s3://{s3.bucket}/one-missing", tmp_path)
    tar = read_manifest(url)["shards"][1]["tar"]
    open_storage(url).delete(tar.rsplit("/", 1)[1])
    with pytest.raises(LoaderError, match=rf"^{re.escape(tar)}: missing$"):
        batches(url)
    with pytest.warns(UserWarning, match=rf"{re.escape(tar)}: its tar or index is missing; its 1 samples"):
        got = batches(url, on_error="skip")
    keys = sorted(i for b in got for i in b["index"].tolist())
    assert keys == [0, 2, 3, 4, 5]  # dataset positions: the second shard's one sample is left out
    with pytest.raises(MissingFile, match=rf"^s3://{s3.bucket}/nothing/dataset.json: no dataset.json"):
        read_manifest(f"s3://{s3.bucket}/nothing")


def test_a_missing_bucket_is_named_as_one(s3):
    """Not as a missing dataset.json: no `fastvid shard` run would put it there."""
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket/shards/dataset.json: no such bucket 'no-such-bucket'$"):
        read_manifest("s3://no-such-bucket/shards")


def test_a_wrong_key_is_one_line(s3, s3_shards, monkeypatch, fresh_clients):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    with pytest.raises(StorageError, match=rf"^{s3_shards}/dataset.json: access denied \(SignatureDoesNotMatch\)$"):
        batches(s3_shards)
    result = subprocess.run([sys.executable, "-m", "fastvid.cli", "info", s3_shards], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "access denied" in result.stderr


def test_a_stopped_server_is_one_line(local_shards, tmp_path, monkeypatch, fresh_clients):
    """Stopped after the loader started: the first read names the tar and the endpoint, after the retries."""
    with SeaweedServer(tmp_path / "server") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        url = upload(local_shards, f"s3://{server.bucket}/shards", tmp_path)
        loader = build_loader(DataConfig(shards=url, batch_size=2, threads=1, workers=1), VIEWS)
    with pytest.raises(LoaderError) as err:
        list(loader)
    assert "\n" not in str(err.value)
    assert re.search(rf"{url}/train-00000\d\.tar: endpoint {server.endpoint} unreachable after 5 retries "
                     r"\(Connection refused\)", str(err.value)), str(err.value)


def test_one_request_per_sample_read_ahead_within_a_workers_part(s3_shards, monkeypatch):
    """A worker's calls, as DALI's pool hands them out (worker 0: samples 0-2 of a batch of 5, worker 1: 3-4),
    make one byte-range request per sample (json + mp4 + flac together), none for another worker's part."""
    from nvidia.dali.types import SampleInfo

    loader = build_loader(DataConfig(shards=s3_shards, batch_size=5, workers=2), VIEWS)  # owns the order folder
    source = loader.source()
    source.batch = (5, 2)
    write_order(source.folder, 0, np.arange(5), 0)
    requested = []
    read_range = ObjectStorage.read_range
    monkeypatch.setattr(ObjectStorage, "read_range",
                        lambda self, name, a, b: requested.append((name, a)) or read_range(self, name, a, b))
    for j in range(3):
        source(SampleInfo(j, j, 0, 0))
    assert len(requested) == 3 and not source._ahead  # nothing read of worker 1's samples 3 and 4
    for j in (3, 4):
        source(SampleInfo(j, j, 0, 0))
    assert sorted(requested) == sorted(set(requested)) and len(requested) == 5


def test_credentials_and_region_from_aws_config_files(s3, s3_shards, tmp_path, monkeypatch, fresh_clients):
    """No key in the environment: the profile of ~/.aws/credentials (here AWS_SHARED_CREDENTIALS_FILE) and the
    region of its config file are used, as by the AWS tools."""
    env = s3.env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.delenv(name)
    (tmp_path / "credentials").write_text(f"[test]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
                                          f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n")
    (tmp_path / "config").write_text("[profile test]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "test")
    assert read_manifest(s3_shards)["samples"] == 6
    monkeypatch.setenv("AWS_PROFILE", "nobody")  # a profile that does not exist: no key at all
    storage._OPENED.clear()
    with pytest.raises(UserError, match=r"dataset\.json: .*nobody.* could not be found") as err:
        read_manifest(s3_shards)
    assert "\n" not in str(err.value)


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers the first `server.refusals` requests with S3's 503 SlowDown, forwards the others to S3."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        if len(self.server.seen) <= self.server.refusals:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        connection = http.client.HTTPConnection(self.server.target)
        connection.request("GET", self.path, headers=dict(self.headers))  # Host kept: the signature covers it
        reply = connection.getresponse()
        body = reply.read()
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "connection"):
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("refusals", [3, 100])
def test_throttling_is_retried_with_backoff(refusals, s3, s3_shards, monkeypatch, fresh_clients):
    """503 SlowDown three times: the read succeeds on the fourth try; throttled for good: one line after 5 retries."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    proxy.seen, proxy.refusals, proxy.target = [], refusals, s3.endpoint.removeprefix("http://")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    try:
        if refusals == 3:
            assert read_manifest(s3_shards)["samples"] == 6
            assert len(proxy.seen) == 4 and len(set(proxy.seen)) == 1
        else:
            with pytest.raises(StorageError, match=r"dataset\.json: the server answered 503 SlowDown after 5 retries$") as err:
                read_manifest(s3_shards)
            assert "\n" not in str(err.value) and len(proxy.seen) == 6
    finally:
        proxy.shutdown()
