"""The fault-injection loop (issue 21): kill -9 at random points of checkpoint and shard writes, and random
byte flips in every file kind fastvid reads back (shard tars, indices, dataset.json, the shard journal,
state.json, tensors.safetensors, encoders.pt). Every trial must end in the right result or an error naming
the damage, never a silently different one. FASTVID_FAULT_TRIALS sets the trials per kind (the test's
default is small; benchmarks/RESULTS.md lists a longer run's outcomes)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from fastvid.checkpoint import CheckpointError, load_encoders, newest_checkpoint, save_checkpoint, save_encoders
from fastvid.data import DataConfig, LoaderError, ViewSpec, build_loader
from fastvid.models import Encoder
from fastvid.shard import ShardConfig, shard_dataset
from fastvid.shard.info import check, verify
from tests.clips import write_marked_clip

TRIALS = int(os.environ.get("FASTVID_FAULT_TRIALS", "2"))
OUTCOMES: dict[str, Counter] = {}  # kind -> outcome -> trials (printed at the end of the module's run)
SHARD = {"short_side": 32, "gop": 4, "workers": 1, "max_samples": 2, "progress": False}
RUN = "import sys; from fastvid.cli import main; sys.exit(main(sys.argv[1:]))"


def record(kind: str, outcome: str) -> None:
    OUTCOMES.setdefault(kind, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for kind, counts in sorted(OUTCOMES.items()):
        print(f"fault-injection {kind}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for i in range(5):
        write_marked_clip(root / "c" / f"v{i}.mp4", 4 + i, height=32, width=48, gop=4, audio_rate=16000 if i % 2 else None)
    return root


@pytest.fixture(scope="module")
def reference(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    shard_dataset(ShardConfig(src=str(src), out=str(out), **SHARD))
    return out


def flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return at


def members(shards: Path) -> dict[str, bytes]:
    """Every member the loader reads (verify on, its default), by "KEY.ext": what training would see."""
    loader = build_loader(DataConfig(shards=str(shards)), [ViewSpec("v")])
    source, table = loader.source(), loader.table
    exts = [e for e in table.offset if (table.offset[e] >= 0).any()]
    return {f"{table.key(p)}.{e}": source.read(int(p), e) for p in loader.positions for e in exts
            if table.offset[e][p] >= 0}


@pytest.mark.parametrize("kind", ["tar", "idx", "dataset.json"])
def test_byte_flips_in_shard_files_are_caught_or_harmless(reference: Path, tmp_path: Path, kind: str) -> None:
    expected = members(reference)
    rng = random.Random(f"flip-{kind}")
    for trial in range(TRIALS * 4):
        out = tmp_path / f"t{trial}"
        shutil.copytree(reference, out)
        target = {"tar": out / "train-000001.tar", "idx": out / "train-000001.idx",
                  "dataset.json": out / "dataset.json"}[kind]
        at = flip(target, rng)
        try:
            got = members(out)
        except (LoaderError, ValueError, OSError, KeyError) as err:
            assert "\n" not in str(err), err
            record(kind, f"error ({type(err).__name__})")
            continue
        if got == expected:
            record(kind, "same result")
        else:
            record(kind, "SILENT")
            pytest.fail(f"{kind}: a bit flipped at byte {at} changed what the loader reads, without a word")


@pytest.mark.parametrize("kind", ["state.json", "tensors.safetensors", "encoders.pt"])
def test_byte_flips_in_checkpoints_are_caught_or_harmless(tmp_path: Path, kind: str) -> None:
    rng = random.Random(f"flip-{kind}")
    encoder = Encoder("resnet9", in_channels=1)
    for trial in range(TRIALS * 4):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        if kind == "encoders.pt":
            path = save_encoders(folder / "encoders.pt", {"method": "gdt", "config": {"lr": 0.1}, "step": 3},
                                 {"audio": encoder.export()})
            expected, target = load_encoders(path), path
        else:
            path = save_checkpoint(folder / "step_00000003", {"progress": {"step": 3, "epoch": 1},
                                                             "w": torch.linspace(0, 1, 64)})
            expected, target = {"progress": {"step": 3, "epoch": 1}, "w": torch.linspace(0, 1, 64)}, path / kind
        at = flip(target, rng)
        try:
            got = load_encoders(path) if kind == "encoders.pt" else newest_checkpoint(folder)[1]
        except CheckpointError as err:
            assert "\n" not in str(err), err
            record(kind, "error (CheckpointError)")
            continue
        same = repr(got) == repr(expected) and all(
            torch.equal(a, b) for a, b in zip(_tensors(got), _tensors(expected)))
        record(kind, "same result" if same else "SILENT")
        assert same, f"{kind}: a bit flipped at byte {at} loaded as different state, without a word"


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def test_kill9_during_checkpoint_writes_leaves_the_newest_complete_one(tmp_path: Path) -> None:
    """A process saving checkpoints 1, 2, 3, ... is killed at a random moment: the newest checkpoint that
    loads holds exactly what was saved at its step."""
    script = ("import sys, torch; from fastvid.checkpoint import save_checkpoint\n"
              "for step in range(1, 10_000):\n"
              "    save_checkpoint(f'{sys.argv[1]}/step_{step:08d}', {'step': step, 'w': torch.full((50_000,), float(step))})\n"
              "    print(step, flush=True)\n")
    rng = random.Random("kill-checkpoint")
    for trial in range(TRIALS * 2):
        folder = tmp_path / f"t{trial}"
        proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"  # torch imported, one checkpoint written
        time.sleep(rng.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        path, state, skipped = newest_checkpoint(folder)
        step = int(path.name.removeprefix("step_"))
        assert state["step"] == step and torch.equal(state["w"], torch.full((50_000,), float(step)))
        record("kill -9 during checkpoint writes",
               f"newest complete loaded{', a partial one skipped' if skipped else ''}")


def test_kill9_during_shard_writes_then_a_rerun_gives_the_same_shards(src: Path, reference: Path,
                                                                     tmp_path: Path) -> None:
    """`fastvid shard` killed at a random moment, then run again: byte-identical shards, each sample once."""
    argv = ["shard", str(src), "OUT", "--short-side", "32", "--gop", "4", "--workers", "1", "--max-samples", "2",
            "--no-progress"]
    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", RUN, *[str(out) if a == "OUT" else a for a in argv]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    began = time.monotonic()
    assert start(tmp_path / "whole").wait() == 0
    whole = time.monotonic() - began  # on this machine, now: the kills fall inside such a run
    rng = random.Random("kill-shard")
    for trial in range(TRIALS):
        out = tmp_path / f"t{trial}"
        proc = start(out)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        os.kill(proc.pid, signal.SIGKILL)
        finished = proc.wait() == 0
        summary = shard_dataset(ShardConfig(src=str(src), out=str(out), **SHARD))
        tars = sorted(p.name for p in reference.glob("*.tar"))
        assert sorted(p.name for p in out.glob("*.tar")) == tars
        for name in tars:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
        assert check(out) == [] and verify(out) == [] and summary.samples == 5
        record("kill -9 during shard writes", "finished before the kill" if finished else
               f"resumed to identical shards ({summary.resumed_shards} kept)")


def test_byte_flips_in_the_shard_journal_are_caught_or_harmless(src: Path, reference: Path, tmp_path: Path) -> None:
    """A rerun of `fastvid shard` trusts OUT/.progress.jsonl: after a flipped bit there, it must end with the
    same shards and each sample once, or stop with one line."""
    rng = random.Random("flip-journal")
    for trial in range(TRIALS * 4):
        out = tmp_path / f"t{trial}"
        shutil.copytree(reference, out)
        at = flip(out / ".progress.jsonl", rng)
        try:
            summary = shard_dataset(ShardConfig(src=str(src), out=str(out), **SHARD))
        except (ValueError, OSError) as err:
            assert "\n" not in str(err), err
            record(".progress.jsonl", f"error ({type(err).__name__})")
            continue
        problems = check(out) + verify(out)
        same = problems == [] and summary.samples == 5 and all(
            (out / p.name).read_bytes() == p.read_bytes() for p in reference.glob("*.tar"))
        record(".progress.jsonl", ("shards redone to the same bytes" if summary.redone else "same result")
               if same else "SILENT")
        assert same, f"a bit flipped at byte {at} of the journal: {problems or summary.format()}"
