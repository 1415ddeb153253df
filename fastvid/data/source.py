"""The loader's reader and decode stage: one sample at a time, in DALI's parallel worker processes.

`ShardSource` is the callback of a parallel `fn.external_source`: DALI calls it with a `SampleInfo`
in `py_num_workers` processes (no shared GIL, so decoding scales with cores). For sample `i` of DALI
epoch `e` it looks the dataset position up in the epoch's order (a file the loader writes before the
epoch starts: its shuffle, this rank's block, the batches a resumed run already consumed left out),
reads the members it needs straight from the tar by the offsets of the shard's index (no tar
scanning, no shuffle buffer), draws every augmentation (`SampleDrawer`) and decodes only the GOPs
that cover the frames its views need, each member as the views' plans say (`fastvid.data.plans`); or, for
DALI's own video decoder, cuts those GOPs out of the member and passes them on with the frames' indices in
the cut.

With on_error="skip", a sample that does not decode is replaced by the next one of the order that
does, and its name is appended to the `undecodable` file the loader reads and reports.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastvid.data.plans import SampleDrawer
from fastvid.data.plans.base import Decode
from fastvid.lifetime import die_with_parent
from fastvid.shard.integrity import verify_member
from fastvid.storage import Storage, is_url, open_storage, split

AHEAD = 4  # samples whose members a worker reads ahead from object storage: the requests wait while it decodes
ADJACENT = 4096  # bytes between two members read in one request (a tar header is 512)
UNDECODABLE = "undecodable"  # file in the order folder: one "shard.tar:key\treason" line per bad sample


@dataclass
class SampleTable:
    """Where every sample's members lie, as arrays indexed by dataset position: each worker holds a copy
    (about 40 bytes per sample and member, so a Kinetics-sized index costs tens of MB, not hundreds).

    keys: (N,) bytes, the sample keys; tar: (N,) int32 shard number (-1: a position not read); per member
    extension: offset and size (N,) int64 in the tar, and the size and CRC-32 `fastvid shard` recorded
    (N,) int64, -1 where none was recorded (shards written before that)."""

    keys: np.ndarray
    tar: np.ndarray
    offset: dict[str, np.ndarray]
    size: dict[str, np.ndarray]
    recorded_size: dict[str, np.ndarray]
    crc: dict[str, np.ndarray]

    @classmethod
    def build(cls, rows: list[tuple[int, str, dict[str, tuple[int, int]], dict[str, list]]],
              exts: list[str]) -> SampleTable:
        """From (tar, key, ext -> (offset, size), ext -> [size, crc32 hex]) per position; None rows are skipped
        positions. Only the members `exts` are kept."""
        n = len(rows)
        keys, tar = [b""] * n, np.full(n, -1, np.int32)
        columns = {name: {e: np.full(n, -1, np.int64) for e in exts} for name in ("offset", "size", "recorded", "crc")}
        for position, row in enumerate(rows):
            if row is None:
                continue
            tar[position], key, members, sums = row
            keys[position] = key.encode()  # UTF-8: keys come from file names
            for e in exts:
                if e in members:
                    columns["offset"][e][position], columns["size"][e][position] = members[e]
                if e in sums:
                    columns["recorded"][e][position], columns["crc"][e][position] = sums[e][0], int(sums[e][1], 16)
        return cls(np.array(keys, bytes), tar, columns["offset"], columns["size"], columns["recorded"], columns["crc"])

    def key(self, position: int) -> str:
        return self.keys[position].decode()


def order_file(folder: Path, dali_epoch: int) -> Path:
    return folder / f"epoch-{dali_epoch}.npz"


def write_order(folder: Path, dali_epoch: int, positions: np.ndarray, epoch: int) -> None:
    """Publish what DALI epoch `dali_epoch` reads: dataset positions in order, and the training epoch
    (which keys the augmentation draws). Written whole, then renamed: workers never see half a file."""
    path = order_file(folder, dali_epoch)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, order=np.asarray(positions, np.int64), epoch=np.int64(epoch))
    os.replace(partial, path)


class ShardSource:
    """`fn.external_source(parallel=True, batch=False)` callback: SampleInfo -> the arrays named `names`
    (`layouts`: "FHWC" for decoded planes): the draws the pipeline reads, then each member's media.

    `decode`: "pyav" decodes the needed GOPs here (each member as its plans say: 4:2:0 planes of the RGB
    views' box, flow's grey levels); "dali" cuts those GOPs out of the members (no decoding) for DALI's video
    decoder, which reads a clip from its first frame, under the members' own names."""

    def __init__(self, tars: list[str], table: SampleTable, drawer: SampleDrawer, folder: Path, decode: Decode,
                 on_error: str, verify: bool) -> None:
        self.tars, self.table, self.drawer, self.verify = tars, table, drawer, verify
        self.folder, self.decode, self.on_error = Path(folder), decode, on_error
        self.plans = drawer.plans
        media = self.plans.media(decode)
        self.names = self.plans.wire_names(decode) + [name for name, _ in media]
        self.layouts = [""] * (len(self.names) - len(media)) + [layout for _, layout in media]
        self._orders: dict[int, tuple[np.ndarray, int]] = {}
        self.batch: tuple[int, int] | None = None  # (batch size, workers) of the pipeline: what a worker reads ahead
        self._storages: dict[str, Storage] = {}  # folder or prefix -> its storage (open files, a client)
        self._fetched: tuple[int, dict[str, bytes]] = (-1, {})  # the last sample's members
        self._ahead: dict[int, Future] = {}  # position -> its members being read
        self._pool: ThreadPoolExecutor | None = None
        self.parent = os.getpid()  # the loader's process: the workers end with it

    @property
    def media(self) -> list[str]:
        """The members read besides KEY.json."""
        return self.plans.exts

    def __getstate__(self) -> dict:  # sent to spawned workers: no cached orders, reads or threads
        return {**self.__dict__, "_orders": {}, "_storages": {}, "_fetched": (-1, {}), "_ahead": {}, "_pool": None}

    def __setstate__(self, state: dict) -> None:
        """In a spawned worker: it ends with the loader's process (forked ones: `children_end_with_this_process`)."""
        self.__dict__.update(state)
        if os.getpid() != self.parent:
            die_with_parent(self.parent)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        order, epoch = self._order(info.epoch_idx)
        if info.idx_in_epoch >= len(order):
            raise StopIteration
        self.read_ahead(order, info)
        for attempt in range(len(order)):
            position = int(order[(info.idx_in_epoch + attempt) % len(order)])
            try:
                return self.sample(position, epoch)
            except ValueError as err:
                if self.on_error != "skip":
                    raise
                with open(self.folder / UNDECODABLE, "a") as f:  # O_APPEND: whole lines from every worker
                    f.write(f"{self.name(position)}\t{str(err).splitlines()[0]}\n")
        raise ValueError(f"no sample of epoch {epoch} decodes")

    def name(self, position: int) -> str:
        """"shard.tar:key", the name errors and skip lists use."""
        return f"{Path(self.tars[self.table.tar[position]]).name}:{self.table.key(position)}"

    def sample(self, position: int, epoch: int) -> tuple[np.ndarray, ...]:
        """Every output of the sample at dataset `position`, with the draws of training epoch `epoch`."""
        self.drawer.epoch = epoch  # this process's copy: the draws are keyed by (seed, epoch, position)
        try:
            meta = json.loads(self.read(position, "json"))
            draws = self.drawer.draw(meta, position)
        except (KeyError, TypeError, ValueError) as err:  # garbage or a field missing in KEY.json
            raise ValueError(f"{self.name(position)}.json: unusable metadata ({type(err).__name__}: {err})") from err
        media = []
        for member in self.plans.members:
            draws, arrays = member.read(self.read(position, member.ext), draws, self.decode,
                                        f"{self.name(position)}.{member.ext}")
            media += arrays
        return tuple(self.plans.wire(draws, self.decode) + media)

    def read(self, position: int, ext: str) -> bytes:
        """Member `ext` of the sample, from the bytes of its members read together (`fetch`)."""
        if self._fetched[0] != position:
            ahead = self._ahead.pop(position, None)
            self._fetched = (position, ahead.result() if ahead is not None else self.fetch(position))
        t = int(self.table.tar[position])
        size = int(self.table.size[ext][position])
        data = self._fetched[1][ext]
        if len(data) != size:
            raise ValueError(f"{self.name(position)}.{ext}: the tar ends inside this member "
                             f"({len(data)} of {size} bytes)")
        crc = int(self.table.crc[ext][position])
        if self.verify and crc >= 0:  # CRC-32 at ~1 GB/s: no frame from damaged bytes
            expected = [int(self.table.recorded_size[ext][position]), f"{crc:08x}"]
            reason = verify_member(f"{self.table.key(position)}.{ext}", data, expected)
            if reason is not None:
                raise ValueError(f"{Path(self.tars[t]).name}:{reason}")
        return data

    def fetch(self, position: int) -> dict[str, bytes]:
        """The members the views need of the sample at `position` (ext -> bytes), read from its tar by the
        index's offsets: one read per run of members that lie next to each other (a tar header apart), so
        one byte-range request per sample from object storage. A member past the tar's end comes back short."""
        root, name = split(self.tars[int(self.table.tar[position])])
        storage = self._storages.get(str(root)) or self._storages.setdefault(str(root), open_storage(root))
        spans = sorted((int(self.table.offset[e][position]), int(self.table.size[e][position]), e)
                       for e in ["json"] + self.media)
        members, run = {}, [spans[0]]
        for span in spans[1:] + [None]:
            if span is not None and span[0] - (run[-1][0] + run[-1][1]) <= ADJACENT:
                run.append(span)
                continue
            start = run[0][0]
            data = storage.read_range(name, start, run[-1][0] + run[-1][1])
            members.update((e, data[o - start:o - start + z]) for o, z, e in run)
            run = [span]
        return members

    def read_ahead(self, order: np.ndarray, info) -> None:
        """Start reading the samples this worker decodes after `info`'s, up to `AHEAD` in flight: the rest of
        its part of the batch (DALI's pool gives worker k of W samples [kB/W...] of a batch of B: the first
        B % W workers one more), so no request is made for a sample another worker reads."""
        if self.batch is None or not is_url(self.tars[0]):  # a pread takes µs
            return
        batch, workers = self.batch
        size, extra = divmod(batch, workers)
        ends = np.cumsum([size + (k < extra) for k in range(workers)])
        end = int(ends[np.searchsorted(ends, info.idx_in_batch, side="right")])  # this worker's part ends here
        now = info.idx_in_epoch  # this sample (kept if it is on its way already) and the next AHEAD of the part
        window = [int(p) for p in order[now:min(now + 1 + AHEAD, now + end - info.idx_in_batch, len(order))]]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(AHEAD, thread_name_prefix="fastvid-read")
        self._ahead = {p: self._ahead.get(p) or self._pool.submit(self.fetch, p) for p in window}

    def _order(self, dali_epoch: int) -> tuple[np.ndarray, int]:
        if dali_epoch not in self._orders:
            with np.load(order_file(self.folder, dali_epoch)) as f:
                self._orders = {dali_epoch: (f["order"], int(f["epoch"]))}  # only the current epoch's
        return self._orders[dali_epoch]
