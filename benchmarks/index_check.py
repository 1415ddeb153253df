"""What checking every shard index against dataset.json costs the loader's start (issue 21, item 3).

Writes a synthetic Kinetics-sized dataset: `--samples` (650,000, Kinetics-700's size) in shards of
`--per-shard` samples, each with KEY.json, KEY.mp4 and KEY.flac (sparse tars of the right size, real
indices, dataset.json-style records with every member's size and CRC-32), then times the loader's scan
of all indices with and without `index_problem`, best of `--repeat`.

    python benchmarks/index_check.py [--samples 650000] [--per-shard 300] [--repeat 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fastvid.data import loader
from fastvid.shard.writer import INDEX_VERSION

MEMBERS = (("flac", 60_000), ("json", 900), ("mp4", 700_000))  # typical sizes at short side 128, 10 s


def write_shards(folder: Path, samples: int, per_shard: int) -> list[dict]:
    """Shard records as dataset.json holds them (absolute paths), with their .idx and a sparse .tar."""
    shards = []
    for t, first in enumerate(range(0, samples, per_shard)):
        lines, members, offset = [], {}, 0
        for i in range(first, min(first + per_shard, samples)):
            entry = []
            for ext, size in MEMBERS:
                name = f"k{i:07d}.{ext}"
                offset += 512  # its header
                entry.append(f"{ext} {offset} {size} {name}")
                members[name] = [size, f"{i:08x}"]
                offset += -(-size // 512) * 512
            lines.append(" ".join(entry) + "\n")
        tar, idx = folder / f"train-{t:06d}.tar", folder / f"train-{t:06d}.idx"
        idx.write_text(f"{INDEX_VERSION} {len(lines)}\n" + "".join(lines))
        with tar.open("wb") as f:
            f.truncate(offset + 1024)
        shards.append({"tar": str(tar), "index": str(idx), "split": "train", "samples": len(lines),
                       "members": members})
    return shards


def best(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=650_000)
    parser.add_argument("--per-shard", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shards = write_shards(Path(folder), args.samples, args.per_shard)
        exts = ["json", "mp4", "flac"]
        checked = best(args.repeat, lambda: loader.scan_indices(shards, exts, "raise"))
        check_only = best(args.repeat, lambda: [loader.index_problem(s, Path(s["index"]).read_text().splitlines())
                                                 for s in shards])
        read_only = best(args.repeat, lambda: [Path(s["index"]).read_text().splitlines() for s in shards])
    print(f"{args.samples} samples in {len(shards)} shards: loader scan {checked:.2f} s, of which the check "
          f"{check_only - read_only:.2f} s ({(check_only - read_only) / checked:.0%})")


if __name__ == "__main__":
    main()
