"""The `Method` interface and the plumbing the five methods share.

A method owns its encoders, heads and any non-gradient state (MoCo's queue, Vi2CLR's clusters); the
trainer (`fastvid.train.train`) owns the loop, the optimiser and the checkpoints. Per step the trainer
calls `out = method(batch)`, back-propagates `out["loss"]`, steps the optimiser, then `method.after_step()`.
`out` holds scalars: "loss", its terms, and the pretext top-1 accuracy "acc" (or "<term>_acc" for several),
logged beside the loss terms. The accuracies are computed only when `want_metrics` is set: the trainer sets
it before each step to whether that step is logged (`train.log_every`), so the other steps skip them.

Each method module defines a config dataclass (`Method.Config`) and `configs/<name>.yaml` mirrors a run:

    method: <name>            # key of fastvid.methods.METHODS
    model: {...}              # the method's Config dataclass, field for field
    optim: {...}              # OptimConfig below
    data: {...}               # fastvid.data.DataConfig (the shards path comes from --data)
    train: {...}              # fastvid.run_config.TrainConfig

State that must survive a checkpoint and is not a parameter lives in registered persistent buffers, so
`state_dict()` carries it. State whose shape is known only at run time (Vi2CLR's clusters) is a buffer
that a load_state_dict pre-hook resizes to the checkpoint's shape (as in vi2clr.py), not
`get_extra_state`: a buffer is a tensor, which a checkpoint (`fastvid.checkpoint`: safetensors) stores as is.

Across processes (`fastvid.distributed`): methods that contrast against every process's batch gather the
negatives with gradient, and their config's `sync_bn` (on by default for videoSimCLR, GDT and Vi2CLR) makes
their BatchNorm layers `SyncBatchNorm`: with several processes BN statistics then come from the global batch,
as SimCLR's "Global BN" (Chen et al. 2020, sec. 2.2) does against the local information leak (a positive
pair found from the statistics its process shares); with one process they are plain BN.
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fastvid.config import ConfigError
from fastvid.models import ARCHS, Encoder

if TYPE_CHECKING:  # the loader's types; imported lazily so the methods import without DALI
    from fastvid.data import ViewSpec


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule, in optimiser steps (one step = one accumulated batch)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # SGD momentum
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W)
    weight_decay: float = 0.0
    nesterov: bool = False
    # constant; step: lr *= gamma at each milestone step; cosine: to lr * min_lr_ratio at the last step
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0


def require(ok: bool, key: str, reason: str, value: Any) -> None:
    """A method config's load-time check (its `__post_init__`): unless `ok`, the one-line user error
    "model.<key>: <reason>, got <value>", which the config loader ties to that key."""
    if not ok:
        raise ConfigError(f"model.{key}: {reason}, got {value!r}")


def require_arch(key: str, arch: str, kind: Literal["video", "image"]) -> None:
    """Check at load time that `arch` names an encoder taking `kind` input ("image": 2D, spectrograms too),
    rather than when the model is built."""
    known = sorted(name for name, spec in ARCHS.items() if spec.kind == kind)
    require(arch in known, key, f"must be one of the {kind} encoders {', '.join(known)}", arch)


def mlp_head(dims: Sequence[int], batch_norm: bool = False) -> nn.Sequential:
    """Projection head Linear -> [BN] -> ReLU -> ... -> Linear through `dims` (in, hidden..., out);
    `dims` of length 2 is a single linear layer (MoCo v1)."""
    if len(dims) < 2:
        raise ValueError(f"a head needs at least input and output sizes, got dims={list(dims)}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(d_out)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module`, updated only through `momentum_update` (MoCo's key encoder)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (MoCo eq. 2)."""
    for p_q, p_k in zip(online.parameters(), target.parameters(), strict=True):
        p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)


class SplitBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics come from `splits` sub-batches (contiguous chunks of the batch),
    as if each were on its own GPU: MoCo's single-GPU shuffling BN (the authors' Colab demo "SplitBatchNorm").
    Running statistics are the mean of the chunks' updates; eval mode is ordinary BN. Parameter and buffer
    names are BatchNorm's, so checkpoints and exported torchvision weights are unchanged."""

    def __init__(self, bn: _BatchNorm, splits: int) -> None:
        if not bn.track_running_stats:
            raise ValueError("SplitBatchNorm needs a BatchNorm that tracks running statistics")
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        self.load_state_dict(bn.state_dict())
        self.splits = splits

    def _check_input_dim(self, x: torch.Tensor) -> None:  # any of BatchNorm1d/2d/3d's layouts: (N, C, ...)
        if x.ndim < 2:
            raise ValueError(f"SplitBatchNorm: expected (N, C, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        if x.shape[0] < self.splits:
            raise ValueError(f"shuffling BN in {self.splits} sub-batches needs at least {self.splits} samples per "
                             f"process, got {x.shape[0]}")
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        parts, means, variances = [], [], []
        for chunk in x.tensor_split(self.splits):  # (about N / splits, C, ...) each: its own batch statistics
            mean, var = self.running_mean.clone(), self.running_var.clone()  # updated in place by batch_norm
            parts.append(F.batch_norm(chunk, mean, var, self.weight, self.bias, True, factor, self.eps))
            means.append(mean)
            variances.append(var)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, splits={self.splits}"


def split_batch_norm(module: nn.Module, splits: int) -> nn.Module:
    """`module` with every BatchNorm layer replaced, in place, by a `SplitBatchNorm` of `splits` sub-batches
    carrying the same parameters and statistics."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(module, name, SplitBatchNorm(child, splits))
        else:
            split_batch_norm(child, splits)
    return module


class Method(nn.Module, abc.ABC):
    """Base of the five methods; subclasses set `Config` and implement `views`, `forward`, `encoders`."""

    Config: ClassVar[type]  # the method's config dataclass (mirrored by configs/<name>.yaml `model:`)
    needs_feature_pass: ClassVar[bool] = False  # True: the trainer calls before_epoch with data
    momentum: float = 0.0  # m in theta_k <- m theta_k + (1 - m) theta_q; set by momentum methods
    want_metrics: bool = True  # forward adds the pretext accuracies; the trainer sets it per step (logged ones)

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    @abc.abstractmethod
    def views(self) -> list[ViewSpec]:
        """The loader views this method consumes (a preset from `fastvid.data.views`)."""

    @abc.abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"loss": scalar, <term>: scalar, ...} for one batch from the loader."""

    @abc.abstractmethod
    def encoders(self) -> dict[str, Encoder]:
        """The representation networks the method trains, by role ("video", "rgb", "flow", ...)."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs moved by `after_step`; none by default."""
        return []

    def after_step(self) -> None:
        """Called after each optimiser step: momentum updates (queues update inside forward)."""
        for online, target in self.momentum_pairs():
            momentum_update(online, target, self.momentum)

    def before_epoch(self, epoch: int, feature_batches: Iterable[dict[str, torch.Tensor]] | None) -> None:
        """Called at the start of each epoch; `feature_batches` is a pass over the data when
        `needs_feature_pass` (Vi2CLR clusters features here), else None."""

    def feature_views(self) -> list[ViewSpec]:
        """The views of the feature pass that `before_epoch` reads (`needs_feature_pass`)."""
        return self.views()

    def sample_order(self, epoch: int, shuffled: np.ndarray, batch_size: int, world_size: int) -> np.ndarray:
        """Epoch `epoch`'s reading order for all processes (the loader's `set_order`: rank r reads the r-th of
        `world_size` contiguous blocks in batches of `batch_size`), given the loader's seeded shuffle of the
        dataset positions; Vi2CLR puts same-cluster samples together. Default: the shuffle itself."""
        return shuffled

    def encoder_state_dicts(self) -> dict[str, dict[str, Any]]:
        """{role: {"arch", "in_channels", "state_dict"}}: loadable with `fastvid.models.load_backbone`
        into the matching torchvision model (classifier left to train)."""
        return {role: enc.export() for role, enc in self.encoders().items()}
