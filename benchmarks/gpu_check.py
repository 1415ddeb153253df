"""The Python half of benchmarks/gpu_check.sh: cycled training shards, the one summary, the check of $OUT.

    python benchmarks/gpu_check.py cycle SRC DST COPIES   # COPIES renamed copies of the shard set SRC as DST
    python benchmarks/gpu_check.py summary WORK OUT [print]  # WORK's step outputs -> OUT/summary.json, loader.png,
                                                             # log_tail.txt; print: its figures on one screen
    python benchmarks/gpu_check.py check-out OUT          # OUT within what the device tool returns (exit 1 if not)
    python benchmarks/gpu_check.py limits DEFAULT ACTIVE KILL_AFTER PER_CALL  # the steps' limits fit a call?
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import sys
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# What the device tool brings back from $OUT (/work/.library/device/README.md): more is left out, by chance.
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES, MAX_FOLDERS = 8, 16 * 2 ** 20, 64 * 2 ** 20, 2
NAME = re.compile(r"[A-Za-z0-9._-]+")
TAIL_CHARS = 2000  # of each step's output, in summary.json
LOG_TAIL_BYTES = 256 * 1024  # of the whole log, as log_tail.txt
VERSIONS = ("torch", "torchvision", "triton", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "av", "webdataset",
            "numpy", "opencv-python-headless")


def cycle(src: Path, dst: Path, copies: int) -> dict:
    """`copies` copies of every sample of the shard set `src`, keys prefixed `cNN_` (in the index, the tar and
    the json member, which the drawer looks keys up by), as the shard set `dst`: an epoch as long as a real
    dataset's from the few clips that travel; copy 0 is the "val" split, so the training step also runs
    validation (its clips repeat training ones: it times the pass, it does not measure generalisation).
    Returns dst's manifest."""
    from fastvid.checksum import json_checksum
    from fastvid.shard import read_manifest
    from fastvid.shard.transcode import Sample
    from fastvid.shard.writer import ShardWriter, split_name

    manifest = read_manifest(src)
    dst.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard in manifest["shards"]:
        with tarfile.open(shard["tar"]) as tar:
            samples: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, ext = split_name(member.name)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for c in range(copies):
            split = "val" if c == 0 else shard["split"]
            writer = ShardWriter(dst, f"c{c:03d}_{Path(shard['tar']).stem}")
            for key, files in samples.items():
                meta = json.loads(files["json"])
                meta["key"] = f"c{c:03d}_{key}"
                writer.add(Sample(meta["key"], split, meta.get("path", key),
                                  {**files, "json": json.dumps(meta).encode()}, meta["num_frames"]))
            writer.commit()
            shards.append({"tar": writer.tar_name, "index": writer.idx_name, "split": split,
                           "samples": len(writer.keys), "frames": writer.frames, "bytes": writer.bytes,
                           "members": writer.members})
    splits = Counter()
    for s in shards:
        splits[s["split"]] += s["samples"]
    out = {**manifest, "shards": shards, "splits": dict(splits), "samples": sum(splits.values()),
           "frames": sum(s["frames"] for s in shards), "options": {**manifest["options"], "out": str(dst)}}
    out["crc32"] = json_checksum(out)  # read_manifest checks it: the source's no longer matches
    (dst / "dataset.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def dmon_table(text: str) -> dict:
    """`nvidia-smi dmon -s u -o T` output -> {column: {"mean", "max"}} over its samples (column "dec": NVDEC
    utilisation in %), plus the samples' count. Columns come from its header line; "-" is skipped."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if ln[0] == "#Time"), None)
    if header is None:
        return {"samples": 0, "note": (text.strip().splitlines() or ["no output"])[-1][:200]}
    rows = [dict(zip(header, ln)) for ln in lines if not ln[0].startswith("#") and len(ln) == len(header)]
    table: dict = {"samples": len(rows)}
    for column in header[2:]:  # after Time and the GPU index
        values = [float(r[column]) for r in rows if re.fullmatch(r"[\d.]+", r[column])]
        if values:
            table[column] = {"mean": round(sum(values) / len(values), 1), "max": max(values)}
    return table


def pytest_result(xml: Path) -> dict:
    """The JUnit report's counts and the failing tests with the first line of why."""
    text = xml.read_text()
    head = re.search(r"<testsuite [^>]*", text)
    counts = dict(re.findall(r'(\w+)="([^"]*)"', head.group(0))) if head else {}
    failed = [{"test": f"{cls}::{name}", "why": why[:300]} for cls, name, why in re.findall(
        r'<testcase classname="([^"]*)" name="([^"]*)"[^>]*>\s*<(?:failure|error) message="([^"]*)"', text)]
    return {k: counts[k] for k in ("tests", "failures", "errors", "skipped", "time") if k in counts} | \
        {"failed": failed}


def train_result(log: str) -> dict:
    """The trainer's epoch length and its line per `train.log_every` steps."""
    epoch = re.search(r"(\d+) clips, (\d+) batches per epoch", log)
    steps = re.findall(r"step (\d+)/\d+: .*?([\d.]+) clips/s, data wait (\d+)%", log)
    return {"clips": int(epoch.group(1)) if epoch else None,
            "batches_per_epoch": int(epoch.group(2)) if epoch else None,
            "steps": [{"step": int(s), "clips_per_s": float(c), "data_wait_percent": int(w)} for s, c, w in steps]}


def loader_result(work: Path, out: Path) -> dict:
    """benchmarks/loader.py's whole report (rewritten after each row: a cut step keeps its rows), and its PNG
    in OUT, drawn here from the JSON when the step was cut before loader.py drew it."""
    report = json.loads((work / "loader" / "loader.json").read_text())
    png = work / "loader" / "loader.png"
    if not png.exists():
        from benchmarks.loader import plot

        plot(report, png)
    if png.exists():
        shutil.copyfile(png, out / "loader.png")
    table = {name: {w: round(r["clips_per_s"], 1) for w, r in by.items()} for name, by in report["results"].items()}
    return {"clips_per_s": table, "report": report}


def summary(work: Path, out: Path) -> dict:
    """OUT/summary.json from what WORK holds now (called after every step: a machine lost mid-check still
    leaves what was measured), OUT/loader.png and OUT/log_tail.txt. A part that cannot be read is recorded
    with why, never raised: the summary must always be written."""
    steps = [json.loads(ln) for ln in (work / "steps.jsonl").read_text().splitlines()] \
        if (work / "steps.jsonl").exists() else []
    for s in steps:
        log = work / f"{s['step']}.log"
        s["tail"] = log.read_text(errors="replace")[-TAIL_CHARS:] if log.exists() else ""
    result: dict = {"written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "python": platform.python_version(),
                    "mode": (work / "mode").read_text().strip() if (work / "mode").exists() else None,
                    "steps": steps, "versions": {}}
    for package in VERSIONS:  # metadata only: importing torch costs seconds
        try:
            result["versions"][package] = version(package)
        except PackageNotFoundError:
            pass
    readers: dict[str, tuple[Path, Callable[[], object]]] = {
        "limits": (work / "limits.json", lambda: json.loads((work / "limits.json").read_text())),
        "parts": (work / "received.json", lambda: json.loads((work / "received.json").read_text())),
        "gpu": (work / "nvidia-smi.txt", lambda: (work / "nvidia-smi.txt").read_text().strip()),
        "loader": (work / "loader" / "loader.json", lambda: loader_result(work, out)),
        "nvdec": (work / "dmon.txt", lambda: dmon_table((work / "dmon.txt").read_text())),
        "train": (work / "train.log", lambda: train_result((work / "train.log").read_text(errors="replace"))),
        "pytest": (work / "pytest.xml", lambda: pytest_result(work / "pytest.xml")),
    }
    for key, (path, read) in readers.items():
        if path.exists():
            try:
                result[key] = read()
            except Exception:  # noqa: BLE001 - a section that cannot be read must not lose the others
                result[key] = {"unreadable": traceback.format_exc(limit=2)[-600:]}
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    log = work / "log"
    if log.exists():
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
            (out / "log_tail.txt").write_bytes(f.read())
    return result


def digest(result: dict) -> str:
    """The figures of summary.json on one screen, for the device reply's output tail."""
    lines = [f"{s['step']}: exit {s['exit']} after {s['seconds']} s (limit {s['limit']} s"
             f"{', timed out' if s['timed_out'] else ''})" for s in result["steps"]]
    if isinstance(result.get("loader"), dict) and "clips_per_s" in result["loader"]:
        lines += [f"loader {name}: " + ", ".join(f"{w} workers {r} clips/s" for w, r in by.items())
                  for name, by in result["loader"]["clips_per_s"].items()]
        lines.append(f"decode stage ms/clip: {result['loader']['report']['decode_stage']['ms_per_clip']}")
    if isinstance(result.get("nvdec"), dict) and "dec" in result["nvdec"]:
        lines.append(f"NVDEC utilisation during the loader step: {result['nvdec']['dec']} %")
    if isinstance(result.get("train"), dict) and "steps" in result["train"]:
        lines += [f"train step {t['step']}: {t['clips_per_s']} clips/s, data wait {t['data_wait_percent']}%"
                  for t in result["train"]["steps"]]
    if isinstance(result.get("pytest"), dict) and "tests" in result["pytest"]:
        p = result["pytest"]
        lines.append(f"pytest: {p['tests']} tests, {p['failures']} failed, {p['errors']} errors, {p['skipped']} "
                     f"skipped" + "".join(f"\n  {f['test']}: {f['why']}" for f in p["failed"]))
    return "\n".join(lines)


def check_out(out: Path) -> list[str]:
    """Why OUT would not come back whole from the device tool: one line per problem, none when it would."""
    problems, files, total = [], [], 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not all(NAME.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name of other characters than letters, digits, '.', '_', '-'")
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{rel}: not a plain file or folder")
        elif path.is_file():
            files.append(rel)
            total += path.stat().st_size
            if len(rel.parts) - 1 > MAX_FOLDERS:
                problems.append(f"{rel}: more than {MAX_FOLDERS} folders down")
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{rel}: {path.stat().st_size} bytes, over {MAX_FILE_BYTES}")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, over {MAX_FILES}: {' '.join(map(str, files))}")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all, over {MAX_TOTAL_BYTES}")
    return problems


def limits(default: str, active: str, kill_after: int, per_call: int) -> dict:
    """The steps' limits ("step=seconds ...", later entries win) as the GPU run has them and as this run has
    them, each with its sum including a kill grace per step, and whether each fits in one device call."""
    result: dict = {"kill_after": kill_after, "per_call": per_call}
    steps = [kv.split("=")[0] for kv in default.split()]
    for name, text in (("default", default), ("active", active)):
        table = {k: int(v) for k, v in (kv.split("=") for kv in text.split())}
        if set(table) != set(steps):
            raise SystemExit(f"GPU_CHECK_LIMITS: unknown step {sorted(set(table) - set(steps))} "
                             f"(steps: {' '.join(steps)})")
        total = sum(table.values()) + kill_after * len(table)
        result[name] = {"steps": table, "total_with_kill_grace": total, "fits": total < per_call}
    return result


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "cycle":
        manifest = cycle(Path(args[0]), Path(args[1]), int(args[2]))
        print(f"{args[1]}: {manifest['samples']} samples in {len(manifest['shards'])} shards")
    elif command == "summary":
        result = summary(Path(args[0]), Path(args[1]))
        if args[2:] == ["print"]:
            print(digest(result))
    elif command == "limits":
        result = limits(args[0], args[1], int(args[2]), int(args[3]))
        print(json.dumps(result))
        for name in ("default", "active"):
            if not result[name]["fits"]:
                print(f"gpu_check: the {name} step limits with {args[2]} s kill grace each add up to "
                      f"{result[name]['total_with_kill_grace']} s, not under the {args[3]} s a call may run",
                      file=sys.stderr)
        return 0 if result["default"]["fits"] and result["active"]["fits"] else 1
    elif command == "check-out":
        problems = check_out(Path(args[0]))
        for p in problems:
            print(f"$OUT: {p}")
        return 1 if problems else 0
    else:
        raise SystemExit(f"gpu_check.py: unknown command {command!r} (cycle, summary, check-out, limits)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
