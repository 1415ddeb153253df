"""`shard_dataset`: the whole job (plan, parallel transcode, roll shards, journal, manifest), and
`read_manifest` for readers of OUT/dataset.json.

Resuming: OUT/.progress.jsonl records every committed shard (its keys, size, each member's size and
CRC-32, and the files rejected while it was filled). The plan is deterministic and each shard takes the
next run of samples in plan order, so a rerun skips journaled samples and writes the remaining shards
exactly as an uninterrupted run would: no sample is lost or written twice, and the bytes are the same.

A rerun first checks every journaled shard: a tar that is missing, has another size, or (when its mtime
changed since it was journaled) fails a member's checksum is redone under its own name with exactly its
samples, and journaled again (the later record of a tar supersedes the earlier); a missing or stale
`.idx` of an intact tar is rewritten from the tar. New shards are numbered after the highest journaled
one, so no name is used twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from fastvid.checksum import json_checksum
from fastvid.config import ConfigError, to_dict
from fastvid.errors import InputError, MissingFile, UserError, WriteFailed
from fastvid.lock import lock_folder
from fastvid.shard.config import ShardConfig
from fastvid.shard.flow import check_flow_method
from fastvid.shard.pool import run_isolated
from fastvid.shard.sources import Plan, Source, plan_sources
from fastvid.shard.transcode import Failure, Sample, process
from fastvid.shard.integrity import checksum, verify_tar
from fastvid.shard.writer import ShardWriter, dali_index
from fastvid.storage import PARTIAL, Storage, is_url, join, open_storage, read_location, split

JOURNAL = ".progress.jsonl"
MANIFEST = "dataset.json"
ERRORS = "errors.jsonl"


@dataclass
class ShardSummary:
    """What a run produced (counting shards kept from an interrupted earlier run)."""

    out: str | Path  # a folder, or an object-storage URL
    samples: int
    frames: int
    shards: int
    bytes: int
    splits: dict[str, int]
    rejected: dict[str, int] = field(default_factory=dict)  # reason kind -> files rejected
    repaired: dict[str, int] = field(default_factory=dict)  # note kind -> files kept with that problem
    unlisted: int = 0  # videos the split lists leave out
    resumed_shards: int = 0
    # A line per shard of an earlier run found damaged and redone, or index rewritten (printed as "redone:";
    # not `repaired`, which counts source files kept with repairs).
    redone: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    def format(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items()))
        lines = [f"{self.samples} samples ({splits or 'none'}), {self.frames} frames in {self.shards} shards, "
                 f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s"
                 + (f" ({self.resumed_shards} shards kept from an earlier run)" if self.resumed_shards else "")]
        for title, counts in (("rejected", self.rejected), ("kept with repairs", self.repaired)):
            if counts:
                detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                lines.append(f"{title}: {sum(counts.values())} ({detail})")
        lines += [f"redone: {line}" for line in self.redone]
        if self.unlisted:
            lines.append(f"not in the split lists (skipped): {self.unlisted}")
        if self.rejected or self.repaired:
            lines.append(f"details: {join(self.out, ERRORS)}")
        return "\n".join(lines)


def _journal_line(entry: dict) -> str:
    """A journal line: the entry and the CRC-32 of its content, so that a changed byte is seen, not trusted."""
    return json.dumps({**entry, "crc32": json_checksum(entry)}, sort_keys=True) + "\n"


def _load_journal(storage: Storage, options: dict) -> list[dict]:
    """Committed shard records of an earlier run with the same options (a torn last line is ignored: that
    run was killed while appending it). A damaged line (not the last, or failing its checksum) stops the
    run: the shards it lists cannot be trusted."""
    out, path = storage.root, storage.location(JOURNAL)
    text = storage.read_log(JOURNAL)
    if text is None:
        storage.append(JOURNAL, _journal_line({"options": options}))
        return []
    lines = text.splitlines()
    entries = []
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) > 1:
                break
            entry = None
        if not isinstance(entry, dict) or ("crc32" in entry and json_checksum(entry) != entry["crc32"]):
            raise InputError(f"{path}: line {n} is damaged, so the shards it records cannot be trusted; move "
                             f"{out} aside and run the command again into an empty OUT")
        entries.append(entry)
    header = entries[0] if entries else {}
    if header.get("options") != options:
        old = header.get("options", {})
        diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
        raise ConfigError(f"{out} holds shards made with other options (differing: {', '.join(diff)}); "
                          "rerun with the same options or use an empty OUT")
    records: dict[str | int, dict] = {}  # tar name (or line number for failures only) -> its latest record
    for n, record in enumerate(entries[1:]):
        records.pop(record["tar"] or n, None)  # a redone shard's record supersedes (and follows) the old one
        records[record["tar"] or n] = record
    return list(records.values())


def _shard_number(tar: str) -> int:
    """`train-000012.tar` -> 12."""
    return int(tar.rsplit("-", 1)[1].split(".")[0])


def _stamp(record: dict) -> str:
    """The tar's stamp when it was journaled (`mtime_ns` in journals of fastvid before object storage)."""
    return str(record.get("stamp", record.get("mtime_ns")))


def _damage(storage: Storage, record: dict) -> str | None:
    """Why a journaled shard cannot be kept (missing, other size, a member failing its checksum), or None.
    The members are read only when the tar's stamp (mtime, ETag) differs from the journal's (or was not
    recorded)."""
    stat = storage.stat(record["tar"])
    if stat is None:
        return "missing"
    if stat.size != record["bytes"]:
        return f"{stat.size} bytes, the journal says {record['bytes']}"
    if "members" in record and stat.stamp != _stamp(record):
        problems = verify_tar(storage.location(record["tar"]), record["members"])
        if problems:
            return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return None


def _fix_index(storage: Storage, staging: Path, record: dict) -> str | None:
    """Rewrite the `.idx` of an intact tar when it is missing or does not match the tar; says so. An index
    with the journaled checksum beside the journaled tar is kept without reading the tar (which, in
    object storage, would mean downloading it)."""
    try:
        index = storage.read(record["index"])
    except FileNotFoundError:
        index = None
    if (index is not None and checksum(index) == record.get("index_crc32")
            and storage.stat(record["tar"]).stamp == _stamp(record)):
        return None
    expected = dali_index(storage.location(record["tar"]))  # the tar's headers only
    if index is not None and index.decode("utf-8", "replace") == expected:
        return None
    storage.write(record["index"], expected.encode(), staging)
    return f"{record['index']}: rewritten from {record['tar']} (it was {'stale' if index is not None else 'missing'})"


def _work(source: Source, cfg: ShardConfig, labels: dict[str, int]) -> tuple[Sample | Failure, int]:
    return process(source, cfg, labels.get(source.label, -1) if source.label is not None else -1)


def _lost(source: Source, kind: str, reason: str) -> tuple[Failure, int]:
    return Failure(source.key, source.split, source.rel, kind, reason), 0


def _results(todo: list[Source], cfg: ShardConfig, labels: dict[str, int]) -> Iterator[tuple[Sample | Failure, int]]:
    """Transcoded samples in plan order, from worker processes (even with one worker, so that a video
    that crashes or hangs FFmpeg costs only itself) or from Ray tasks (`cfg.ray`); workers run ahead while
    the writer waits."""
    work = partial(_work, cfg=cfg, labels=labels)
    if cfg.ray is None:
        yield from run_isolated(work, todo, cfg.num_workers, cfg.timeout or None, _lost)
    else:
        from fastvid.shard.cluster import run_on_ray  # Ray is an optional extra

        yield from run_on_ray(work, todo, cfg.ray, cfg.workers, cfg.timeout or None, _lost)


class _Roller:
    """Fills shards split by split, closing one at `shard_size` bytes or `max_samples` samples, and
    appends each committed shard (with the failures seen while filling it) to the journal.

    `redo` maps the key of each sample of a damaged shard to that shard's journal record: those samples
    (which must come together) go back into one shard of the same name, with the record's failures."""

    def __init__(self, cfg: ShardConfig, storage: Storage, staging: Path, next_index: Counter,
                 redo: dict[str, dict]) -> None:
        self.cfg, self.storage, self.staging, self.next_index, self.redo = cfg, storage, staging, next_index, redo
        self.split: str | None = None
        self.redoing: dict | None = None  # the damaged shard's record while its samples come in
        self.writer: ShardWriter | None = None
        self.errors: list[dict] = []
        self.records: list[dict] = []

    def add(self, result: Sample | Failure) -> None:
        redoing = self.redo.get(result.key)
        if result.split != self.split or redoing is not self.redoing:
            self.close()
            self.split, self.redoing = result.split, redoing
            if redoing is not None:  # its failures; the redone samples bring their notes again
                self.errors = [e for e in redoing["errors"] if not e["kept"]]
        if isinstance(result, Failure):
            self.errors.append({"key": result.key, "path": result.rel, "kind": result.kind,
                                "reason": result.reason, "kept": False})
            return
        self.errors += [{"key": result.key, "path": result.rel, "kind": n.kind, "reason": n.reason, "kept": True}
                        for n in result.notes]
        if self.redoing is not None:  # the samples of one damaged shard: one shard again, whatever its size
            if self.writer is None:
                self.writer = ShardWriter(self.staging, self.redoing["tar"].removesuffix(".tar"), self.storage)
            self.writer.add(result)
            return
        if self.writer is not None and self.writer.bytes + result.nbytes > self.cfg.shard_size:
            self._commit()
        if self.writer is None:
            self.writer = ShardWriter(self.staging, f"{self.split}-{self.next_index[self.split]:06d}", self.storage)
        self.writer.add(result)
        if self.cfg.max_samples is not None and len(self.writer.keys) >= self.cfg.max_samples:
            self._commit()

    def _commit(self) -> None:
        size, index_crc = self.writer.commit()  # on a write error the writer stays, for abort() to remove its files
        writer, self.writer = self.writer, None
        if self.redoing is None:
            self.next_index[self.split] += 1
        self._record({"tar": writer.tar_name, "index": writer.idx_name, "split": self.split,
                      "samples": len(writer.keys), "frames": writer.frames, "bytes": size, "keys": writer.keys,
                      "members": writer.members, "stamp": self.storage.stat(writer.tar_name).stamp,
                      "index_crc32": index_crc})

    def _record(self, record: dict) -> None:
        record["errors"], self.errors = self.errors, []
        self.storage.append(JOURNAL, _journal_line(record))
        self.records.append(record)

    def close(self) -> None:
        """End the current split: commit its open shard, journal failures that no shard carried."""
        if self.writer is not None:
            self._commit()
        if self.errors:
            self._record({"tar": None, "split": self.split, "keys": []})

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def shard_dataset(cfg: ShardConfig) -> ShardSummary:
    """Turn cfg.src into shards under cfg.out (resuming an interrupted run); see the module docstring."""
    start = time.time()
    storage = open_storage(cfg.out)
    staging = staging_folder(cfg.out)
    if cfg.flow:
        check_flow_method(cfg.flow)
    plan = plan_sources(cfg.src, str(staging), cfg.split_files, cfg.default_split, cfg.seed)  # before OUT is made
    with lock_folder(staging, "fastvid shard"):  # a second run into OUT (from this machine) stops here
        return _shard_into(cfg, storage, staging, plan, start)


def staging_folder(out: str) -> Path:
    """Where shards are written before they are published: OUT itself for a folder (a rename publishes), a
    folder of the cache for object storage (one per URL, so that a rerun finds its lock and leftovers)."""
    if not is_url(out):
        return Path(out)
    cache = Path(os.environ.get("FASTVID_CACHE", Path.home() / ".cache" / "fastvid"))
    return cache / "staging" / hashlib.sha1(out.rstrip("/").encode()).hexdigest()[:16]


def _shard_into(cfg: ShardConfig, storage: Storage, staging: Path, plan: Plan, start: float) -> ShardSummary:
    """`shard_dataset` once OUT is made and locked."""
    journaled = _load_journal(storage, cfg.output_options())
    for stale in {*storage.list(), *(p.name for p in staging.glob("*" + PARTIAL))}:  # a killed run's leftovers
        if stale.endswith(PARTIAL):
            storage.delete(stale)
            (staging / stale).unlink(missing_ok=True)
    records, redo, redone = [], {}, []
    for record in journaled:
        reason = _damage(storage, record) if record["tar"] else None
        if reason is not None:
            redo.update((key, record) for key in record["keys"])
            redone.append(f"{record['tar']}: {reason}; its {record['samples']} samples are redone")
        else:
            records.append(record)
            redone += [fixed] if record["tar"] and (fixed := _fix_index(storage, staging, record)) else []
    # A damaged shard's failures stay failed (they come back with its record); its samples are redone,
    # the repaired ones too (a note with kept=True names a sample of the shard, not a failure).
    done = ({k for r in records for k in r["keys"]}
            | {e["key"] for r in journaled for e in r["errors"] if not e["kept"]})
    # The damaged shards' samples first, shard by shard, then what no shard holds yet, in plan order.
    todo = sorted((s for s in plan.sources if s.key not in done),
                  key=lambda s: (s.key not in redo, redo[s.key]["tar"] if s.key in redo else ""))
    labels = {c: i for i, c in enumerate(plan.classes)}
    next_index = Counter()  # after the highest journaled shard of each split, damaged or not
    for record in journaled:
        if record["tar"]:
            next_index[record["split"]] = max(next_index[record["split"]], _shard_number(record["tar"]) + 1)
    frames = megabytes = 0.0
    with tqdm(total=len(plan.sources), initial=len(plan.sources) - len(todo), unit="video", desc="shard",
              disable=not cfg.progress) as bar:
        roller = _Roller(cfg, storage, staging, next_index, redo)
        try:
            for result, size in _results(todo, cfg, labels):
                roller.add(result)
                frames += result.frames if isinstance(result, Sample) else 0
                megabytes += size / 1e6
                bar.update(1)
                bar.set_postfix(frames=int(frames), MBps=f"{megabytes / max(time.time() - start, 1e-6):.1f}",
                                refresh=False)
            roller.close()
            records += roller.records
            summary = _write_outputs(cfg, storage, staging, plan.classes, records, plan.rejected)
        except OSError as err:  # a full disk, a quota, an I/O error: one line naming the file, nothing left over
            if isinstance(err, UserError):  # object storage's: it names the object already
                roller.abort()
                raise
            where = err.filename or (roller.writer.partial if roller.writer else storage.root)
            roller.abort()
            raise WriteFailed(f"writing {where}: {err.strerror or err}; partial files removed, {len(roller.records)} "
                          "new shard(s) kept: make room and rerun the same command to resume") from None
        except BaseException:
            roller.abort()
            raise
    summary.unlisted = plan.unlisted
    summary.redone = redone
    summary.resumed_shards = sum(1 for r in records[: len(records) - len(roller.records)] if r["tar"])
    summary.seconds = time.time() - start
    return summary


def _write_outputs(cfg: ShardConfig, storage: Storage, staging: Path, classes: list[str], records: list[dict],
                   unusable: list[dict]) -> ShardSummary:
    """OUT/dataset.json and OUT/errors.jsonl from the journal records and the SRC entries that are not
    files (`unusable`, found again by every run); the run's summary."""
    # In shard order, as an uninterrupted run lists them (a redone shard's record comes later in the journal).
    records = sorted(records, key=lambda r: (r["split"], _shard_number(r["tar"]) if r["tar"] else math.inf))
    shards = [{k: r[k] for k in ("tar", "index", "split", "samples", "frames", "bytes", "members") if k in r}
              for r in records if r["tar"]]
    splits = Counter()
    for s in shards:
        splits[s["split"]] += s["samples"]
    manifest = {"version": 1, "shards": shards, "classes": classes, "splits": dict(sorted(splits.items())),
                "samples": sum(splits.values()), "frames": sum(s["frames"] for s in shards), "options": to_dict(cfg)}
    errors = [{"key": None, **e, "kept": False} for e in unusable] + [e for r in records for e in r["errors"]]
    manifest["crc32"] = json_checksum(manifest)
    storage.write(MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), staging)
    storage.write(ERRORS, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode(), staging)
    return ShardSummary(out=storage.root, samples=manifest["samples"], frames=manifest["frames"], shards=len(shards),
                        bytes=sum(s["bytes"] for s in shards), splits=manifest["splits"],
                        rejected=dict(Counter(e["kind"] for e in errors if not e["kept"])),
                        repaired=dict(Counter(e["kind"] for e in errors if e["kept"])))


def read_manifest(path: str | Path) -> dict:
    """OUT/dataset.json's content (given OUT or the json itself), with shard paths made absolute."""
    if is_url(path):  # OUT's URL, or dataset.json's
        file = path if path.endswith(".json") else join(path, MANIFEST)
    else:
        path = Path(path)
        file = path / MANIFEST if path.is_dir() else path
    try:
        data = read_location(file)
    except FileNotFoundError:
        raise MissingFile(f"{file}: no dataset.json (run `fastvid shard SRC OUT` first)") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{file}: not UTF-8 text (byte {err.start}); not the dataset.json `fastvid shard` "
                         "writes") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{file}: " + ("empty" if not err.doc.strip() else f"not valid JSON ({err.msg}, line "
                         f"{err.lineno} column {err.colno})") + "; rerun `fastvid shard` to rewrite it") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{file}: a JSON {type(manifest).__name__}, not the mapping `fastvid shard` writes")
    if manifest.get("version") != 1:
        raise InputError(f"{file}: unsupported manifest version {manifest.get('version')!r}")
    if "crc32" in manifest and (crc := json_checksum(manifest)) != manifest["crc32"]:  # absent: an older fastvid's
        raise InputError(f"{file}: checksum {crc}, the file says {manifest['crc32']!r:.20} (damaged or edited); "
                         "rerun `fastvid shard` to rewrite it")
    shards = manifest.get("shards")
    if not (isinstance(shards, list) and all(isinstance(s, dict) and {"tar", "index", "split", "samples"} <= set(s)
                                             for s in shards)):
        raise InputError(f"{file}: no `shards` list of {{tar, index, split, samples, ...}} entries; rerun "
                         "`fastvid shard` to rewrite it")
    base = split(file)[0] if is_url(file) else file.parent.resolve()
    for shard in manifest["shards"]:
        shard["tar"], shard["index"] = str(join(base, shard["tar"])), str(join(base, shard["index"]))
    return manifest
