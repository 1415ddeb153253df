"""Train one of the five methods: `python -m fastvid.train --method video_simclr` or, on several GPUs,
`accelerate launch -m fastvid.train --method video_simclr`.

The run's settings are one YAML file (default: the packaged `fastvid/configs/<method>.yaml`, the paper's
defaults) plus `key=value` overrides of any field (`model.temperature=0.1 train.max_steps=20`). Outputs
under --output: config.yaml (the resolved settings), checkpoints/step_XXXXXXXX/ (Accelerate state:
model with its queue/cluster buffers, optimiser, scheduler, step, loader position, RNG), tb/ (TensorBoard)
and encoders.pt ({"method", "config", "step", "encoders": Method.encoder_state_dicts()}).
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from fastvid.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from fastvid.data import DataConfig
from fastvid.data.loader import build_loader
from fastvid.methods import METHODS, Method, OptimConfig, get_method


@dataclass
class TrainConfig:
    """The loop. The schedule lasts `steps` optimiser steps, or `epochs` passes over the data."""

    steps: int = 0
    epochs: int = 0
    max_steps: int | None = None  # stop early (smoke runs); the schedule keeps its full length
    grad_accum: int = 1
    mixed_precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # not "no": YAML reads that as false
    compile: bool = False
    clip_grad: float | None = None
    checkpoint_every: int = 1000  # optimiser steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if (self.steps > 0) == (self.epochs > 0):
            raise ConfigError(f"train: set exactly one of steps ({self.steps}) and epochs ({self.epochs}) > 0")


@dataclass
class RunConfig:
    """A whole run, as in configs/<method>.yaml; `model` is the method's own Config dataclass."""

    method: str
    model: Any
    optim: OptimConfig
    data: DataConfig
    train: TrainConfig
    output: str = ""


def load_config(method: str, path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The run config of `method` from `path` (default: the packaged one) with `key=value` overrides."""
    path = path or resources.files("fastvid.configs") / f"{method}.yaml"
    raw = apply_overrides(load_yaml(path), list(overrides))
    unknown = sorted(set(raw) - {"method", "model", "optim", "data", "train", "output"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    if raw.get("method", method) != method:
        raise ConfigError(f"{path}: is a config for method {raw['method']!r}, not {method!r}")
    try:
        return RunConfig(method=method, model=from_dict(get_method(method).Config, raw.get("model", {}), "model"),
                         optim=from_dict(OptimConfig, raw.get("optim", {}), "optim"),
                         data=from_dict(DataConfig, raw.get("data", {}), "data"),
                         train=from_dict(TrainConfig, raw.get("train", {}), "train"),
                         output=raw.get("output") or f"runs/{method}")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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


def with_sync_bn(method: Method, world: int, device_type: str) -> Method:
    """`method` with its BatchNorm layers synchronised across processes when it asks for it (`sync_bn`) and
    several CUDA processes train; torch's SyncBatchNorm has no CPU kernels, so CPU runs keep per-process BN."""
    if not method.sync_bn or world == 1 or device_type != "cuda":
        return method
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)


@dataclass
class Progress:
    """Optimiser steps taken; checkpointed with the run."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the run stops before that step changes any weight."""


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
    found = sorted((Path(output) / "checkpoints").glob("step_*"))
    return found[-1] if found else None


def train(cfg: RunConfig, resume: bool = False) -> dict[str, float]:
    """Run (or, with `resume`, continue) training; returns the last logged values of each loss term."""
    out_dir = Path(cfg.output)
    cpu = cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())
    precision = accelerate_precision(cfg.train.mixed_precision, "cpu" if cpu else "cuda")
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision,
                              gradient_accumulation_steps=cfg.train.grad_accum, log_with="tensorboard",
                              project_dir=str(out_dir), dynamo_backend="inductor" if cfg.train.compile else "no")
    if cfg.train.device == "cuda" and accelerator.device.type != "cuda":
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    if cfg.data.shards == "sample":  # the embedded dataset, built once by the first process
        from fastvid.data.sample import sample_dataset

        with accelerator.main_process_first():
            cfg = replace(cfg, data=replace(cfg.data, shards=str(sample_dataset())))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    set_seed(cfg.train.seed)  # same initial weights on every process

    # Data, method, optimiser, schedule.
    method = get_method(cfg.method)(cfg.model)
    rank, world = accelerator.process_index, accelerator.num_processes
    if method.sync_bn and world > 1:
        if accelerator.device.type != "cuda":
            accelerator.print("sync_bn: SyncBatchNorm needs CUDA; each process keeps its own BN statistics")
        method = with_sync_bn(method, world, accelerator.device.type)
    loader = build_loader(cfg.data, method.views(), rank=rank, world_size=world, device=accelerator.device)
    if len(loader) == 0:
        raise ValueError(f"{cfg.data.shards}: {loader.samples()} samples per process is less than one batch "
                         f"of data.batch_size={cfg.data.batch_size}")
    feature_loader = None
    if method.needs_feature_pass:  # every sample once, in order, for the method's per-epoch feature pass
        feature_loader = build_loader(replace(cfg.data, shuffle_buffer=0, drop_last=False), method.views(),
                                      rank=rank, world_size=world, device=accelerator.device)
    total_steps = cfg.train.steps or cfg.train.epochs * len(loader) // cfg.train.grad_accum
    stop = min(total_steps, cfg.train.max_steps or total_steps)
    optimizer = build_optimizer(method, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.optim, total_steps))
    # The scheduler is stepped by hand once per optimiser step: Accelerate's prepared scheduler would step
    # once per process and shorten a schedule written in optimiser steps.
    model, optimizer = accelerator.prepare(method, optimizer)
    method = accelerator.unwrap_model(model)
    progress = Progress()
    accelerator.register_for_checkpointing(scheduler, loader, progress)
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")
        accelerator.load_state(str(ckpt))
        accelerator.print(f"resumed from {ckpt} at step {progress.step}")
    accelerator.init_trackers("tb", config=_flat(to_dict(cfg)))

    def save_checkpoint() -> Path:
        path = out_dir / "checkpoints" / f"step_{progress.step:08d}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process:  # keep the newest `keep_checkpoints`
            for old in sorted((out_dir / "checkpoints").glob("step_*"))[:-cfg.train.keep_checkpoints]:
                shutil.rmtree(old)
        return path

    # The loop: one iteration per micro-batch, one optimiser step per `grad_accum` of them.
    bar = tqdm(total=stop, initial=progress.step, disable=not accelerator.is_local_main_process, unit="step")
    clips_per_batch = cfg.data.batch_size * world
    last: dict[str, float] = {}
    wait = busy = 0.0
    clips = 0
    saved_at = progress.step
    while progress.step < stop:
        if loader.consumed == 0:  # an epoch starts (not a resumed one's middle)
            method.before_epoch(loader.epoch, feature_loader)
        t0 = time.perf_counter()
        for batch in loader:
            t1 = time.perf_counter()
            wait += t1 - t0
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = model(batch)
                # One host sync per micro-batch: the mean of every loss term over processes. Checking it
                # before backward keeps a NaN from ever reaching the weights, on all processes at once.
                values = accelerator.reduce(torch.stack([v.detach().float() for v in out.values()]), "mean")
                terms = dict(zip(out, values.tolist()))
                if not all(math.isfinite(v) for v in terms.values()):
                    good = latest_checkpoint(out_dir)
                    raise NonFiniteLossError(f"step {progress.step + 1}: non-finite loss {terms}; stopped "
                                             f"before updating the weights; last good checkpoint: {good}")
                accelerator.backward(out["loss"])
                if cfg.train.clip_grad and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            clips += clips_per_batch
            t0 = time.perf_counter()
            busy += t0 - t1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            method.after_step()
            progress.step += 1
            bar.update(1)
            if progress.step % cfg.train.log_every == 0 or progress.step == stop:
                last = terms
                logs = {f"loss/{k}": v for k, v in terms.items()}
                logs |= {"lr": scheduler.get_last_lr()[0], "clips_per_s": clips / max(wait + busy, 1e-9),
                         "data_wait_fraction": wait / max(wait + busy, 1e-9)}
                if accelerator.device.type == "cuda":
                    logs["gpu_mem_gib"] = torch.cuda.max_memory_allocated(accelerator.device) / 2 ** 30
                accelerator.log(logs, step=progress.step)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", wait=f"{logs['data_wait_fraction']:.1%}")
                wait = busy = 0.0
                clips = 0
            if progress.step % cfg.train.checkpoint_every == 0:
                save_checkpoint()
                saved_at = progress.step
            if progress.step >= stop:
                break

    # The end: a final checkpoint and the encoders in torchvision layout.
    if saved_at != progress.step:
        save_checkpoint()
    if accelerator.is_main_process:
        torch.save({"method": cfg.method, "config": to_dict(cfg), "step": progress.step,
                    "encoders": method.encoder_state_dicts()}, out_dir / "encoders.pt")
    bar.close()
    accelerator.end_training()
    return last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastvid.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--config", help="run YAML (default: the packaged configs/<method>.yaml)")
    parser.add_argument("--data", help="dataset.json or its shard folder (default: the config's data.shards; "
                                       "'sample' is the embedded sample dataset)")
    parser.add_argument("--output", help="run folder (default: the config's output, else runs/<method>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its latest checkpoint, with its config.yaml")
    parser.add_argument("--max-steps", type=int, help="stop after this optimiser step (train.max_steps)")
    parser.add_argument("--batch-size", type=int, help="clips per process per micro-batch (data.batch_size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="train.device")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {"data.shards": args.data, "output": args.output, "train.max_steps": args.max_steps,
             "data.batch_size": args.batch_size, "train.device": args.device}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + args.overrides
    config = args.config
    if args.resume:
        if args.config:
            raise SystemExit("--resume continues with the run's own config.yaml; pass changes as key=value")
        output = args.output or load_config(args.method, None, overrides).output
        config = Path(output) / "config.yaml"
    train(load_config(args.method, config, overrides), resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
