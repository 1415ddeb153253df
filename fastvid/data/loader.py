"""`build_loader`: shards + view specs -> an iterable of batches (dict of torch tensors on the device).

This module checks the shards up front, compiles the views into plans (`fastvid.data.plans`), builds one
DALI pipeline for the whole run (`fastvid.data.dali`: the frames the views need, decoded by PyAV in the
worker processes with `data.decode: cpu`, or by DALI's own decoder with gpu and dali-cpu, then augmented)
and, before each epoch, writes the epoch's sample order (its seeded shuffle, this rank's block, the batches
a resumed run already had left out) for the pipeline's workers (`fastvid.data.source`). Each batch is
finished by the views' plans in torch on the training device.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from fastvid.data.dali import views_pipeline
from fastvid.data.plans import Plan, SampleDrawer, ViewPlans
from fastvid.data.plans.base import GraphContext
from fastvid.data.source import UNDECODABLE, SampleTable, ShardSource, write_order
from fastvid.data.spec import DataConfig, ViewSpec
from fastvid.errors import UserError
from fastvid.lifetime import children_end_with_this_process
from fastvid.shard import read_manifest
from fastvid.shard.writer import INDEX_VERSION, split_name
from fastvid.storage import is_url, read_location, stat_location

NVDEC_VP9_MIN = 128  # pixels, both sides: DALI's NVDEC check on an H100 (80x64 H.264 decodes there)
CPU_CODECS = ("vp9", "vp8", "mjpeg")  # what DALI's own CPU video decoder accepts (not H.264)
BLOCK = 512  # tar block: every member's data starts on one, after its 512-byte header


class LoaderError(UserError, RuntimeError):
    """A shard cannot be read as asked: names the shard and the sample key."""


def scan_indices(shards: list[dict], exts: list[str], on_error: str,
                 undecodable: frozenset[str] = frozenset()) -> tuple[SampleTable, dict[str, int], list[str]]:
    """Read every shard's index and check each sample for the members `exts`, before any decoding.

    Returns the table of where the members of the samples to read lie, key -> dataset position
    (stable: skipped samples keep their numbers free), and the skipped "shard:key" names (incomplete, or
    in `undecodable`, when on_error="skip"). Raises LoaderError naming shard and key for the first
    incomplete sample, and naming the shard when the tar is shorter than its index says, or the index when
    it disagrees with dataset.json (`index_problem`)."""
    rows, key_index, skipped, position = [], {}, [], 0
    for t, shard in enumerate(shards):
        tar_stat = stat_location(shard["tar"])
        try:
            lines = read_location(shard["index"]).decode().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror or str(err)
            if on_error == "skip" and isinstance(err, FileNotFoundError):
                tar_stat = None  # the shard cannot be read: left out below
            else:
                raise LoaderError(f"{shard['index']}: cannot read the shard's index ({why}); rerun the "
                                  "`fastvid shard` command to rewrite it") from None
        if tar_stat is None and on_error == "skip":  # a missing tar or index: its samples are left out
            warnings.warn(f"{shard['tar']}: its tar or index is missing; its {shard['samples']} samples are "
                          "skipped", stacklevel=2)
            skipped.append(f"{Path(shard['tar']).name}:*")
            rows += [None] * shard["samples"]
            position += shard["samples"]
            continue
        if (problem := index_problem(shard, lines)) is not None:
            raise LoaderError(f"{shard['index']}: {problem}; rerun the `fastvid shard` command to rewrite it")
        recorded = shard.get("members", {})  # name -> [size, crc32] (shards written by fastvid >= issue 14)
        end, tar_name = 0, Path(shard["tar"]).name
        for line in lines[1:]:
            fields = line.split()  # per member: ext offset size name
            members = {e: (int(o), int(z)) for e, o, z in zip(fields[0::4], fields[1::4], fields[2::4])}
            sums = {split_name(n)[1]: recorded[n] for n in fields[3::4] if n in recorded}
            key = split_name(fields[3])[0]
            end = max([end] + [o + z for o, z in members.values()])
            missing = [e for e in exts if e not in members]
            if missing and on_error == "raise":
                raise LoaderError(f"{shard['tar']}: sample {key!r} has no {', '.join('.' + m for m in missing)} "
                                  f"member (the views need {', '.join(exts)})")
            name = f"{tar_name}:{key}"
            if missing or name in undecodable:
                skipped.append(name)
                rows.append(None)
            else:
                rows.append((t, key, members, sums))
                key_index[key] = position
            position += 1
        size = tar_stat.size if tar_stat is not None else -1
        if size < end:
            raise LoaderError(f"{shard['tar']}: " + ("missing" if size < 0 else
                              f"{size} bytes, its index needs {end}: truncated or damaged; re-run `fastvid shard`"))
    return SampleTable.build(rows, exts), key_index, skipped


def index_problem(shard: dict, lines: list[str]) -> str | None:
    """Why a shard's index (its lines) cannot be the one of the tar dataset.json describes, or None: its
    header and its sample lines must count dataset.json's samples, each member once; each member it lists
    must be one dataset.json records, with that size (where recorded: shards of fastvid >= issue 14); and
    members must follow each other in the tar (each after the previous one's data and a 512-byte header).
    An empty, cut or swapped index would otherwise train on part of the data without a word. Checked on
    all members of the shard at once (about 1/10 of the loader's own scan of the index)."""
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or header[1] != str(len(lines) - 1):
        return f"its header {' '.join(header) or '(none)'} does not count its {max(len(lines) - 1, 0)} sample lines"
    if len(lines) - 1 != shard["samples"]:
        return f"it lists {len(lines) - 1} samples, dataset.json says {shard['samples']}"
    fields = " ".join(lines[1:]).split()  # per member: ext offset size name; lines hold whole members
    names = fields[3::4]
    try:
        offsets, sizes = np.array(fields[1::4], np.int64), np.array(fields[2::4], np.int64)
    except ValueError:
        offsets = sizes = np.empty(0, np.int64)
    if len(fields) % 4 or len(offsets) != len(names):
        return "a sample line is not `ext offset size name` per member"
    if len(set(names)) != len(names):
        return "a member is listed twice"
    recorded = shard.get("members")
    if recorded is not None:
        expected = np.array([recorded.get(n, (-1,))[0] for n in names], np.int64)
        if (bad := np.flatnonzero(expected != sizes)).size:
            name, size = names[bad[0]], sizes[bad[0]]
            return (f"member {name}: {size} bytes, dataset.json records {recorded[name][0]}" if name in recorded
                    else f"member {name} is not one dataset.json records for {Path(shard['tar']).name}")
    starts = np.concatenate([[0], offsets[:-1] + sizes[:-1] + BLOCK])  # the earliest each member can start
    if (bad := np.flatnonzero((offsets % BLOCK != 0) | (offsets < starts))).size:
        return (f"member {names[bad[0]]} at offset {offsets[bad[0]]} overlaps the one before it or is off a "
                "512-byte block")
    return None


class VideoLoader:
    """Iterate batches for one process: dict view name -> tensor, plus "label" and "index" (N,) int64.

    One DALI pipeline serves the whole run; each epoch has its own order and augmentation draws, the
    same for a given (seed, epoch). With on_error="skip", `skipped` lists the "shard:key" samples left
    out (missing members, found before reading, and undecodable ones, found while reading, replaced in
    their batch by the next sample of the order and also listed in `undecodable`)."""

    def __init__(self, cfg: DataConfig, views: list[ViewSpec | Plan], *, rank: int, world_size: int,
                 device: torch.device | str):
        self.cfg, self.plans = cfg, ViewPlans(views)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        manifest = read_manifest(cfg.shards)
        shards = [s for s in manifest["shards"] if s["split"] == cfg.split]
        if not shards:
            raise LoaderError(f"{cfg.shards}: no shards of split {cfg.split!r} "
                              f"(splits: {sorted({s['split'] for s in manifest['shards']})})")
        options = manifest.get("options", {})
        self.codec = options.get("codec", "h264")
        self.audio_rate = int(options.get("audio_rate", 24000))
        self._shards = shards
        self.keys: frozenset[str] | None = None  # read only these sample keys (`keep_only`); None: all
        self.undecodable: set[str] = set()  # "shard:key" found undecodable while reading (on_error="skip")
        self._scan()
        if cfg.decode == "gpu" and self.device.type != "cuda":
            raise LoaderError("decode='gpu' needs a CUDA device for the loader")
        self.decode = "cpu" if cfg.decode == "auto" else cfg.decode
        short_side = int(options.get("short_side") or 0)
        if self.decode == "gpu" and self.codec == "vp9" and 0 < short_side < NVDEC_VP9_MIN:
            raise LoaderError(f"{cfg.shards}: NVDEC decodes VP9 only from {NVDEC_VP9_MIN}x{NVDEC_VP9_MIN} up and "
                              f"these shards have short side {short_side}: decode on the CPU (decode='cpu') or "
                              f"re-shard with --codec h264 or --short-side {NVDEC_VP9_MIN}")
        if self.decode == "dali-cpu" and self.codec not in CPU_CODECS:
            raise LoaderError(f"{cfg.shards}: DALI's CPU video decoder reads {', '.join(CPU_CODECS)}, not "
                              f"{self.codec}: use decode='cpu' (PyAV)")
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already yielded
        self._order_fn: Callable[[int], np.ndarray] | None = None  # None: `shuffled` (no cycle through self)
        self._folder = tempfile.TemporaryDirectory(prefix="fastvid-order-")
        self._pipe = self._iter = None
        self._dali_epoch = -1  # the DALI epoch now running; -1: no pipeline yet
        self._open = False  # the running DALI epoch has batches the iterator has not taken

    def _scan(self) -> None:
        """(Re)read the shard indices, leaving out the samples to skip."""
        self.table, self.key_index, self.skipped = scan_indices(
            self._shards, ["json"] + self.plans.exts, self.cfg.on_error, frozenset(self.undecodable))
        if self.keys is not None:
            self.key_index = {k: p for k, p in self.key_index.items() if k in self.keys}
        if not self.key_index:
            raise LoaderError(f"{self.cfg.shards}: no complete sample in split {self.cfg.split!r} "
                              f"({len(self.skipped)} skipped)")
        self.positions = np.array(sorted(self.key_index.values()), np.int64)  # every position an epoch reads

    def keep_only(self, keys: Iterable[str]) -> None:
        """Read only the samples `keys` from now on: a split held out of one set of shards (the demo's
        validation clips); positions stay the dataset's."""
        self.keys = frozenset(keys)
        self._scan()

    def samples(self) -> int:
        """Samples this rank reads per epoch: rank r takes the block [rN/S, (r+1)N/S) of the epoch's order."""
        n = len(self.key_index)
        return (self.rank + 1) * n // self.world_size - self.rank * n // self.world_size

    def __len__(self) -> int:
        b = self.cfg.batch_size
        return self.samples() // b if self.cfg.drop_last else -(-self.samples() // b)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning: its own shuffle and its own augmentation draws."""
        self.epoch, self.consumed = epoch, 0

    def set_order(self, order: Callable[[int], np.ndarray]) -> None:
        """Read epochs in the order `order(epoch)` gives: every dataset position (`key_index` values) once,
        for all ranks together (rank r takes the r-th contiguous block). Default: `shuffled`."""
        self._order_fn = order

    def shuffled(self, epoch: int) -> np.ndarray:
        """The default order: a permutation seeded by (seed, epoch); positions in shard order without
        `shuffle`."""
        if not self.cfg.shuffle:
            return self.positions.copy()
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(self.positions)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the next iteration starts after the batches already consumed."""
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def _block(self) -> tuple[np.ndarray, int]:
        """This rank's positions for the rest of the epoch, padded to whole batches, and how many are real."""
        if self._order_fn is None:
            order = self.shuffled(self.epoch)
        else:  # a method's order: check it, it must cover the epoch exactly
            order = np.asarray(self._order_fn(self.epoch), np.int64)
            if not np.array_equal(np.sort(order), self.positions):
                raise ValueError(f"order({self.epoch}) must list every dataset position once ({len(self.positions)})")
        n, b = len(order), self.cfg.batch_size
        block = order[self.rank * n // self.world_size:(self.rank + 1) * n // self.world_size]
        block = block[:len(block) // b * b] if self.cfg.drop_last else block
        block = block[self.consumed * b:]
        real = len(block)
        pad = -real % b
        return np.concatenate([block, np.resize(block, pad)]) if real else block, real

    def _start_epoch(self) -> int:
        """Point the pipeline at the rest of the current epoch; returns the number of real samples."""
        block, real = self._block()
        if not real:  # a run resumed at the very end of an epoch: nothing left to read
            return 0
        if self._open:  # the last epoch was left part-read: DALI cannot drop its prefetched batches
            self.close()
        self._dali_epoch += 1  # a new pipeline counts from 0
        write_order(Path(self._folder.name), self._dali_epoch, block, self.epoch)
        if self._pipe is None:
            self._build()
        else:
            self._iter.reset()
        self._open = True
        return real

    def source(self) -> ShardSource:
        """The pipeline's sample source for this loader's shards, views and settings."""
        drawer = SampleDrawer(self.plans, self.cfg.seed, self.epoch)
        return ShardSource([s["tar"] for s in self._shards], self.table, drawer, Path(self._folder.name),
                           "pyav" if self.decode == "cpu" else "dali", self.cfg.on_error, self.cfg.verify)

    def _build(self) -> None:
        """The run's pipeline: `workers` decode processes feeding DALI's augmentation, on the GPU when the
        loader's device is one."""
        source = self.source()
        on_gpu = self.device.type == "cuda" and self.decode != "dali-cpu"
        workers = self.cfg.workers or len(os.sched_getaffinity(0))  # the cores this process may use
        # fork is fast but unsafe once CUDA is initialised in this process: spawn then (the source pickles)
        # and once this process has read object storage (obstore's runtime does not survive a fork either)
        start = ("spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() or is_url(self._shards[0]["tar"])
                 else "fork")
        source.batch = (self.cfg.batch_size, workers)  # which samples a worker reads next: it reads them ahead
        graph = GraphContext("mixed" if on_gpu else "cpu", source.decode, self.audio_rate)
        pipe = views_pipeline(source, self.plans, graph,
                              batch_size=self.cfg.batch_size, num_threads=self.cfg.threads,
                              device_id=(self.device.index or 0) if on_gpu else None, seed=self.cfg.seed,
                              prefetch_queue_depth=self.cfg.prefetch, py_num_workers=workers, py_start_method=start)
        # The workers fork here. Objects they inherit must not be garbage-collected in them (a dead
        # pipeline's __del__ in a worker waits for ever for its own workers): collect now, freeze the rest.
        gc.collect()
        gc.freeze()
        try:
            with children_end_with_this_process():  # kill -9 of this process takes its decode workers along
                pipe.build()
        finally:
            gc.unfreeze()
        self._pipe = pipe
        self._iter = DALIGenericIterator([pipe], self.plans.output_names, auto_reset=False)

    def close(self) -> None:
        """Stop the pipeline and its worker processes (a new iteration builds a new one)."""
        self._iter = self._pipe = None
        self._open = False
        self._dali_epoch = -1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        b = self.cfg.batch_size
        given = 0
        with self._reading():
            real = self._start_epoch()  # DALI runs the first batch here already
        batches = iter(self._iter if real else ())  # ceil(real / b) batches: the last one padded
        while True:
            with self._reading():
                outputs = next(batches, None)
            if outputs is None:
                break
            batch = self._finish(outputs[0], min(b, real - given))
            given += len(batch["index"])
            self._report_undecodable()
            self.consumed += 1
            yield batch
        self._open = False
        self.set_epoch(self.epoch + 1)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Around DALI's calls only: it re-raises a worker's error as a plain Exception with its traceback;
        make it one line naming the sample, and stop the pipeline."""
        try:
            yield
        except Exception as err:
            self.close()
            culprit = _failed_sample(str(err))
            raise LoaderError(f"reading {culprit or ', '.join(s['tar'] for s in self._shards)} failed: "
                              f"{_reason(str(err))}") from err

    def _report_undecodable(self) -> None:
        """Warn once per sample the workers found undecodable (on_error="skip"), and leave those samples
        out of later epochs (one index scan for all that the batch brought)."""
        path = Path(self._folder.name) / UNDECODABLE
        if self.cfg.on_error != "skip" or not path.exists():
            return
        new = 0
        for line in path.read_text().splitlines():
            name, _, reason = line.partition("\t")
            if name and name not in self.undecodable:
                self.undecodable.add(name)
                new += 1
                warnings.warn(f"{name}: undecodable ({reason}); replaced by the next sample of epoch "
                              f"{self.epoch} and left out from now on", stacklevel=3)
        if new:
            self._scan()

    def _finish(self, out: dict[str, torch.Tensor], real: int) -> dict[str, torch.Tensor]:
        """DALI outputs -> the batch contract: one tensor per view on the device, label, index (the first
        `real` samples: the rest pad the epoch's last batch)."""
        return self.plans.finish({k: v[:real].to(self.device, non_blocking=True) for k, v in out.items()})


def _failed_sample(message: str) -> str | None:
    """"shard.tar:key" of the sample a worker's error names (it names "shard.tar:key.ext")."""
    found = re.search(r'([^/\s"\']+\.tar):([^.\s"\']+)\.', message)
    return f"{found.group(1)}:{found.group(2)}" if found else None


def _reason(message: str) -> str:
    """The first line of a worker's error that says what went wrong (DALI wraps it in a traceback)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    named = [ln for ln in lines if "cannot decode" in ln or ".tar:" in ln]
    return (named or lines or [message])[-1]


def build_loader(data_cfg: DataConfig, views: list[ViewSpec | Plan], *, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> VideoLoader:
    """The loader of `views` (specs, or plans of one's own) over `data_cfg.shards` for process `rank` of
    `world_size`."""
    return VideoLoader(data_cfg, views, rank=rank, world_size=world_size, device=device)
