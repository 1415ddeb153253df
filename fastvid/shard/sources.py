"""Which videos to shard: a folder (class = parent folder) or a CSV/JSONL manifest, official split
lists (UCF101 `trainlist01.txt`/`testlist01.txt`, HMDB51 `<class>_test_split1.txt`), and stable keys.

The plan is deterministic: same SRC, split files and seed give the same samples in the same order,
which is what makes shards reproducible and a run resumable.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fastvid.config import ConfigError

KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
VALID_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MAX_KEY = 80  # keeps `KEY.flow.mp4` under the 100-character ustar name limit that every tar reader knows
HMDB_SPLIT = re.compile(r"^(?P<label>.+)_test_split\d+\.txt$")
# What `fastvid shard` writes into OUT (besides hidden files): never a source, where OUT lies inside SRC.
OUTPUT_FILE = re.compile(r"^([A-Za-z0-9_]+-\d{6}\.(tar|idx)|dataset\.json|errors\.jsonl)(\.partial)?$")


@dataclass(frozen=True)
class Source:
    """One input video and where it goes."""

    path: Path  # absolute path of the source file
    rel: str  # path relative to SRC (or the manifest's folder), as written in KEY.json
    label: str | None
    split: str
    key: str


@dataclass
class Plan:
    """The sources to shard, in shard order, with the class list and what the split lists left out."""

    sources: list[Source]
    classes: list[str]
    unlisted: int  # videos that the split lists do not assign (or mark unused): not sharded
    rejected: list[dict] = field(default_factory=list)  # {"path", "kind", "reason"}: SRC entries that are no file


def _hash8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def derive_key(rel: str) -> str:
    """A key from a relative path: the path without its extension, [A-Za-z0-9_-] only, <= MAX_KEY."""
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    key = KEY_CHARS.sub("_", stem.replace("/", "_")).strip("_") or "video"
    if len(key) > MAX_KEY:
        key = f"{key[:MAX_KEY - 9]}-{_hash8(rel)}"
    return key


def _unique_keys(rels: list[str]) -> list[str]:
    """Derived keys, with a hash of the path appended to every key that two paths share."""
    keys = [derive_key(r) for r in rels]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return [f"{k[:MAX_KEY - 9]}-{_hash8(r)}" if counts[k] > 1 else k for k, r in zip(keys, rels)]


def printable(path: str) -> str:
    """A path for errors.jsonl and messages: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _folder_rows(root: Path, out: Path) -> tuple[list[dict], list[dict]]:
    """Every non-hidden regular file under `root` (the shards in OUT excluded, folder symlinks followed);
    the parent folder names the class. Any other file in OUT is an error: a video that shares its folder
    with the shards would be lost with them (OUT is where reruns write and users delete). Also one rejection ({"path", "kind", "reason"}) per entry that cannot be
    read as a video: a folder that cannot be listed, a symlink loop or a broken link, a fifo, socket or
    device, a name that is not UTF-8."""
    out = out.resolve()
    rows: list[dict] = []
    rejected: list[dict] = []

    def reject(rel: str, kind: str, reason: str) -> None:
        rejected.append({"path": printable(rel), "kind": kind, "reason": reason})

    def walk(folder: Path, rel: str, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
        except OSError as err:
            reject(rel or ".", "unreadable", f"folder cannot be listed: {err.strerror}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path, entry_rel = Path(entry.path), f"{rel}/{entry.name}" if rel else entry.name
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                reject(entry_rel, "undecodable-name", "the name is not valid UTF-8; rename the file")
                continue
            try:
                mode = path.stat().st_mode  # follows symlinks
            except OSError as err:
                kind = ("symlink-loop" if err.errno == errno.ELOOP else
                        "broken-symlink" if entry.is_symlink() else "unreadable")
                reject(entry_rel, kind, f"cannot be followed: {err.strerror}")
                continue
            if stat.S_ISDIR(mode):
                real = path.resolve()
                if real in ancestors:
                    reject(entry_rel, "symlink-loop", f"links back to its own parent folder {printable(str(real))}")
                    continue
                walk(path, entry_rel, ancestors | {real})
            elif not stat.S_ISREG(mode):
                reject(entry_rel, "not-a-file", "a fifo, socket or device, not a video file")
            elif not (path.resolve().parent == out and OUTPUT_FILE.match(entry.name)):
                if out == path.resolve().parent or out in path.resolve().parents:
                    raise ConfigError(f"OUT {printable(str(out))} holds {printable(entry_rel)}, a file of SRC "
                                      f"{printable(str(root))}: choose an OUT that holds no video of SRC")
                label = entry_rel.rsplit("/", 2)[-2] if "/" in entry_rel else None
                rows.append({"path": entry_rel, "label": label})

    walk(root, "", frozenset({root.resolve()}))
    return rows, rejected


def _manifest_rows(manifest: Path) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL manifest; `path` is required on every row."""
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ConfigError(f"{manifest}: a CSV manifest needs a header with a `path` column")
            rows = [{k: (v or None) for k, v in row.items() if k is not None} for row in reader]
    elif manifest.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{manifest}:{n}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{manifest}:{n}: each line must be a JSON object")
            rows.append(row)
    else:
        raise ConfigError(f"{manifest}: a manifest must be .csv or .jsonl")
    allowed = {"path", "label", "split", "key"}
    for n, row in enumerate(rows, 1):
        extra = set(row) - allowed
        if extra:
            raise ConfigError(f"{manifest}: row {n}: unknown column(s) {sorted(extra)}; known: {sorted(allowed)}")
        if not row.get("path"):
            raise ConfigError(f"{manifest}: row {n}: missing `path`")
    return rows


def read_split_files(files: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Official split lists -> ({relative path: split} for UCF101, {file name: split} for HMDB51).

    Keys are lower-cased: UCF101's lists spell some class folders differently (HandStandPushups)."""
    by_rel: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for file in map(Path, files):
        if not file.is_file():
            raise ConfigError(f"--split-file {file}: no such file")
        hmdb = HMDB_SPLIT.match(file.name)
        lower = file.name.lower()
        ucf_split = "train" if "train" in lower else "test" if "test" in lower else None
        if not hmdb and ucf_split is None:
            raise ConfigError(f"--split-file {file}: name it like UCF101's trainlist01.txt/testlist01.txt "
                              f"or HMDB51's <class>_test_split1.txt")
        for n, line in enumerate(file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if hmdb:
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ConfigError(f"{file}:{n}: expected `<video> <0|1|2>`, got {line!r}")
                if parts[1] != "0":  # 0 = not used in this split
                    by_name[parts[0].lower()] = "train" if parts[1] == "1" else "test"
            else:
                by_rel[parts[0].replace("\\", "/").lower()] = ucf_split
    return by_rel, by_name


def plan_sources(src: str, out: str, split_files: list[str], default_split: str, seed: int) -> Plan:
    """All sources in shard order: splits sorted by name, samples in a seeded order inside each split."""
    root = Path(src)
    rejected: list[dict] = []
    if root.is_dir():
        base, (rows, rejected) = root, _folder_rows(root, Path(out))
    elif root.is_file():
        base, rows = root.parent, _manifest_rows(root)
    else:
        raise ConfigError(f"SRC {src}: no such folder or manifest")
    by_rel, by_name = read_split_files(split_files) if split_files else ({}, {})
    unlisted = 0
    resolved = []
    for row in rows:
        path = Path(row["path"])
        path = path if path.is_absolute() else base / path
        try:
            rel = path.relative_to(base).as_posix()
        except ValueError:
            rel = path.as_posix()
        split = row.get("split") or default_split
        if split_files:
            split = by_rel.get(rel.lower()) or by_name.get(path.name.lower())
            if split is None:
                unlisted += 1
                continue
        if not SPLIT_NAME.match(split):
            raise ConfigError(f"{row['path']}: split {split!r} must be letters, digits and _ only")
        resolved.append((path, rel, row.get("label"), split, row.get("key")))
    keys = _unique_keys([r[1] for r in resolved])
    sources = []
    seen: dict[str, str] = {}
    for (path, rel, label, split, given), key in zip(resolved, keys):
        if given is not None:
            if not VALID_KEY.match(given) or len(given) > MAX_KEY:
                raise ConfigError(f"{rel}: key {given!r} must be 1-{MAX_KEY} characters of [A-Za-z0-9_-]")
            key = given
        if key in seen:
            raise ConfigError(f"key {key!r} is used by both {seen[key]} and {rel}")
        seen[key] = rel
        sources.append(Source(path=path.resolve(), rel=rel, label=label, split=split, key=key))
    ordered = []
    for split in sorted({s.split for s in sources}):
        part = sorted((s for s in sources if s.split == split), key=lambda s: s.key)
        random.Random(f"{seed}:{split}").shuffle(part)
        ordered += part
    if not sources:
        why = [f"{n} {what}" for n, what in ((len(rows), "file(s) found"), (unlisted, "not in the split lists"),
                                             (len(rejected), "entries unreadable")) if n]
        raise ConfigError(f"SRC {src}: no video to shard ({', '.join(why) or 'it is empty'})")
    classes = sorted({s.label for s in sources if s.label is not None})
    return Plan(sources=ordered, classes=classes, unlisted=unlisted, rejected=rejected)
