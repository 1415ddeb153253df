"""Collectives across the training processes: the one place methods gather rows and synchronise BN.

Every function is the identity (or plain BN) without a process group, so the methods run unchanged on one
process and in tests.

Why negatives are gathered *with* gradient (`gather(x, grad=True)`): every process computes the same
loss L over the global batch (SimCLR's NT-Xent, GDT's eq. (1), Vi2CLR's MIL-NCE), and DDP averages the
parameter gradients over the W processes. `torch.distributed.nn.all_gather` sends each process the
gradient of its rows from every process's copy of L (its backward sums them), W dL/dz_r, so the average
is exactly dL/dtheta. A detached gather gives each process only the gradient through its own rows of its
own L, dL/dz_r once, so the average is dL/dtheta / W: the learning rate silently divided by the number of
processes. Tensors that take no gradient (MoCo's keys, cluster ids, GDT's factor labels) use `grad=False`.
"""
from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: Tensor, *, grad: bool) -> Tensor:
    """(N, ...) on every process -> (W N, ...) in rank order on every process; with `grad`, the gradient
    of each process's rows flows back to it (module docstring: why negatives need it)."""
    if world()[1] == 1:
        return x
    if grad:
        return torch.cat(dist_nn.all_gather(x.contiguous()))
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def own_rows(n: int, device: torch.device) -> Tensor:
    """(n,) the rows that this process's n samples occupy in a `gather` of equal-sized batches."""
    return torch.arange(n, device=device) + world()[0] * n


def gather_rows(x: Tensor) -> Tensor:
    """(n_p, ...) on process p, n_p may differ (Vi2CLR's feature pass keeps partial batches) -> (sum n_p, ...)
    in rank order on every process, without gradient."""
    if world()[1] == 1:
        return x
    sizes = gather(torch.tensor([x.shape[0]], device=x.device), grad=False)  # (W,)
    longest = int(sizes.max())  # host sync: once per call
    padded = torch.cat([x.detach(), x.new_zeros(longest - x.shape[0], *x.shape[1:])])  # (longest, ...)
    keep = torch.arange(longest, device=x.device)[None, :] < sizes[:, None]  # (W, longest)
    return gather(padded, grad=False)[keep.flatten()]


def broadcast(x: Tensor) -> Tensor:
    """Process 0's `x` on every process (in place); the identity without a process group."""
    if world()[1] > 1:
        dist.broadcast(x, src=0)
    return x


def broadcast_object(obj: T) -> T:
    """Process 0's `obj` (any picklable value; ignored on the others) on every process."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm (batch statistics over every process's samples), also on CPU process groups.

    On CUDA this is torch's module and kernels. torch refuses CPU input once a process group exists, so a
    CPU run (gloo: the tests, a CPU demo on several processes) combines the statistics itself: each process
    all-reduces its per-channel count, sum and sum of squares (float64, so E[x^2] - E[x]^2 does not cancel),
    with autograd, so the gradient through the shared mean and variance reaches every process, as torch's
    backward does. Parameter and buffer names are BatchNorm's: checkpoints and exports are unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.device.type == "cpu" and dist.is_available() and dist.is_initialized()):
            return super().forward(x)  # CUDA, eval mode or no process group: torch's
        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]  # every axis but the channels: (N, C, ...) -> (C,)
        x64 = x.double()
        count = x64.new_full((1,), x.numel() // x.shape[1])
        group = self.process_group or dist.group.WORLD
        total = dist_nn.all_reduce(torch.cat([count, x64.sum(dims), (x64 * x64).sum(dims)]), group=group)
        n, c = total[0], x.shape[1]
        mean = total[1:c + 1] / n  # (C,) over every process's samples
        var = total[c + 1:] / n - mean * mean  # (C,) biased, as BN normalises with
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():  # running variance unbiased, as torch's
                self.running_mean.lerp_(mean.to(self.running_mean), factor)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var), factor)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = ((x64 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)).to(x.dtype)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced, in place, by a `SyncBatchNorm` carrying its parameters,
    statistics and mode (a BatchNorm itself comes back converted); with one process they compute plain BN."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        like = module.weight if module.affine else module.running_mean  # None: a BN without any state
        where = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, **where)
        synced.load_state_dict(module.state_dict())
        return synced.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, sync_batch_norm(child))
    return module
