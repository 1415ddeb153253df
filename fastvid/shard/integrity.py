"""Integrity data of a shard: every member's size and CRC-32, and the checks that use them.

`fastvid shard` records `{member name: [size, crc32 hex]}` for each tar in its journal and in
dataset.json (`shards[i]["members"]`). `fastvid info --verify` and a rerun of `fastvid shard` read the
tars against it; a reader that holds a member's bytes checks them with `verify_member`. CRC-32 (zlib,
~1 GB/s) catches truncation and flipped bytes; it is not meant to resist a forger.
"""
from __future__ import annotations

import contextlib
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from fastvid.storage import split, storage_of

Sums = dict[str, list]  # member name ("KEY.mp4") -> [size in bytes, CRC-32 as 8 hex digits]


def checksum(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def verify_member(name: str, data: bytes, expected: list) -> str | None:
    """None when `data` has the recorded [size, crc32]; else a one-line reason naming the member."""
    size, crc = expected
    if len(data) != size:
        return f"{name}: {len(data)} bytes, recorded {size}"
    if checksum(data) != crc:
        return f"{name}: checksum {checksum(data)}, recorded {crc} (damaged bytes)"
    return None


@contextlib.contextmanager
def open_tar(location: str | Path) -> Iterator[tarfile.TarFile]:
    """A shard's tar for reading, from a folder or from object storage (read in 8 MiB requests)."""
    storage, name = storage_of(location)
    with storage.open(name) as f, tarfile.open(fileobj=f) as tar:
        yield tar


def verify_tar(location: str | Path, members: Sums) -> list[str]:
    """One line per bad member of the tar (a path or URL), as `shard.tar:KEY.ext: reason`: damaged, missing
    (a tar cut short loses its last members), or not recorded. Empty when every recorded member is intact."""
    tar_path = Path(split(location)[1])  # for messages: the tar's name
    problems: list[str] = []
    seen: set[str] = set()
    member_cut = False  # a member ended early: the tar's own read error that follows is the same problem
    try:
        with open_tar(location) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                seen.add(name)
                if name not in members:
                    problems.append(f"{tar_path.name}:{name}: not recorded in dataset.json")
                    continue
                try:
                    data = tar.extractfile(member).read()
                except (tarfile.TarError, OSError) as err:  # the tar ends inside this member
                    problems.append(f"{tar_path.name}:{name}: unreadable ({err})")
                    member_cut = True
                    continue
                if (reason := verify_member(name, data, members[name])) is not None:
                    problems.append(f"{tar_path.name}:{reason}")
    except (tarfile.TarError, OSError) as err:
        if not member_cut:
            problems.append(f"{tar_path.name}: unreadable tar ({err})")
    problems += [f"{tar_path.name}:{name}: missing from the tar" for name in members if name not in seen]
    return problems
