"""`fastvid train` as a user meets it: errors a user can cause print one line and exit non-zero, a failed run
leaves an earlier run's folder byte-identical, SIGTERM checkpoints a run that --resume continues with the
uninterrupted run's next-step loss, and the demo (no --data) ends with a command that evaluates its output."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvid.cli import main
from fastvid.run_config import run_config
from fastvid.train import latest_checkpoint, train
from tests.train_helpers import CPU, TINY, tiny

ROOT = Path(__file__).parents[1]


def fastvid_train(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300
                  ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastvid.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


USER_ERRORS = {  # name: (arguments, what the one line says)
    "missing data": (["--method", "video_simclr", "--data", "/nonexistent"], r"/nonexistent: no dataset\.json"),
    "typo in an override": (["--method", "video_simclr", "optim.lrr=0.1"],
                            r"override optim\.lrr=0\.1: unknown key optim\.lrr; did you mean optim\.lr\?"),
    "wrong type": (["--method", "video_simclr", "optim.lr=fast"],
                   r"override optim\.lr=fast: optim\.lr: expected float"),
    "not key=value": (["--method", "video_simclr", "lr"], r"override 'lr' is not of the form key=value"),
    "typo in the method": (["--method", "simclr"], r"unknown method 'simclr'; did you mean video_simclr\?"),
    "typo in an option": (["--method", "gdt", "--outptu", "x"],
                          r"unrecognized arguments: --outptu; did you mean --output\?"),
    "no config file": (["--method", "gdt", "--config", "/nonexistent.yaml"],
                       r"/nonexistent\.yaml: no such config file"),
    "resume of nothing": (["--method", "gdt", "--resume", "--output", "none"], r"--resume: none holds no run"),
    "broken dataset.json": (["--method", "gdt", "--data", "{broken}"], r"dataset\.json: not valid JSON"),
    "a member missing": (["--method", "gdt", "--data", "{shards}"], r"has no \.flac member"),
    "batch bigger than the data": (["--method", "video_simclr", "--data", "{shards}", "--batch-size", "1000"],
                                   r"53 samples per process is less than one batch of data\.batch_size=1000"),
    "no GPU": (["--method", "video_simclr", "--data", "{shards}", "--device", "cuda"], r"torch sees no CUDA device"),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_a_user_error_is_one_line_and_a_nonzero_exit(case, shards, tmp_path):
    if case == "no GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset.json").write_text("{not json")
    args, message = USER_ERRORS[case]
    done = fastvid_train(*(a.format(broken=tmp_path / "broken", shards=shards) for a in args), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("fastvid") and " error: " in done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing written


def test_a_method_config_check_names_the_override(tmp_path, capsys):
    argv = ["train", "--method", "video_moco", "--output", str(tmp_path / "run"), "model.bn_splits=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "override model.bn_splits=0: model.bn_splits: must be >= 1, got 0" in err, err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    done = fastvid_train("--method", "video_simclr", "--data", "/nonexistent", "--debug", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_a_failed_run_leaves_an_earlier_run_byte_identical(shards, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny("video_simclr", shards, out, "train.max_steps=1"))
    before = snapshot(out)
    assert "config.yaml" in before and "encoders.pt" in before
    base = ["train", "--method", "video_simclr", "--output", str(out)]
    failures = {
        "a new run into it": ([*base, "--data", shards], r"holds a run \(step_00000001\): continue it with --resume"),
        "missing data": ([*base, "--data", "/nonexistent", "--overwrite"], r"/nonexistent: no dataset\.json"),
        "resumed, missing data": ([*base, "--resume", "--data", "/nonexistent"], r"/nonexistent: no dataset\.json"),
        "resumed, typo": ([*base, "--resume", "optim.lrr=1"], r"did you mean optim\.lr\?"),
        "resumed, batch too big": ([*base, "--resume", "--batch-size", "1000"], r"less than one batch"),
        "overwrite, batch too big": ([*base, "--overwrite", "--data", shards, "--batch-size", "1000"],
                                     r"less than one batch"),
        "resume and overwrite": ([*base, "--resume", "--overwrite"], r"pass one of them"),
    }
    for name, (argv, message) in failures.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), (name, err)
        assert snapshot(out) == before, name
    # --overwrite with good settings does start over.
    assert main([*base, "--overwrite", "--data", shards, "--max-steps", "1", *CPU, *TINY["video_simclr"],
                 "train.seed=1"]) == 0
    assert snapshot(out)["encoders.pt"] != before["encoders.pt"]


def test_resume_with_every_checkpoint_damaged_fails_in_one_line_and_leaves_config_yaml(shards, tmp_path, capsys):
    import yaml

    from fastvid.checkpoint import STATE, save_checkpoint
    from fastvid.config import to_dict

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(tiny("video_simclr", shards, out)), sort_keys=False))
    ckpt = save_checkpoint(out / "checkpoints" / "step_00000001", {"step": 1})
    (ckpt / STATE).write_text("{")  # damaged on disk
    before = snapshot(out)
    assert main(["train", "--method", "video_simclr", "--output", str(out), "--resume", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(r"no complete checkpoint under .*step_00000001/state\.json: not JSON", err), err
    assert snapshot(out) == before  # config.yaml (and everything else) untouched


def test_sigterm_checkpoints_and_resume_gives_the_uninterrupted_next_step_loss(shards, tmp_path):
    split = tmp_path / "split"
    proc = subprocess.Popen([sys.executable, "-m", "fastvid.train", "--method", "video_moco", "--data", shards,
                             "--output", str(split), "--max-steps", "50", *CPU, *TINY["video_moco"],
                             "train.checkpoint_minutes=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in proc.stdout:  # not a terminal: a plain line per logged step
        if line.startswith("step 1/50"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    ckpt = latest_checkpoint(split)
    step = int(ckpt.name.removeprefix("step_"))
    assert 1 <= step < 50
    resume = f"fastvid train --method video_moco --output {shlex.quote(str(split))} --resume"
    assert err.strip().splitlines()[-1] == \
        f"fastvid train: stopped by SIGTERM at step {step}: checkpoint {ckpt}; continue with: {resume}"
    whole = train(tiny("video_moco", shards, tmp_path / "whole", f"train.max_steps={step + 1}"))
    resumed = train(run_config("video_moco", None, [f"output={split}", f"train.max_steps={step + 1}"], resume=True),
                    resume=True)
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-6)


# The sample's 53 clips (13 with sound) less the held-out ends of its videos and the clips overlapping them.
DEMO_RUNS = {  # method: (shortening overrides, clips in the summary, batch override it shows, --size printed)
    "gdt": (["model.views.frames=4", "model.views.size=32"], "7 clips", "data.batch_size=4", "32"),
    "cross_and_learn": ([], "36 clips", "data.batch_size=8", "80"),  # CaffeNet: the probe's 64 px is too small
}


@pytest.mark.parametrize("method", sorted(DEMO_RUNS))
def test_the_demo_runs_without_data_and_ends_with_a_working_eval_command(method, sample_cache, tmp_path,
                                                                           monkeypatch):
    """A demo, shortened to one step: no --data, the sample (GDT: its clips with sound), a checkpoint,
    encoders.pt, and last the eval command, which then runs (on fewer clips)."""
    overrides, clips, batch, size = DEMO_RUNS[method]
    done = fastvid_train("--method", method, "--max-steps", "1", *overrides, cwd=tmp_path,
                         env={"FASTVID_CACHE": str(sample_cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    summary = "\n".join(lines[:8])
    assert f"fastvid train: {method}" in summary and f"runs/{method}" in summary and clips in summary
    assert "demo     no --data" in summary and batch in summary
    if not torch.cuda.is_available():
        assert "warning: no GPU is used" in summary
    assert latest_checkpoint(tmp_path / "runs" / method).name == "step_00000001"
    assert (tmp_path / "runs" / method / "encoders.pt").is_file()
    assert lines[-1] == f"evaluate: fastvid eval --checkpoint runs/{method}/encoders.pt --probe motion --size {size}"
    monkeypatch.chdir(tmp_path)
    assert main([*shlex.split(lines[-1].removeprefix("evaluate: fastvid ")), "--clips-per-video", "4"]) == 0
    report = json.loads((tmp_path / "runs" / method / "eval" / "report.json").read_text())
    assert set(report["results"]) >= {"pretrained", "random"}
