"""`fastvid info OUT`: what a shard folder holds, and whether its shards agree with dataset.json
(`--verify`: and whether every member still has the size and checksum recorded when it was written)."""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

from fastvid.shard.integrity import open_tar, verify_tar
from fastvid.shard.run import read_manifest
from fastvid.shard.writer import dali_index, split_name
from fastvid.storage import read_location, split, stat_location

REQUIRED = ("json", "mp4")


def describe(manifest: dict) -> str:
    """A few lines: samples, frames, splits, classes, shards, options."""
    options = manifest["options"]
    splits = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    classes = manifest["classes"]
    size = sum(s["bytes"] for s in manifest["shards"])
    return "\n".join([
        f"{manifest['samples']} samples ({splits or 'none'}), {manifest['frames']} frames, "
        f"{len(manifest['shards'])} shards, {size / 1e6:.1f} MB",
        f"{len(classes)} classes" + (f": {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}" if classes else ""),
        f"codec {options['codec']}, short side {options['short_side']}, fps {options['fps'] or 'source'}, "
        f"gop {options['gop']}, audio {options['audio_rate'] if options['audio'] else 'off'}, flow {options['flow']}",
    ])


def check(out: str | Path) -> list[str]:
    """Every disagreement between OUT's shards and its dataset.json (empty when all is well).

    Checks each tar exists with the recorded size, sample and frame counts, its index matches what
    `wds2idx` would write, every sample has KEY.json and KEY.mp4 (and KEY.flow.mp4 with --flow), and
    no key appears twice across shards."""
    manifest = read_manifest(out)
    problems: list[str] = []
    seen: Counter[str] = Counter()
    required = REQUIRED + (("flow.mp4",) if manifest["options"]["flow"] else ())
    for shard in manifest["shards"]:
        name, idx_name = split(shard["tar"])[1], split(shard["index"])[1]
        stat = stat_location(shard["tar"])
        if stat is None:
            problems.append(f"{name}: missing")
            continue
        if stat.size != shard["bytes"]:
            problems.append(f"{name}: {stat.size} bytes, dataset.json says {shard['bytes']}")
        members: dict[str, dict[str, bytes]] = {}
        try:
            with open_tar(shard["tar"]) as tar:
                for member in tar:
                    key, ext = split_name(member.name)
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read() if ext == "json" else b""
        except (tarfile.TarError, OSError) as err:
            problems.append(f"{name}: unreadable tar ({err})")
            continue
        if len(members) != shard["samples"]:
            problems.append(f"{name}: {len(members)} samples, dataset.json says {shard['samples']}")
        frames = 0
        for key, files in members.items():
            seen[key] += 1
            missing = [ext for ext in required if ext not in files]
            if missing:
                problems.append(f"{name}: sample {key} lacks {', '.join(missing)}")
            if "json" in files:
                try:
                    frames += json.loads(files["json"])["num_frames"]
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{name}:{key}.json: not the JSON `fastvid shard` writes")
        if frames != shard["frames"]:
            problems.append(f"{name}: {frames} frames, dataset.json says {shard['frames']}")
        try:
            if read_location(shard["index"]).decode("utf-8", "replace") != dali_index(shard["tar"]):
                problems.append(f"{idx_name}: does not match {name}")
        except FileNotFoundError:
            problems.append(f"{idx_name}: missing")
    problems += [f"key {k} is in {n} shards" for k, n in seen.items() if n > 1]
    if sum(seen.values()) != manifest["samples"]:
        problems.append(f"shards hold {sum(seen.values())} samples, dataset.json says {manifest['samples']}")
    return problems


def verify(out: str | Path) -> list[str]:
    """One line per member of OUT's shards that does not match the size and CRC-32 that `fastvid shard`
    recorded in dataset.json (`shard.tar:KEY.ext: reason`), or per shard that cannot be checked."""
    problems: list[str] = []
    for shard in read_manifest(out)["shards"]:
        name = split(shard["tar"])[1]
        if "members" not in shard:
            problems.append(f"{name}: no checksums in dataset.json (sharded by an older fastvid; "
                            "reshard to verify)")
        elif stat_location(shard["tar"]) is None:
            problems.append(f"{name}: missing")
        else:
            problems += verify_tar(shard["tar"], shard["members"])
    return problems
