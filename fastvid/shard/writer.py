"""Reproducible tar shards and their DALI index.

A shard is written as `NAME.tar.partial` in a local folder and published as `NAME.tar` only once complete
(its index `NAME.idx` first): renamed in OUT, or uploaded under a temporary name and then renamed in object
storage, so a `NAME.tar` is always whole. Members are `KEY.ext`, sorted
inside each sample, with a fixed mtime, owner and mode: the same samples give byte-identical tars.
Each member's size and CRC-32 are kept in `members` for the journal and dataset.json (see integrity.py).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from fastvid.shard.integrity import Sums, checksum, open_tar
from fastvid.shard.transcode import Sample
from fastvid.storage import LocalStorage, Storage

MTIME = 946684800  # 2000-01-01: any fixed value makes tars reproducible
INDEX_VERSION = "v1.2"  # the format DALI's `wds2idx` writes and `fn.readers.webdataset` reads


def split_name(name: str) -> tuple[str, str]:
    """`KEY.flow.mp4` -> (`KEY`, `flow.mp4`): webdataset and DALI split at the first dot."""
    key, _, ext = name.partition(".")
    return key, ext


def dali_index(tar_path: str | Path) -> str:
    """The text of the DALI index for a tar (a path or URL): `v1.2 N`, then per sample `ext offset size name ...`."""
    samples: list[list[str]] = []
    last = None
    with open_tar(tar_path) as tar:
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
    """One shard being written in the local folder `staging`: add samples, then `commit()` (or `abort()`),
    which publishes it to `storage` (default: the folder itself; or object storage, where `fastvid shard`
    and a Ray run's driver hand it over the same way)."""

    def __init__(self, staging: Path, name: str, storage: Storage | None = None) -> None:
        self.storage = storage if storage is not None else LocalStorage(staging)
        self.tar_name, self.idx_name = f"{name}.tar", f"{name}.idx"
        self.partial, self.idx_partial = staging / f"{name}.tar.partial", staging / f"{name}.idx.partial"
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

    def commit(self) -> tuple[int, str]:
        """Close, index and publish the shard (the index first); returns the tar's size in bytes and the
        index's CRC-32 (a rerun trusts an index with that checksum beside an unchanged tar)."""
        self.tar.close()
        index = dali_index(self.partial)
        self.idx_partial.write_text(index)
        size = self.partial.stat().st_size
        self.storage.publish(self.idx_partial, self.idx_name)
        self.storage.publish(self.partial, self.tar_name)
        return size, checksum(index.encode())

    def abort(self) -> None:
        """Remove what was written; never raises (it runs while another error, such as a full disk, is raised)."""
        try:
            self.tar.close()
        except OSError:
            pass
        self.partial.unlink(missing_ok=True)
        self.idx_partial.unlink(missing_ok=True)
