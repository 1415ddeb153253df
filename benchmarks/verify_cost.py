"""What `data.verify` costs (issue 21): CRC-32 of every member a sample reads, as a share of the decode
stage's time per clip (`ShardSource.sample`: read, draw, seek and decode the views' frames), on a shard set.

Decodes every clip of SHARDS with videoSimCLR's default views, unverified and verified (best of two
passes each), and times zlib's CRC-32 over the same members apart.

    python benchmarks/verify_cost.py SHARDS
"""
from __future__ import annotations

import argparse
import time
import zlib

from fastvid.data import DataConfig, build_loader
from fastvid.data.views import VideoContrastViews, video_simclr_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards")
    shards = parser.parse_args().shards
    views = video_simclr_views(VideoContrastViews())
    per_clip: dict[bool, list[float]] = {}
    for verify in (False, True, False, True):
        source = build_loader(DataConfig(shards=shards, verify=verify), views).source()
        positions = source.table.tar >= 0
        start = time.perf_counter()
        for p in positions.nonzero()[0]:
            source.sample(int(p), 0)
        per_clip.setdefault(verify, []).append((time.perf_counter() - start) / positions.sum())
    crc = 0.0
    for p in positions.nonzero()[0]:
        for ext in ["json"] + source.media:
            data = source.read(int(p), ext)
            start = time.perf_counter()
            zlib.crc32(data)
            crc += time.perf_counter() - start
    crc /= positions.sum()
    off, on = min(per_clip[False]), min(per_clip[True])
    print(f"{shards}: {positions.sum()} clips; decode stage {off * 1e3:.2f} ms/clip unverified, {on * 1e3:.2f} "
          f"verified; CRC-32 alone {crc * 1e3:.3f} ms/clip = {crc / off:.1%} of the stage")


if __name__ == "__main__":
    main()
