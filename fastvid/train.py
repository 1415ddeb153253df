"""Train one of the five methods: `fastvid train --method video_simclr`, the same as
`python -m fastvid.train --method video_simclr`, or on several GPUs `accelerate launch -m fastvid.train ...`.

The run's settings (`fastvid.run_config`) are one YAML file (default: the packaged
`fastvid/configs/<method>.yaml`, the paper's defaults) plus `key=value` overrides of any field
(`model.temperature=0.1 train.max_steps=20`).

Without --data (`data.shards: sample`) a run is a demo: the embedded sample dataset (real footage, sharded on
first use) with the paper's model and loss, but the batch, clip size and length cut (`run_config.DEMO`) so
that every method ends in a few minutes on a 2-core CPU; config.yaml lists those changes under `demo`. With
--data the paper's settings stand.

Everything a user can get wrong (config, overrides, data, device, output folder) is checked before anything is
written; a new run in a folder that holds another run needs --resume or --overwrite. Outputs under --output:
config.yaml (the resolved settings), checkpoints/step_XXXXXXXX/ (`fastvid.checkpoint`: safetensors + JSON,
nothing pickled; model with its queue/cluster buffers, optimiser, scheduler, step, loader position, RNG),
tb/ (TensorBoard), metrics.jsonl and curves.png (`fastvid.plot`) and encoders.pt (safetensors: {"method",
"config", "step", "val", "encoders": Method.encoder_state_dicts()}). Every `train.val_every` steps, before the
first and at the end, held-out clips are scored (`fastvid.validation`). A checkpoint is written as
step_X.partial and renamed when complete; --resume takes the newest that loads and names the ones it skips.
Checkpoints are written every `train.checkpoint_every` steps, every `train.checkpoint_minutes` of wall-clock
time, at the end, and on SIGINT/SIGTERM: the run finishes its step, checkpoints and raises `Interrupted` (exit
128 + signal number).
"""
from __future__ import annotations

import json
import math
import runpy
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from fastvid import checkpoint
from fastvid.checkpoint import PARTIAL, newest_checkpoint, restore_run_state, run_state, save_encoders
from fastvid.config import to_dict
from fastvid.data.loader import VideoLoader, build_loader
from fastvid.data.sample import holdout
from fastvid.errors import Interrupted, NonFiniteLossError, RunError
from fastvid.lock import FolderLock, lock_folder
from fastvid.methods import Method, OptimConfig, get_method
from fastvid.plot import CURVES, METRICS, plot_run
from fastvid.run_config import RunConfig
from fastvid.validation import Validation, build_validation, validate


def build_optimizer(method: Method, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, total: int) -> float:
    """lr(step) / lr: linear warm-up, then constant, step decay at the milestones, or cosine decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def accelerate_precision(mixed_precision: str, device_type: str) -> str:
    """Accelerate's mixed_precision for train.mixed_precision on `device_type`: bf16/fp16 on CUDA only.

    On the CPU the run stays float32: oneDNN's bfloat16 Conv3d weight gradient (torch 2.14.1) returns NaN or
    ~1e20 garbage at random for some small shapes (a (4, 128, 2, 4, 4) input fails about half the time; it
    was a 3D ResNet's layer3 at 64x64 crops), and the CPU has no bf16 speed to gain for it.
    """
    if device_type == "cpu" or mixed_precision == "fp32":
        return "no"
    return mixed_precision


@dataclass
class Progress:
    """Optimiser steps taken; checkpointed with the run."""

    step: int = 0
    val: dict[str, float] = field(default_factory=dict)  # the latest validation's values

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "val": dict(self.val)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.val = dict(state.get("val", {}))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a/b": scalar} for TensorBoard's hparams (lists become strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint folder by name (one whose save was interrupted ends in .partial)."""
    found = sorted(p for p in (Path(output) / "checkpoints").glob("step_*") if not p.name.endswith(PARTIAL))
    return found[-1] if found else None


RUN_FILES = ("config.yaml", "checkpoints", "tb", "encoders.pt", METRICS, CURVES)  # what a run writes into its folder


def check_output(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Raise RunError unless `out_dir` can take this run: a new run needs a folder without another run
    (or `overwrite`), a resumed one a checkpoint."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--output {out_dir}: is a file, not a folder")
    if resume:
        if overwrite:
            raise RunError("--resume continues the run in --output and --overwrite deletes it: pass one of them")
        if latest_checkpoint(out_dir) is None:
            raise RunError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}; start the run anew with "
                           f"--overwrite instead of --resume")
        return
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found and not overwrite:
        ckpt = latest_checkpoint(out_dir)
        held = f"a run ({ckpt.name})" if ckpt else f"a run's {found[0]}"
        raise RunError(f"--output {out_dir} holds {held}: continue it with --resume, start over with --overwrite "
                       f"(deletes it), or pick another --output")


def device_line(accelerator: Accelerator) -> str:
    world = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{torch.cuda.get_device_name(accelerator.device)} x {world} process(es)"
    return f"cpu x {world} process(es); warning: no GPU is used, so training is slow (fine for the demo)"


class StopSignals:
    """SIGINT/SIGTERM during training are remembered (`signum`), so that the loop checkpoints after the current
    step and stops; a second one interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@dataclass
class Run:
    """Everything a run holds once set up; the loop and its helpers read it."""

    cfg: RunConfig
    out_dir: Path
    accelerator: Accelerator
    method: Method  # unwrapped: its hooks, encoders and state
    model: torch.nn.Module  # what Accelerate prepared: the forward of a training step
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: VideoLoader
    feature_loader: VideoLoader | None
    validation: Validation | None
    progress: Progress
    total_steps: int  # the schedule's length
    stop: int  # the step this invocation ends at (train.max_steps)
    lock: FolderLock | None = None  # the main process's lock on out_dir, held while this object lives

    def objects(self) -> dict[str, Any]:
        """What is checkpointed beside the weights."""
        return {"scheduler": self.scheduler, "loader": self.loader, "progress": self.progress}


def make_accelerator(cfg: RunConfig, out_dir: Path) -> Accelerator:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: torch sees no CUDA device; use --device auto or --device cpu")
    cpu = cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision=accelerate_precision(cfg.train.mixed_precision, "cpu" if cpu else "cuda"),
                       gradient_accumulation_steps=cfg.train.grad_accum, log_with="tensorboard",
                       project_dir=str(out_dir), dynamo_backend="inductor" if cfg.train.compile else "no")


def build_data(cfg: RunConfig, method: Method, accelerator: Accelerator
               ) -> tuple[RunConfig, VideoLoader, VideoLoader | None, Validation | None]:
    """The training loader, the feature-pass loader (methods that need one) and the validation batches; the
    config comes back with the embedded sample's path in place of `sample`."""
    if cfg.data.shards == "sample":  # the embedded dataset, built once (into the cache) by the first process
        from fastvid.data.sample import sample_dataset

        with accelerator.main_process_first():
            sample = sample_dataset(audio=any(v.modality == "audio" for v in method.views()))
        cfg = replace(cfg, data=replace(cfg.data, shards=str(sample)))
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    loader = build_loader(cfg.data, method.views(), rank=rank, world_size=world, device=device)
    held_out = None  # the demo's validation clips: the end of each source clip, and no clip overlapping them
    if cfg.data.val_split == "holdout":
        train_keys, held_out = holdout(loader.key_index, cfg.data.val_clips)
        loader.keep_only(train_keys)
    if len(loader) == 0:
        raise RunError(f"--data {cfg.data.shards}: {loader.samples()} samples per process is less than one batch "
                       f"of data.batch_size={cfg.data.batch_size}; lower --batch-size")
    # Each epoch's reading order: the loader's seeded shuffle, rearranged by the method (Vi2CLR's positive mining).
    loader.set_order(lambda epoch: method.sample_order(epoch, loader.shuffled(epoch), cfg.data.batch_size, world))
    feature_loader = None
    if method.needs_feature_pass:  # every sample once, in order, unaugmented, for the per-epoch feature pass
        feature_loader = build_loader(replace(cfg.data, shuffle=False, drop_last=False), method.feature_views(),
                                      rank=rank, world_size=world, device=device)
        feature_loader.keep_only(loader.key_index)
    validation = build_validation(cfg.data, method, loader, held_out, rank, world, device) \
        if cfg.train.val_every else None
    return cfg, loader, feature_loader, validation


def write_run_folder(cfg: RunConfig, out_dir: Path, overwrite: bool) -> None:
    """The first write of a run (main process): with `overwrite` the earlier run goes, then config.yaml."""
    if overwrite:
        for name in RUN_FILES:
            target = out_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def setup(cfg: RunConfig, resume: bool, overwrite: bool) -> Run:
    """Check everything a user can get wrong, then build the run; nothing is written before the checks pass."""
    out_dir = Path(cfg.output)
    check_output(out_dir, resume, overwrite)
    accelerator = make_accelerator(cfg, out_dir)
    set_seed(cfg.train.seed)  # same initial weights on every process
    method = get_method(cfg.method)(cfg.model)
    cfg, loader, feature_loader, validation = build_data(cfg, method, accelerator)
    total_steps = cfg.train.steps or cfg.train.epochs * len(loader) // cfg.train.grad_accum
    if resume:  # the newest checkpoint that loads (nothing in it is unpickled), found before a file is written
        ckpt, state, skipped = newest_checkpoint(out_dir / "checkpoints")
    accelerator.wait_for_everyone()  # every process has checked the folder before the first one writes to it
    run_lock = None
    if accelerator.is_main_process:
        run_lock = lock_folder(out_dir, "fastvid train")  # held till the run ends; a second run stops here
        check_output(out_dir, resume, overwrite)  # again: a run that ended since the first check is seen now
        write_run_folder(cfg, out_dir, overwrite)
    optimizer = build_optimizer(method, cfg.optim)
    # Stepped by hand once per optimiser step: Accelerate's prepared scheduler would step once per process and
    # shorten a schedule written in optimiser steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.optim, total_steps))
    model, optimizer = accelerator.prepare(method, optimizer)
    run = Run(cfg, out_dir, accelerator, accelerator.unwrap_model(model), model, optimizer, scheduler, loader,
              feature_loader, validation, Progress(), total_steps, min(total_steps, cfg.train.max_steps or total_steps),
              run_lock)
    if resume:
        for reason in skipped:
            accelerator.print(f"skipped checkpoint {reason}")
        restore_run_state(accelerator, run.method, optimizer, run.objects(), state)
        accelerator.print(f"resumed from {ckpt} at step {run.progress.step}")
    accelerator.init_trackers("tb", config=_flat(to_dict(cfg)))
    return run


def banner(run: Run) -> str:
    """The run's first lines: what trains, where, on what, how long, and what the demo changed."""
    cfg, world = run.cfg, run.accelerator.num_processes
    every = [f"every {cfg.train.checkpoint_every} steps"]
    every += [f"every {cfg.train.checkpoint_minutes:g} min"] if cfg.train.checkpoint_minutes else []
    validate = f"{run.validation.describe()}, every {cfg.train.val_every} steps" if run.validation else "none"
    return "\n".join([
        f"fastvid train: {cfg.method}",
        f"  device   {device_line(run.accelerator)}",
        f"  data     {cfg.data.shards} (split {cfg.data.split}): {run.loader.samples() * world} clips, "
        f"{len(run.loader)} batches per epoch",
        *([f"  demo     no --data, so the embedded sample with the paper's model and loss, cut to run in minutes: "
           f"{' '.join(cfg.demo)}; --data runs the paper's settings"] if cfg.demo else []),
        f"  batch    {cfg.data.batch_size * world * cfg.train.grad_accum} clips per step ({cfg.data.batch_size} per "
        f"process x {world} process(es) x {cfg.train.grad_accum} accumulated)",
        f"  steps    {run.progress.step} -> {run.stop} (schedule: {run.total_steps} steps); checkpoints "
        f"{', '.join(every)}, at the end and on Ctrl-C/SIGTERM",
        f"  validate {validate}",
        f"  output   {run.out_dir}"])


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete killed saves (`.partial`) and all but the newest `keep` checkpoints (at least the newest one)."""
    for stale in folder.glob(f"step_*{PARTIAL}"):
        shutil.rmtree(stale)
    for old in sorted(folder.glob("step_*"))[:-max(keep, 1)]:
        shutil.rmtree(old)


def save_checkpoint(run: Run) -> Path:
    """The run's state at this step, on every process (RNG states are gathered), written by the main one."""
    path = run.out_dir / "checkpoints" / f"step_{run.progress.step:08d}"
    state = run_state(run.accelerator, run.method, run.optimizer, run.objects())
    if run.accelerator.is_main_process:  # written as step_X.partial, renamed when complete
        checkpoint.save_checkpoint(path, state)
        prune_checkpoints(path.parent, run.cfg.train.keep_checkpoints)
    run.accelerator.wait_for_everyone()
    return path


def is_accuracy(term: str) -> bool:
    """Whether a method's output term is a pretext accuracy (`acc`, `video_acc`, ...) rather than a loss term."""
    return term == "acc" or term.endswith("_acc")


class Logger:
    """The run's outputs per logged step and per validation: TensorBoard, METRICS (for `fastvid plot`), the
    progress bar on a terminal, else a line per logged step. Times the loop's data waits and compute.

    A logged loss term is its mean over the optimiser steps since the last log: one small batch's loss is
    mostly noise (a demo's batch of 4-8 clips varies by 10-20% from step to step), so the mean is what shows a
    trend. The pretext accuracies are the logged step's own (they are computed on logged steps only)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.tty = sys.stderr.isatty()
        main = run.accelerator.is_local_main_process
        self.bar = tqdm(total=run.stop, initial=run.progress.step, disable=not (main and self.tty), unit="step")
        self.wait = self.busy = 0.0
        self.clips = 0
        self.sums: dict[str, list[float]] = {}  # per loss term: [sum, count] over the steps since the last log

    def add(self, terms: dict[str, float]) -> None:
        """Count an optimiser step's loss terms towards the next logged mean."""
        for k, v in terms.items():
            if not is_accuracy(k):
                total = self.sums.setdefault(k, [0.0, 0])
                total[0] += v
                total[1] += 1

    def means(self, terms: dict[str, float]) -> dict[str, float]:
        """The logged step's terms, each loss term replaced by its mean since the last log; then a new window."""
        out = {k: v if is_accuracy(k) else self.sums[k][0] / self.sums[k][1] for k, v in terms.items()}
        self.sums = {}
        return out

    def logged(self, step: int) -> bool:
        """Whether optimiser step `step` (counted from 1) is logged."""
        return step % self.run.cfg.train.log_every == 0 or step == self.run.stop

    def record(self, logs: dict[str, float]) -> None:
        self.run.accelerator.log(logs, step=self.run.progress.step)
        if self.run.accelerator.is_main_process:
            with open(self.run.out_dir / METRICS, "a") as f:
                f.write(json.dumps({"step": self.run.progress.step} | logs) + "\n")

    def step(self, terms: dict[str, float]) -> None:
        """Log optimiser step progress.step's loss terms and the throughput since the last logged step."""
        run = self.run
        # pretext accuracy (top-1 of the positive among the candidates) apart from the losses
        logs = {(f"pretext/{k}" if is_accuracy(k) else f"loss/{k}"): v for k, v in terms.items()}
        spent = max(self.wait + self.busy, 1e-9)
        logs |= {"lr": run.scheduler.get_last_lr()[0], "clips_per_s": self.clips / spent,
                 "data_wait_fraction": self.wait / spent}
        if run.accelerator.device.type == "cuda":
            logs["gpu_mem_gib"] = torch.cuda.max_memory_allocated(run.accelerator.device) / 2 ** 30
        self.record(logs)
        accuracy = {k: f"{v:.1%}" for k, v in terms.items() if is_accuracy(k)}
        self.bar.set_postfix(loss=f"{terms['loss']:.4f}", **accuracy, wait=f"{logs['data_wait_fraction']:.1%}")
        if not self.tty and run.accelerator.is_main_process:  # a log file gets lines, not a bar
            print(f"step {run.progress.step}/{run.stop}: " + " ".join(f"{k} {v:.6g}" for k, v in terms.items())
                  + f", {logs['clips_per_s']:.1f} clips/s, data wait {logs['data_wait_fraction']:.0%}", flush=True)
        self.wait = self.busy = 0.0
        self.clips = 0

    def validate(self) -> None:
        """Score the held-out clips now; the values also go into the next checkpoint."""
        run = self.run
        run.progress.val = validate(run.method, run.validation, run.accelerator)
        self.record({f"val/{k}": v for k, v in run.progress.val.items()})
        if run.accelerator.is_main_process:
            tqdm.write(f"validation at step {run.progress.step}: "
                       + " ".join(f"{k} {v:.4g}" for k, v in run.progress.val.items()))


def train_step(run: Run, batch: dict[str, torch.Tensor], signals: StopSignals, due: bool, spent: bool
               ) -> tuple[dict[str, float], bool, bool, bool]:
    """Forward, check, backward and (on the last micro-batch of an accumulation) the optimiser step.
    Returns the loss terms averaged over processes, and whether every process stops, checkpoints, and has
    spent its time budget.

    One host sync per micro-batch: the mean over processes of every loss term and of three flags (a stop
    signal, a checkpoint due by the clock, train.max_minutes spent), so every process acts at the same step.
    Checking the loss before backward keeps a NaN from ever reaching the weights."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        with accelerator.autocast():
            out = run.model(batch)
        flags = torch.tensor([float(signals.signum > 0), float(due), float(spent)], device=accelerator.device)
        values = accelerator.reduce(torch.cat([torch.stack([v.detach().float() for v in out.values()]), flags]),
                                    "mean")
        *values, stopping, due, spent = values.tolist()
        terms = dict(zip(out, values))
        if not all(math.isfinite(v) for v in terms.values()):
            raise NonFiniteLossError(f"step {run.progress.step + 1}: non-finite loss {terms}; stopped before updating "
                                     f"the weights; last good checkpoint: {latest_checkpoint(run.out_dir)}")
        accelerator.backward(out["loss"])
        if run.cfg.train.clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.model.parameters(), run.cfg.train.clip_grad)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return terms, bool(stopping), bool(due), bool(spent)


def resume_hint(run: Run) -> str:
    return shlex.join(["fastvid", "train", "--method", run.cfg.method, "--output", str(run.out_dir), "--resume"])


def loop(run: Run, log: Logger, signals: StopSignals, started: float) -> dict[str, float]:
    """Train from progress.step to run.stop: one iteration per micro-batch, one optimiser step per `grad_accum`
    of them; returns the last logged loss terms."""
    cfg, progress, last = run.cfg.train, run.progress, {}
    saved_time = time.monotonic()
    while progress.step < run.stop:
        if run.loader.consumed == 0:  # an epoch starts (not a resumed one's middle)
            run.method.before_epoch(run.loader.epoch, run.feature_loader)
        t0 = time.perf_counter()
        for batch in run.loader:
            t1 = time.perf_counter()
            log.wait += t1 - t0
            run.method.want_metrics = log.logged(progress.step + 1)  # pretext accuracies only when logged
            due = bool(cfg.checkpoint_minutes) and time.monotonic() - saved_time >= 60 * cfg.checkpoint_minutes
            spent = cfg.max_minutes is not None and time.monotonic() - started >= 60 * cfg.max_minutes
            terms, stopping, due, spent = train_step(run, batch, signals, due, spent)
            log.clips += run.cfg.data.batch_size * run.accelerator.num_processes
            t0 = time.perf_counter()
            log.busy += t0 - t1
            if not run.accelerator.sync_gradients:
                continue
            run.scheduler.step()
            run.method.after_step()
            progress.step += 1
            log.bar.update(1)
            log.add(terms)
            if spent:  # train.max_minutes: this step is the last (logged, validated, then the final checkpoint)
                run.stop = progress.step
            if log.logged(progress.step):
                last = log.means(terms)
                log.step(last)
            if run.validation and (progress.step % cfg.val_every == 0 or progress.step == run.stop):
                log.validate()
                t0 = time.perf_counter()  # validation is not data wait
            if progress.step >= run.stop:
                return last
            if progress.step % cfg.checkpoint_every == 0 or due or stopping:
                path = save_checkpoint(run)
                saved_time = time.monotonic()
                if stopping:
                    signum = signals.signum or signal.SIGTERM
                    raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {progress.step}: checkpoint "
                                      f"{path}; continue with: {resume_hint(run)}", signum)
    return last


def finish(run: Run, started: float) -> None:
    """The end: a final checkpoint (unless this step has one), the encoders in torchvision layout, the curves,
    and the `fastvid eval` command for them."""
    accelerator, progress = run.accelerator, run.progress
    done = latest_checkpoint(run.out_dir)
    path = done if done and done.name == f"step_{progress.step:08d}" else save_checkpoint(run)
    encoders = run.out_dir / "encoders.pt"
    if accelerator.is_main_process:
        save_encoders(encoders, {"method": run.cfg.method, "config": to_dict(run.cfg), "step": progress.step,
                                 "val": progress.val}, run.method.encoder_state_dicts())
    accelerator.end_training()
    if accelerator.is_main_process:
        accelerator.print(f"curves: {plot_run(run.out_dir)}")
    accelerator.print(f"done: step {progress.step} in {_duration(time.monotonic() - started)}; checkpoint {path}, "
                      f"encoders {encoders}")
    # The probe at the crop size the encoders trained on: its default (64 px) is too small for CaffeNet.
    size = next(v.spatial.size[0] for v in run.method.views() if v.modality in ("rgb", "frame"))
    accelerator.print("evaluate: " + shlex.join(["fastvid", "eval", "--checkpoint", str(encoders), "--probe", "motion",
                                                 "--size", str(size)]))


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Run (or, with `resume`, continue) training; returns the last logged values of each loss term.

    Checks everything first and raises ConfigError, RunError or LoaderError before writing anything; with
    `overwrite` it then deletes the earlier run in cfg.output. Raises Interrupted after SIGINT/SIGTERM."""
    started = time.monotonic()
    run = setup(cfg, resume, overwrite)
    run.accelerator.print(banner(run))
    log = Logger(run)
    with StopSignals() as signals:
        try:
            if run.validation and run.progress.step == 0:  # the reference every later validation compares with
                log.validate()
            last = loop(run, log, signals, started)
        except BaseException:
            for tracker in run.accelerator.trackers:  # flush TensorBoard; the process group goes with the process
                tracker.finish()
            raise
        finally:
            log.bar.close()
    finish(run, started)
    return last


if __name__ == "__main__":  # `python -m fastvid.train ARGS` is `fastvid train ARGS`: the CLI runs as the main
    # module (by name, not imported here, so that the imports stay one-way: cli -> train)
    sys.argv.insert(1, "train")
    runpy.run_module("fastvid.cli", run_name="__main__", alter_sys=True)
