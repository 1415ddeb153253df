"""Reproducible tar shards and their DALI index.

A shard is written as `NAME.tar.partial` and renamed to `NAME.tar` only once complete (its index
`NAME.idx` is renamed first), so a `NAME.tar` on disk is always whole. Members are `KEY.ext`, sorted
inside each sample, with a fixed mtime, owner and mode: the same samples give byte-identical tars.
Each member's size and CRC-32 are kept in `members` for the journal and dataset.json (see integrity.py).
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from fastvid.shard.integrity import Sums, checksum
from fastvid.shard.transcode import Sample

MTIME = 946684800  # 2000-01-01: any fixed value makes tars reproducible
INDEX_VERSION = "v1.2"  # the format DALI's `wds2idx` writes and `fn.readers.webdataset` reads


def split_name(name: str) -> tuple[str, str]:
    """`KEY.flow.mp4` -> (`KEY`, `flow.mp4`): webdataset and DALI split at the first dot."""
    key, _, ext = name.partition(".")
    return key, ext


def dali_index(tar_path: str | Path) -> str:
    """The text of the DALI index for a tar: `v1.2 N`, then per sample `ext offset size name ...`."""
    samples: list[list[str]] = []
    last = None
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            entry = f"{ext} {member.offset_data} {member.size} {member.name}"
            if key != last:
                samples.append([])
                last = key
            samples[-1].append(entry)
    return "".join([f"{INDEX_VERSION} {len(samples)}\n"] + [" ".join(s) + "\n" for s in samples])


class ShardWriter:
    """One shard being written: add samples, then `commit()` (or `abort()`)."""

    def __init__(self, out: Path, name: str) -> None:
        self.tar_path, self.idx_path = out / f"{name}.tar", out / f"{name}.idx"
        self.partial, self.idx_partial = out / f"{name}.tar.partial", out / f"{name}.idx.partial"
        self.tar = tarfile.open(self.partial, "w", format=tarfile.USTAR_FORMAT)
        self.keys: list[str] = []
        self.members: Sums = {}
        self.frames = 0
        self.bytes = 0  # payload bytes (tar headers and padding not counted)

    def add(self, sample: Sample) -> None:
        for ext in sorted(sample.files):
            data = sample.files[ext]
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
            self.members[info.name] = [len(data), checksum(data)]
        self.keys.append(sample.key)
        self.frames += sample.frames
        self.bytes += sample.nbytes

    def commit(self) -> int:
        """Close, index and publish the shard; returns the tar's size in bytes."""
        self.tar.close()
        with self.partial.open("rb+") as f:
            os.fsync(f.fileno())
        self.idx_partial.write_text(dali_index(self.partial))
        os.replace(self.idx_partial, self.idx_path)
        os.replace(self.partial, self.tar_path)
        return self.tar_path.stat().st_size

    def abort(self) -> None:
        """Remove what was written; never raises (it runs while another error, such as a full disk, is raised)."""
        try:
            self.tar.close()
        except OSError:
            pass
        self.partial.unlink(missing_ok=True)
        self.idx_partial.unlink(missing_ok=True)
