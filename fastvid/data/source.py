"""The loader's reader and decode stage: one sample at a time, in DALI's parallel worker processes.

`ShardSource` is the callback of a parallel `fn.external_source`: DALI calls it with a `SampleInfo`
in `py_num_workers` processes (no shared GIL, so decoding scales with cores). For sample `i` of DALI
epoch `e` it looks the dataset position up in the epoch's order (a file the loader writes before the
epoch starts: its shuffle, this rank's block, the batches a resumed run already consumed left out),
reads the members it needs straight from the tar by the offsets of the shard's index (no tar
scanning, no shuffle buffer), draws every augmentation (`SampleDrawer`) and decodes only the GOPs
that cover the frames its views need (`fastvid.data.pyav`) into 4:2:0 planes, with YUV -> RGB folded into
each view's colour map; or, for DALI's own video decoder, cuts those GOPs out of the member and passes
them on with the frames' indices in the cut.

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

from fastvid.data.pyav import cut_member, decode_frames, yuv_to_rgb
from fastvid.data.sampling import SampleDrawer
from fastvid.data.spec import ViewSpec
from fastvid.lifetime import die_with_parent
from fastvid.shard.integrity import verify_member
from fastvid.storage import Storage, is_url, open_storage, split

YUV_TO_RGB = {full: yuv_to_rgb(full) for full in (False, True)}  # by range: computed once, used per sample
CROP_MARGIN = 8  # pixels kept around the views' regions: the resize filter's support at a 4x downscale
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


def media_names(views: list[ViewSpec]) -> list[str]:
    """The member outputs the views need besides the draws: decoded frames or bytes, and the audio."""
    names = []
    if any(v.modality not in ("flow", "audio") for v in views):
        names.append("mp4")
    if any(v.modality == "flow" for v in views):
        names.append("flow.mp4")
    if any(v.modality == "audio" for v in views):
        names.append("flac")
    return names


def media_outputs(media: list[str], decode: str) -> list[str]:
    """The source's outputs for members `media`: decoded planes ("pyav") or the members' bytes."""
    if decode != "pyav":
        return list(media)
    planes = {"mp4": ["luma", "chroma"], "flow.mp4": ["flow"], "flac": ["flac"]}
    return [name for ext in media for name in planes[ext]]


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
    """`fn.external_source(parallel=True, batch=False)` callback: SampleInfo -> the arrays named `names`.

    `decode`: "pyav" decodes the needed GOPs here: KEY.mp4 into "luma" (F, h, w, 1) and "chroma"
    (F, h/2, w/2, 2) uint8 planes of the views' crop box, KEY.flow.mp4 into "flow" (F, H, 2W, 1) grey levels
    (the quantised u | v); "dali" cuts those GOPs out of the members (no decoding) for DALI's video decoder,
    which reads a clip from its first frame, under the members' own names."""

    def __init__(self, tars: list[str], table: SampleTable, drawer: SampleDrawer, views: list[ViewSpec],
                 folder: Path, decode: str, on_error: str, gop: int, draws: set[str], verify: bool) -> None:
        self.tars, self.table, self.drawer, self.verify = tars, table, drawer, verify
        self.folder, self.decode, self.on_error = Path(folder), decode, on_error
        self.gop = gop  # shards written before KEY.json had keyframes: a keyframe every `gop` frames
        self.media = media_names(views)
        self.rgb_views = [v for v in views if v.modality not in ("flow", "audio")]  # the views of KEY.mp4
        self.draws = [n for n in drawer.names if n in draws]  # the draws the pipeline reads
        self.names = self.draws + media_outputs(self.media, decode)
        self._orders: dict[int, tuple[np.ndarray, int]] = {}
        self.batch: tuple[int, int] | None = None  # (batch size, workers) of the pipeline: what a worker reads ahead
        self._storages: dict[str, Storage] = {}  # folder or prefix -> its storage (open files, a client)
        self._fetched: tuple[int, dict[str, bytes]] = (-1, {})  # the last sample's members
        self._ahead: dict[int, Future] = {}  # position -> its members being read
        self._pool: ThreadPoolExecutor | None = None
        self.parent = os.getpid()  # the loader's process: the workers end with it

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
            draw = self.drawer.draw(meta, position)
        except (KeyError, TypeError, ValueError) as err:  # garbage or a field missing in KEY.json
            raise ValueError(f"{self.name(position)}.json: unusable metadata ({type(err).__name__}: {err})") from err
        media = []
        for ext in self.media:
            data = self.read(position, ext)
            if ext == "flac":
                media.append(np.frombuffer(data, np.uint8))
                continue
            name, where = "frames" if ext == "mp4" else "flow_frames", f"{self.name(position)}.{ext}"
            keys = (meta if ext == "mp4" else meta["flow"]).get("keyframes") or self.keyframes(meta, ext)
            length = int(meta["num_frames"]) - (ext == "flow.mp4")  # the frames drawn from: checked on opening
            if self.decode == "pyav" and ext == "mp4":
                planes = decode_frames(data, draw[name], keys, float(meta["fps"]), where=where, box=self.crop(draw, meta),
                                       length=length)
                self.to_rgb(draw, planes.full_range)
                media += [planes.luma, planes.chroma]
            elif self.decode == "pyav":  # flow frames: u | v side by side in the luma, chroma neutral
                media.append(decode_frames(data, draw[name], keys, float(meta["fps"]), where=where, chroma=False,
                                           length=length).grey())
            else:  # DALI decodes from the first frame: hand it only the GOPs needed, and their frame numbers
                cut, draw[name] = cut_member(data, draw[name], keys, float(meta["fps"]), where=where, length=length)
                media.append(np.frombuffer(cut, np.uint8))
        return tuple([draw[n] for n in self.draws] + media)

    def crop(self, draw: dict[str, np.ndarray], meta: dict) -> tuple[int, int, int, int]:
        """The box (x0, y0, x1, y1) of the video frames the RGB views read: the union of their crop regions
        plus a margin for the resize filter, on even pixels (4:2:0 chroma). Only it is passed on (~60% of
        the frame for videoSimCLR's two crops); the views' regions move into it."""
        regions = np.concatenate([draw[f"{v.name}.roi"] for v in self.rgb_views])  # (R, 4): y0, x0, y1, x1
        ys, xs = regions[:, 0::2], regions[:, 1::2]  # x1 < x0 where a region is mirrored
        width, height = int(meta["width"]), int(meta["height"])
        x0, y0 = (max(int(np.floor(v.min())) - CROP_MARGIN, 0) // 2 * 2 for v in (xs, ys))
        x1, y1 = (min(-(-(int(np.ceil(v.max())) + CROP_MARGIN) // 2) * 2, limit)
                  for v, limit in ((xs, width), (ys, height)))
        shift = np.array([y0, x0, y0, x0], np.float32)
        for v in self.rgb_views:
            draw[f"{v.name}.roi"] = draw[f"{v.name}.roi"] - shift
            if v.spatial.per_frame:  # warp_affine's inverse map: output pixel -> source pixel
                draw[f"{v.name}.affine"] = draw[f"{v.name}.affine"] - np.array([[0, 0, x0], [0, 0, y0]], np.float32)
        return x0, y0, x1, y1

    def to_rgb(self, draw: dict[str, np.ndarray], full_range: bool) -> None:
        """Fold YUV -> RGB into each RGB view's colour map [M | t]: M' = M K, t' = M k + t, for (Y, U, V) -> RGB
        = K (Y, U, V) + k. One map per pixel either way; the intermediate RGB is not clamped to 0-255."""
        k = YUV_TO_RGB[full_range]
        for v in self.rgb_views:
            c = draw[f"{v.name}.colour"].astype(np.float64)  # (R, 3, 4)
            m = c[:, :, :3]
            draw[f"{v.name}.colour"] = np.concatenate([m @ k[:, :3], m @ k[:, 3:] + c[:, :, 3:]], axis=2).astype(np.float32)

    def keyframes(self, meta: dict, ext: str) -> list[int]:
        """Keyframes of a member from shards older than KEY.json's `keyframes`: every `gop` frames."""
        frames = int(meta["num_frames"]) - (ext == "flow.mp4")
        return list(range(0, frames, self.gop))

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
