"""Worker processes that survive bad videos: order kept, crashes and hangs become failures, nothing hangs."""
from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import fastvid.shard.run as run
from fastvid.cli import main
from fastvid.config import ConfigError
from fastvid.shard import ShardConfig, shard_dataset
from fastvid.shard.pool import exit_reason, run_isolated
from tests.clips import write_marked_clip


def slow_square(x: int) -> int:
    time.sleep(0.05 * (x % 3))  # later items often finish first
    return x * x


def crash() -> None:
    """SIGSEGV this worker without the Python stack dump that pytest's faulthandler would print for it: the
    crash is the test's point, not a failure to report."""
    faulthandler.disable()
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_on_3_hang_on_5(x: int) -> int:
    if x == 3:
        crash()
    if x == 5:
        time.sleep(600)
    return x * x


def lost(x: int, kind: str, reason: str) -> tuple:
    return (x, kind, reason)


def test_results_come_in_input_order() -> None:
    assert list(run_isolated(slow_square, list(range(12)), workers=3, timeout=None, lost=lost)) == [
        x * x for x in range(12)]


def test_a_crash_or_a_hang_costs_only_its_item() -> None:
    start = time.monotonic()
    results = list(run_isolated(crash_on_3_hang_on_5, list(range(8)), workers=2, timeout=2.0, lost=lost))
    assert time.monotonic() - start < 30
    assert [r for i, r in enumerate(results) if i not in (3, 5)] == [x * x for x in range(8) if x not in (3, 5)]
    assert results[3][:2] == (3, "crashed") and "SIGSEGV" in results[3][2]
    assert results[5][:2] == (5, "timeout") and "2 s" in results[5][2]


def test_exit_reasons() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(3) == "exit code 3"


def test_shard_records_a_crashing_video_and_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        write_marked_clip(tmp_path / "src" / "c" / f"{name}.mp4", 6, height=48, width=64)
    real = run.process

    def crash_on_b(source, cfg, label_index):  # the workers are forked, so they see this patch
        if source.path.name == "b.mp4":
            crash()
        return real(source, cfg, label_index)

    monkeypatch.setattr(run, "process", crash_on_b)
    summary = shard_dataset(ShardConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), short_side=32,
                                        workers=2, progress=False))
    assert summary.samples == 2 and summary.rejected == {"crashed": 1}
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [(e["path"], e["kind"], e["kept"]) for e in errors] == [("c/b.mp4", "crashed", False)]
    assert "SIGSEGV" in errors[0]["reason"]


def test_timeout_option_is_checked_and_reaches_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        ShardConfig(src=str(tmp_path), out=str(tmp_path / "out"), timeout=-1)
    write_marked_clip(tmp_path / "src" / "c" / "a.mp4", 4, height=48, width=64)
    assert main(["shard", str(tmp_path / "src"), str(tmp_path / "out"), "--short-side", "32", "--timeout", "0",
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["options"]["timeout"] == 0


def test_ctrl_c_stops_the_run_and_its_workers_with_one_line(tmp_path: Path) -> None:
    for i in range(8):
        write_marked_clip(tmp_path / "src" / "c" / f"v{i}.mp4", 40, height=96, width=128)
    proc = subprocess.Popen([sys.executable, "-m", "fastvid.cli", "shard", str(tmp_path / "src"), str(tmp_path / "out"),
                             "--flow", "farneback", "--workers", "2", "--no-progress"],
                            cwd=Path(__file__).parents[2], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(workers := psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, "the run ended before the interrupt"
    assert proc.stderr.read().strip() == "fastvid shard: interrupted (run the same command again to resume)"
    assert psutil.wait_procs(workers, timeout=10)[1] == []
