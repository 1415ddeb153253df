"""The loader, `fastvid info` and `read_manifest` on shards in a real S3 server: the same samples as from the
local folder, and one-line errors for a missing object, a wrong key and a stopped server."""
from __future__ import annotations

import torch

from fastvid.data import AudioSpec, DataConfig, SpatialSpec, TemporalSpec, ViewSpec, build_loader
from fastvid.shard import read_manifest
from tests.clips import frame_index

VIEWS = [ViewSpec("v", temporal=TemporalSpec(frames=4), spatial=SpatialSpec(size=(32, 32), normalize=False)),
         ViewSpec("a", modality="audio", audio=AudioSpec(follow="v", seconds=0.4))]


def batches(shards: str, **overrides) -> list[dict[str, torch.Tensor]]:
    cfg = DataConfig(shards=shards, batch_size=2, threads=1, workers=2, drop_last=False, seed=3, **overrides)
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
    got, want = batches(s3_shards), batches(str(local_shards))
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in g)
    # the frames are the clips' own (their marks), not merely equal garbage
    for clip in (c for b in got for c in b["v"]):  # (3, T, H, W) in [0, 1]
        marks = [frame_index(f) for f in clip.permute(1, 2, 3, 0).numpy() * 255.0]
        assert all(b > a for a, b in zip(marks, marks[1:])), marks
