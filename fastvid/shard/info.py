"""`fastvid info OUT`: what a shard folder holds, and whether its shards agree with dataset.json
(`--verify`: and whether every member still has the size and checksum recorded when it was written)."""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

from fastvid.shard.integrity import verify_tar
from fastvid.shard.run import read_manifest
from fastvid.shard.writer import dali_index, split_name

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
        tar_path, idx_path = Path(shard["tar"]), Path(shard["index"])
        name = tar_path.name
        if not tar_path.is_file():
            problems.append(f"{name}: missing")
            continue
        if tar_path.stat().st_size != shard["bytes"]:
            problems.append(f"{name}: {tar_path.stat().st_size} bytes, dataset.json says {shard['bytes']}")
        members: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(tar_path) as tar:
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
        if not idx_path.is_file():
            problems.append(f"{idx_path.name}: missing")
        elif idx_path.read_text() != dali_index(tar_path):
            problems.append(f"{idx_path.name}: does not match {name}")
    problems += [f"key {k} is in {n} shards" for k, n in seen.items() if n > 1]
    if sum(seen.values()) != manifest["samples"]:
        problems.append(f"shards hold {sum(seen.values())} samples, dataset.json says {manifest['samples']}")
    return problems


def verify(out: str | Path) -> list[str]:
    """One line per member of OUT's shards that does not match the size and CRC-32 that `fastvid shard`
    recorded in dataset.json (`shard.tar:KEY.ext: reason`), or per shard that cannot be checked."""
    problems: list[str] = []
    for shard in read_manifest(out)["shards"]:
        tar_path = Path(shard["tar"])
        if "members" not in shard:
            problems.append(f"{tar_path.name}: no checksums in dataset.json (sharded by an older fastvid; "
                            "reshard to verify)")
        elif not tar_path.is_file():
            problems.append(f"{tar_path.name}: missing")
        else:
            problems += verify_tar(tar_path, shard["members"])
    return problems
