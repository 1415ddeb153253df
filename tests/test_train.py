"""The trainer end to end on the CPU: configs load strictly, each method runs a few steps on the embedded
sample dataset (real footage), checkpoints resume to the same next-step loss, NaN stops the run, and two
processes train through `accelerate launch`. The command line's side (errors, folders, signals, the demo) is
in tests/test_train_cli.py."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvid.checkpoint import load_encoders
from fastvid.config import ConfigError
from fastvid.methods.base import OptimConfig
from fastvid.models import load_backbone
from fastvid.plot import read_metrics
from fastvid.run_config import DEMO, DEMO_COMMON, load_config
from fastvid.train import accelerate_precision, latest_checkpoint, lr_factor, train
from tests.train_helpers import CPU, TINY, tiny

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_packaged_config_loads(path):
    cfg = load_config(path.stem, path)
    assert cfg.method == path.stem and cfg.demo == []


def test_paper_defaults():
    cl = load_config("cross_and_learn")
    assert (cl.optim.name, cl.optim.lr, cl.optim.momentum, cl.optim.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
    assert (cl.optim.milestones, cl.train.steps, cl.data.batch_size) == ([50000], 65000, 60)
    assert lr_factor(49_999, cl.optim, 65_000) == 1.0 and lr_factor(50_000, cl.optim, 65_000) == pytest.approx(0.1)
    simclr = load_config("video_simclr")
    assert (simclr.model.head_dims[-1], simclr.data.batch_size, simclr.optim.schedule) == (256, 128, "cosine")


@pytest.mark.parametrize("method", sorted(DEMO))
def test_the_demo_cuts_the_paper_settings_only_on_the_sample(method):
    paper = load_config(method)
    demo = load_config(method, None, ["train.max_steps=3"], demo=True)
    assert demo.data.shards == "sample" and demo.train.max_steps == 3 and demo.train.epochs == 0
    assert demo.demo and all(o in demo.demo for o in DEMO[method])
    # The batch fits the sample (53 clips, 13 with sound); SGD's learning rate follows it unless the demo sets
    # one (videoMoCo's Adam), Adam's stays.
    assert demo.data.batch_size <= (13 if method == "gdt" else 53)
    set_lr = [float(o.split("=")[1]) for o in DEMO[method] if o.startswith("optim.lr=")]
    lr = set_lr[0] if set_lr else paper.optim.lr
    follows = demo.optim.name == "sgd" and not set_lr
    scale = (lambda batch: batch / paper.data.batch_size) if follows else (lambda batch: 1.0)
    assert demo.optim.lr == pytest.approx(lr * scale(demo.data.batch_size), rel=1e-2)
    # The user's values win over the demo's; with --data the paper's settings stand.
    small = load_config(method, None, ["data.batch_size=2"], demo=True)
    assert small.data.batch_size == 2
    assert small.optim.lr == pytest.approx(lr * scale(2), rel=1e-2)
    assert load_config(method, None, ["data.shards=/data/x"], demo=True) == load_config(method, None,
                                                                                       ["data.shards=/data/x"])
    assert all(o.split("=")[0] != "train.max_steps" for o in DEMO_COMMON + DEMO[method])


def test_cosine_schedule_values():
    cfg = OptimConfig(schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert [lr_factor(s, cfg, 12) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, cfg, 12) == 1.0
    assert lr_factor(7, cfg, 12) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(12, cfg, 12) == pytest.approx(0.1)


def test_bad_config_names_file_or_override_and_the_closest_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^override optim.lrr=0.1: unknown key optim.lrr; did you mean optim.lr\?$"):
        load_config("video_simclr", None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"^override model.temperature=hot: model.temperature: expected float"):
        load_config("video_simclr", None, ["model.temperature=hot"])
    with pytest.raises(ConfigError, match=r"^override trian.steps=5: unknown key trian; did you mean train\?$"):
        load_config("video_simclr", None, ["trian.steps=5"])
    with pytest.raises(ConfigError, match=r"override train.steps=5: train: set exactly one of steps \(5\) and "
                                          r"epochs \(100\)"):
        load_config("video_simclr", None, ["train.steps=5"])
    with pytest.raises(ConfigError, match=r"unknown method 'simclr'; did you mean video_simclr\?"):
        load_config("simclr")
    bad = tmp_path / "x.yaml"
    bad.write_text("method: video_moco\nmodel: {temprature: 0.1}\n")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown key model.temprature; did you mean model.temperature\?"):
        load_config("video_moco", bad)
    bad.write_text("method: video_moco\nmodel: {}\nfoo: 1\n")
    with pytest.raises(ConfigError, match="x.yaml: unknown top-level key foo"):
        load_config("video_moco", bad)
    bad.write_text("model: {temperature: [0.1\n")
    with pytest.raises(ConfigError, match=r"x.yaml: not valid YAML: .* at line 2"):
        load_config("video_moco", bad)


@pytest.mark.parametrize("method", sorted(TINY))
def test_smoke_run_writes_checkpoint_and_torchvision_encoders(method, shards, tmp_path):
    last = train(tiny(method, shards, tmp_path, "train.max_steps=2"))
    assert last and all(math.isfinite(v) for v in last.values())
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    export = load_encoders(tmp_path / "encoders.pt")
    assert export["method"] == method and export["step"] == 2
    for entry in export["encoders"].values():
        net = load_backbone(entry, num_classes=5)  # only the classifier left to train
        assert sum(p.numel() for p in net.parameters()) > 0


def test_resume_gives_the_uninterrupted_next_step_loss(shards, tmp_path):
    """video_moco carries the most state: queue, momentum encoder, loader position, RNG."""
    whole = train(tiny("video_moco", shards, tmp_path / "whole", "train.max_steps=2"))
    train(tiny("video_moco", shards, tmp_path / "split", "train.max_steps=1"))
    resumed = train(load_config("video_moco", tmp_path / "split" / "config.yaml", ["train.max_steps=2"]),
                    resume=True)
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-6)
    ends = [load_encoders(tmp_path / run / "encoders.pt") for run in ("whole", "split")]
    assert ends[0]["step"] == ends[1]["step"] == 2
    for name, value in ends[0]["encoders"]["video"]["state_dict"].items():
        torch.testing.assert_close(ends[1]["encoders"]["video"]["state_dict"][name], value, msg=name)


def test_logged_losses_are_means_since_the_last_log_and_accuracy_is_the_logged_steps(shards, tmp_path,
                                                                                       monkeypatch):
    from fastvid.methods.video_simclr import VideoSimCLR

    calls = []
    forward = VideoSimCLR.forward

    def spy(self, batch):
        out = forward(self, batch)
        calls.append((self.want_metrics, "acc" in out, out["loss"].item(), out["acc"].item() if "acc" in out else -1.0))
        return out

    monkeypatch.setattr(VideoSimCLR, "forward", spy)
    last = train(tiny("video_simclr", shards, tmp_path, "train.max_steps=3", "train.log_every=2"))
    # steps 2 (log_every) and 3 (the last) are logged, and only they compute the pretext accuracy
    assert [c[:2] for c in calls] == [(False, False), (True, True), (True, True)]
    losses = [c[2] for c in calls]
    assert losses[0] != pytest.approx(losses[1])  # so a mean differs from the logged step's own loss
    logged = read_metrics(tmp_path)
    assert logged["loss/loss"][0] == [2, 3]
    assert logged["loss/loss"][1] == pytest.approx([(losses[0] + losses[1]) / 2, losses[2]], rel=1e-6)
    assert logged["pretext/acc"][1] == pytest.approx([calls[1][3], calls[2][3]])
    assert last["loss"] == pytest.approx(losses[2], rel=1e-6) and last["acc"] == pytest.approx(calls[2][3])


def test_checkpoints_by_wall_clock_time(shards, tmp_path):
    # A tiny interval makes every step due; the step count alone would checkpoint only at the end.
    train(tiny("video_simclr", shards, tmp_path, "train.max_steps=3", "train.checkpoint_every=1000",
               "train.checkpoint_minutes=1e-9", "train.keep_checkpoints=5"))
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step_00000001", "step_00000002", "step_00000003"]


def test_max_minutes_ends_the_run_at_the_first_step_past_the_budget(shards, tmp_path):
    # A budget spent before the first step ends: that step is the last, logged and checkpointed.
    last = train(tiny("video_simclr", shards, tmp_path, "train.max_minutes=1e-9", "train.log_every=1000"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]
    assert "loss" in last
    with pytest.raises(ConfigError, match=r"^override train.max_minutes=0: train.max_minutes: must be > 0, got 0"):
        load_config("video_simclr", None, ["train.max_minutes=0"])


def test_accelerate_launch_two_cpu_processes(shards, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", "-m", "fastvid.train",
           "--method", "video_moco", "--data", shards, "--output", str(tmp_path), "--max-steps", "2",
           *CPU, *TINY["video_moco"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert latest_checkpoint(tmp_path).name == "step_00000002"


def test_cpu_runs_train_in_float32_because_bf16_conv3d_gradients_break():
    """The NaN of `--device cpu` runs under the configs' bf16: oneDNN's bf16 Conv3d weight gradient is garbage
    at random on this shape (a 3D ResNet's layer3 at 64x64 crops). The trainer's CPU autocast must not use it."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(4, 128, 2, 4, 4)
    conv(x).square().mean().backward()
    want = conv.weight.grad.clone()
    precision = accelerate_precision("bf16", "cpu")
    for _ in range(5):  # the bug hits about half the calls
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = conv(x)
        y.float().square().mean().backward()
        torch.testing.assert_close(conv.weight.grad, want, rtol=0.05, atol=1e-4)
    assert accelerate_precision("bf16", "cuda") == "bf16" and accelerate_precision("fp32", "cuda") == "no"
