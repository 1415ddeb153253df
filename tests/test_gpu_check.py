"""benchmarks/gpu_check.sh rehearsed on the CPU: what it leaves in $OUT must come back whole from the device
tool (at most 8 files, 16 MiB each, 64 MiB in all, at most two folders down, names of letters, digits, '.',
'_', '-'; /work/.library/device/README.md) in every path: a full dry run with one step forced past its
limit, a payload with a part missing or damaged, limits that do not fit in one call."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_check import check_out, dmon_table, pytest_result, train_result

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PER_CALL = 600  # seconds a device call may run


def run(args: list[str], out: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """The script with this environment's python first on PATH (it calls `python3`)."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": path, "OUT": str(out), **env})


def returned(out: Path) -> dict[str, int]:
    """{relative path: size} of $OUT, asserting the device tool's limits on it (checked here independently
    of the script's own check)."""
    files = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert len(files) <= 8, files
    assert all(size <= 16 * 2 ** 20 for size in files.values()), files
    assert sum(files.values()) <= 64 * 2 ** 20
    for name in files:
        assert len(Path(name).parts) <= 3, name  # $OUT/a/b/file at most
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in Path(name).parts), name
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    return files


@pytest.mark.slow
def test_dry_run_returns_every_result_and_survives_a_step_out_of_time(tmp_path):
    """The whole procedure with CPU stand-ins; the training step is given 3 s, far less than it needs, so it
    is stopped by its timeout, and the steps after it still run and report."""
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = run(["dry-run"], out, timeout=600, GPU_CHECK_LIMITS="train=3")
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # 1: a step failed (train)
    assert set(returned(out)) == {"summary.json", "loader.png", "log_tail.txt"}
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["setup", "loader", "train", "pytest"]
    assert steps["setup"]["exit"] == steps["loader"]["exit"] == steps["pytest"]["exit"] == 0, summary["steps"]
    assert steps["train"]["timed_out"] and steps["train"]["exit"] in (124, 137)
    assert steps["train"]["limit"] == 3  # and it ended within its limit, the kill grace and some slack:
    assert steps["train"]["seconds"] <= 3 + summary["limits"]["kill_after"] + 5
    received = summary["parts"]
    assert received["parts"] >= 2 and received["ok"] == received["parts"] and received["missing"] == ""
    # The loader rows (1 worker each) and the plot drawn from them.
    rates = summary["loader"]["clips_per_s"]
    assert set(rates) == {"fastvid[cpu]", "pyav+DataLoader"} and all(r["1"] > 0 for r in rates.values())
    assert summary["loader"]["report"]["args"]["row_seconds"] == 3
    assert (out / "loader.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # pytest -m gpu on the CPU: collected and skipped, reported from its JUnit file.
    assert int(summary["pytest"]["tests"]) == int(summary["pytest"]["skipped"]) > 0
    # The GPU run's limits (not this run's) fit in one call with a kill grace per step.
    limits = summary["limits"]
    assert limits["per_call"] == PER_CALL and limits["active"]["steps"]["train"] == 3
    default = limits["default"]
    assert set(default["steps"]) == {"setup", "loader", "train", "pytest"}
    assert sum(default["steps"].values()) + 4 * limits["kill_after"] == default["total_with_kill_grace"] < PER_CALL
    assert "== train: exit 124" in (out / "log_tail.txt").read_text() or steps["train"]["exit"] == 137
    print(f"dry run: {elapsed:.0f} s")


def parts(folder: Path, contents: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    lines = []
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))


def test_missing_or_damaged_parts_stop_the_check_before_anything_runs(tmp_path):
    carry, landing, out = tmp_path / "carry", tmp_path / "landing", tmp_path / "out"
    parts(carry, {"part00": b"first", "part01": b"second", "part02": b"third"})
    (carry / "part01").write_bytes(b"sec0nd")  # damaged in transit
    (carry / "part02").unlink()  # never sent
    t0 = time.monotonic()
    done = run([], out, timeout=120, GPU_CHECK_CARRY=str(carry), GPU_CHECK_LANDING=str(landing))
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - t0 < 60  # seconds, not the steps' minutes
    assert "1 of 3 parts here" in done.stdout
    assert set(returned(out)) == {"summary.json", "log_tail.txt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parts"] == {"parts": 3, "ok": 1, "missing": "part02", "damaged": "part01"}
    assert summary["steps"] == []


def test_receive_tells_parts_to_come_from_a_machine_given_back(tmp_path):
    """A part call that finds a part before its own missing was sent to a fresh machine: it fails."""
    carry, landing = tmp_path / "carry", tmp_path / "landing"
    parts(carry, {"part00": b"a", "part01": b"b", "part02": b"c"})
    env = {"GPU_CHECK_CARRY": str(carry), "GPU_CHECK_LANDING": str(landing)}
    (carry / "part01").unlink(), (carry / "part02").unlink()
    first = run(["receive"], tmp_path / "o", timeout=60, **env)
    assert first.returncode == 0 and "1 of 3 parts here" in first.stdout
    (landing / "part00").unlink()  # the machine was given back: its /tmp is gone
    (carry / "part00").unlink()
    (carry / "part01").write_bytes(b"b")
    second = run(["receive"], tmp_path / "o", timeout=60, **env)
    assert second.returncode == 1 and "start again at part 00" in second.stdout


def test_limits_over_one_call_are_refused(tmp_path):
    out = tmp_path / "out"
    done = run([], out, timeout=60, GPU_CHECK_LIMITS="loader=600", GPU_CHECK_LANDING=str(tmp_path / "landing"))
    assert done.returncode == 4
    assert "active step limits" in done.stderr and f"not under the {PER_CALL} s" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limits"]["active"]["fits"] is False and summary["limits"]["default"]["fits"] is True
    assert summary["steps"] == []
    misspelt = run([], out, timeout=60, GPU_CHECK_LIMITS="trian=3", GPU_CHECK_LANDING=str(tmp_path / "landing"))
    assert misspelt.returncode == 4 and "GPU_CHECK_LIMITS: unknown step ['trian']" in misspelt.stderr


def test_check_out_names_each_problem(tmp_path):
    for k in range(9):
        (tmp_path / f"f{k}.txt").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "ok.txt").write_text("x")
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    problems = check_out(tmp_path)
    assert any(p.startswith("a/b/c/deep.txt: more than 2 folders down") for p in problems)
    assert any(p.startswith("bad name.txt: a name") for p in problems)
    assert any(p.startswith("12 files, over 8") for p in problems)
    assert not any("ok.txt" in p and "folders" in p for p in problems)
    assert check_out(tmp_path / "a" / "b" / "c") == []


def test_dmon_table_reads_nvdec_utilisation():
    text = """#Time        gpu     sm    mem    enc    dec    jpg    ofa
#HH:MM:SS    Idx      %      %      %      %      %      %
 22:10:01      0      5      1      0     40      0      0
 22:10:02      0     15      3      0     60      -      0
 22:10:03      0     10      2      0     80      0      0
"""
    table = dmon_table(text)
    assert table["samples"] == 3
    assert table["dec"] == {"mean": 60.0, "max": 80.0}
    assert table["sm"] == {"mean": 10.0, "max": 15.0}
    assert table["jpg"] == {"mean": 0.0, "max": 0.0}  # "-" skipped
    assert dmon_table("Failed to initialize NVML\n") == {"samples": 0, "note": "Failed to initialize NVML"}


def test_train_and_pytest_results_parse_their_reports(tmp_path):
    log = ("  data     /tmp/c (split train): 6400 clips, 100 batches per epoch\n"
           "step 10/100: loss 5.1 nt_xent 5.1 acc 0.02, 812.5 clips/s, data wait 3%\n"
           "step 20/100: loss 4.9 nt_xent 4.9, 1490.0 clips/s, data wait 12%\n")
    assert train_result(log) == {"clips": 6400, "batches_per_epoch": 100, "steps": [
        {"step": 10, "clips_per_s": 812.5, "data_wait_percent": 3},
        {"step": 20, "clips_per_s": 1490.0, "data_wait_percent": 12}]}
    xml = tmp_path / "p.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" '
                   'tests="5" time="3.2"><testcase classname="tests.data.test_loader" name="test_x[cuda]" time="1">'
                   '<failure message="AssertionError: 3 != 4">trace</failure></testcase></testsuite></testsuites>')
    assert pytest_result(xml) == {"tests": "5", "failures": "1", "errors": "0", "skipped": "2", "time": "3.2",
                                  "failed": [{"test": "tests.data.test_loader::test_x[cuda]",
                                              "why": "AssertionError: 3 != 4"}]}
