"""fastvid.distributed on two CPU processes (gloo): gathers keep the gradient of the global loss, and
SyncBatchNorm normalises with the statistics of both processes' samples, so two processes holding half a
batch each compute what one process holding all of it does."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastvid.distributed import SyncBatchNorm, gather, gather_rows, sync_batch_norm, world
from fastvid.methods.video_simclr import VideoSimCLR, VideoSimCLRConfig


def halves() -> torch.Tensor:
    """(6, 3, 2, 4, 4): rows 0-2 around 0, rows 3-5 around 5, so each half's own BN statistics are far from the
    whole batch's (and a test that normalised per process would fail)."""
    x = torch.randn(6, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x[3:] += 5.0
    return x


def clips() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(4, 3, 2, 16, 16, generator=g) + shift for k, shift in (("clip_i", 0.0), ("clip_j", 1.0))}


def simclr() -> VideoSimCLR:
    torch.manual_seed(0)  # the same weights in every process
    return VideoSimCLR(VideoSimCLRConfig())


def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    got = {"world": world()}
    # SyncBatchNorm: this process's 3 rows, normalised over all 6
    bn = sync_batch_norm(nn.BatchNorm3d(3, momentum=0.5))
    x = halves()[3 * rank:3 * rank + 3].requires_grad_()
    y = bn(x)
    (y * torch.arange(3.0).view(1, 3, 1, 1, 1)).pow(2).sum().backward()
    got |= {"y": y.detach(), "x_grad": x.grad, "running": (bn.running_mean, bn.running_var)}
    # gather with gradient: every process's copy of a loss over all rows sends its gradient to each row's owner
    z = torch.full((2, 1), float(rank + 1), requires_grad=True)
    every = gather(z, grad=True)  # (4, 1)
    (every * torch.arange(4.0).view(4, 1)).sum().backward()
    got |= {"gathered": every.detach(), "z_grad": z.grad,
            "rows": gather_rows(torch.arange(3 - rank)), "no_grad": gather(z, grad=False).requires_grad}
    # a whole method: videoSimCLR on half the clips, BN synchronised by default and negatives gathered
    method = simclr()
    half = {k: v[2 * rank:2 * rank + 2] for k, v in clips().items()}
    loss = method(half)["loss"]
    loss.backward()
    grad = method.head[0].weight.grad.clone()
    dist.all_reduce(grad)  # DDP's average over the two processes
    stem_bn = method.encoder.net.stem[1]
    got |= {"loss": loss.detach(), "head_grad": grad / 2, "stem_running": stem_bn.running_mean.clone()}
    torch.save(got, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(f"file://{tmp / 'pg'}", str(tmp / "rank")), nprocs=2, join=True)
    return [torch.load(tmp / f"rank.{r}") for r in (0, 1)]


def test_sync_batch_norm_uses_both_processes_samples(two_processes):
    x = halves().requires_grad_()
    bn = nn.BatchNorm3d(3, momentum=0.5)  # one process holding all 6 rows
    y = bn(x)
    (y * torch.arange(3.0).view(1, 3, 1, 1, 1)).pow(2).sum().backward()
    for rank, got in enumerate(two_processes):
        assert got["world"] == (rank, 2)
        rows = slice(3 * rank, 3 * rank + 3)
        torch.testing.assert_close(got["y"], y[rows].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["x_grad"], x.grad[rows], atol=1e-4, rtol=1e-4)  # through the shared stats
        torch.testing.assert_close(got["running"][0], bn.running_mean)
        torch.testing.assert_close(got["running"][1], bn.running_var)  # unbiased over 6 * 2 * 4 * 4 values
    # per-process statistics would differ: each half has its own mean (about 0 and 5), not the whole's 2.5
    assert not torch.allclose(nn.BatchNorm3d(3)(halves()[:3]), y[:3].detach(), atol=0.1)


def test_gather_keeps_the_gradient_of_every_process_loss(two_processes):
    for rank, got in enumerate(two_processes):
        torch.testing.assert_close(got["gathered"], torch.tensor([[1.0], [1.0], [2.0], [2.0]]))
        # d/dz_r of sum_j j * every_j on both processes: 2 * (row indices 2r, 2r + 1)
        torch.testing.assert_close(got["z_grad"], 2 * torch.tensor([[2.0 * rank], [2.0 * rank + 1]]))
        assert got["rows"].tolist() == [0, 1, 2, 0, 1]  # uneven shares (3 and 2 rows) in rank order
        assert not got["no_grad"]


def test_two_processes_train_videosimclr_as_one_with_the_whole_batch(two_processes):
    method = simclr()
    loss = method(clips())["loss"]
    loss.backward()
    for got in two_processes:
        torch.testing.assert_close(got["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["stem_running"], method.encoder.net.stem[1].running_mean, atol=1e-6,
                                   rtol=1e-5)
    torch.testing.assert_close(two_processes[0]["head_grad"], method.head[0].weight.grad, atol=1e-6, rtol=1e-4)


def test_conversion_keeps_parameters_statistics_and_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm2d(2)))
    net[1].running_mean.fill_(3.0)
    net[2].eval()
    plain = copy.deepcopy(net)
    synced = sync_batch_norm(net)
    assert synced is net and type(net[1]) is SyncBatchNorm and type(net[2][0]) is SyncBatchNorm
    assert net[1].training and not net[2][0].training
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in net.state_dict().items())
    x = torch.randn(4, 1, 3, 3)  # no process group: plain BN, training (batch) and eval (running) statistics
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(net[1].running_mean, plain[1].running_mean)
