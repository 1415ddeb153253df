"""Contrastive row statistics: the one fused mechanism behind every InfoNCE-style loss in fastvid.losses.

Maths. Anchors a_i (M, D), candidates b_j (K, D), logits s_ij = x_i . y_j with x_i = a_i/|a_i| and
y_j = beta_j b_j/|b_j| (no division by the norms when normalize=False; beta_j is 1/temperature, or a per-column
1/phi_j for CenterNCE). Two masks come from small per-row vectors: W_ij (pairs in the denominator: every j,
minus j == i when a and b are the same set) and P_ij = W_ij and label_a[i] == label_b[j] (positives). Per row:

    lse_i  = log sum_{j in W_i} exp(s_ij)      plse_i = log sum_{j in P_i} exp(s_ij)
    psum_i = sum_{j in P_i} s_ij               npos_i = |P_i|

Every loss is then a few O(M) torch ops on these: one positive per row (NT-Xent, CenterNCE) or a sum of logs
over several (GDT) is npos * lse - psum; log of a sum (MIL-NCE) is lse - plse; an external positive logit
(MoCo's k+) is logaddexp(pos, lse) - pos.

Only the log-sum-exps need the M x K logits. psum and npos are linear in s, so they come from per-label sums of
the candidates, O((M + K) D): psum_i = x_i . sum_{j: lb_j = la_i} y_j (minus x_i . y_i when the diagonal is
excluded). The normalisation and beta are O((M + K) D) scalings before the tiles, differentiated by autograd.
So the tiled part is only "lse (and plse when asked for) of x y^T": forward with an online log-sum-exp, backward
dL/ds_ij = g_lse_i exp(s_ij - lse_i) + P_ij g_plse_i exp(s_ij - plse_i), recomputed tile by tile from the saved
lse/plse, so neither pass ever holds the M x K matrix.

Two implementations of the tiled part: Triton kernels for CUDA tensors (`contrastive_triton`) and the tiled
PyTorch code below for the CPU, which is also the oracle the kernels are tested against.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

# Tile sizes (rows, columns). Module constants so tests can shrink them to exercise partial tiles.
# CPU: (1024, 128) @ (128, 2048) runs the BLAS near peak, and an 8 MiB float32 tile stays in L3 between the matmul
# and the in-place exp passes over it. Every tile op is one OpenMP region, and on a shared machine a preempted
# thread stalls each region, so larger tiles (fewer regions) are steadier; 512 x 512 tiles were as fast only when
# the machine was idle (measured on a 2-core EPYC).
CPU_BLOCK = (1024, 2048)
TRITON_BLOCK = (64, 64)
MAX_DIM = 512  # one feature tile per program in the kernels


class RowStats(NamedTuple):
    """Per-row statistics, each (M,) in float32 (float64 for float64 inputs); plse is None unless asked for."""

    lse: Tensor
    plse: Tensor | None
    psum: Tensor
    npos: Tensor


def _tiles(m: int, k: int, block: tuple[int, int]) -> Iterator[tuple[slice, slice]]:
    """(row slice, column slice) pairs covering an m x k matrix, row-major."""
    for i0 in range(0, m, block[0]):
        for j0 in range(0, k, block[1]):
            yield slice(i0, min(i0 + block[0], m)), slice(j0, min(j0 + block[1], k))


class _Tile:
    """Reused buffers for one tile of logits and (for plse) its positive part: no allocation per tile."""

    def __init__(self, x: Tensor, y: Tensor, block: tuple[int, int], with_plse: bool):
        size = min(block[0], x.shape[0]) * min(block[1], y.shape[0])  # (bm, bn) at most
        self.s = torch.empty(size, dtype=x.dtype, device=x.device)
        self.sp = torch.empty(size, dtype=x.dtype, device=x.device) if with_plse else None
        self.neg = torch.empty(size, dtype=torch.bool, device=x.device) if with_plse else None

    def logits(self, x: Tensor, y: Tensor, r: slice, c: slice, exclude_diag: bool) -> Tensor:
        """s = x[r] y[c]^T (bm, bn) in the buffer, -inf on the excluded diagonal."""
        s = self.s[: (r.stop - r.start) * (c.stop - c.start)].view(r.stop - r.start, c.stop - c.start)
        torch.mm(x[r], y[c].T, out=s)
        if exclude_diag and r.start < c.stop and c.start < r.stop:  # the tile crosses the diagonal i == j
            s.diagonal(r.start - c.start).fill_(float("-inf"))
        return s

    def positives(self, s: Tensor, la: Tensor, lb: Tensor) -> Tensor:
        """A copy of s with -inf outside P (bm, bn); s keeps its values."""
        neg = self.neg[: s.numel()].view(s.shape)
        torch.ne(la[:, None], lb[None, :], out=neg)
        return self.sp[: s.numel()].view(s.shape).copy_(s).masked_fill_(neg, float("-inf"))


def _merge_lse(run_max: Tensor, run_sum: Tensor, s: Tensor) -> None:
    """Fold one tile into a running (max, sum of exp(s - max)) per row, in place; s is overwritten."""
    new_max = torch.maximum(run_max, s.amax(1))  # (bm,)
    shift = new_max.nan_to_num(neginf=0.0)  # a row with nothing seen yet keeps max -inf: shift by 0
    run_sum.mul_(torch.exp(run_max - shift)).add_(s.sub_(shift[:, None]).exp_().sum(1))
    run_max.copy_(new_max)


def tiled_forward(
    x: Tensor, y: Tensor, la: Tensor, lb: Tensor, *, exclude_diag: bool, with_plse: bool, block: tuple[int, int]
) -> tuple[Tensor, Tensor | None]:
    """PyTorch twin of `_lse_fwd`: lse (M,) and plse (M,) or None of s = x y^T, one row block at a time."""
    m, k = x.shape[0], y.shape[0]
    tile = _Tile(x, y, block, with_plse)
    lse = torch.empty(m, dtype=x.dtype, device=x.device)
    plse = torch.empty_like(lse) if with_plse else None
    for i0 in range(0, m, block[0]):
        r = slice(i0, min(i0 + block[0], m))
        acc = torch.full((4, r.stop - i0), float("-inf"), dtype=x.dtype, device=x.device)  # running max, sum: W, P
        acc[1::2] = 0.0
        for j0 in range(0, k, block[1]):
            c = slice(j0, min(j0 + block[1], k))
            s = tile.logits(x, y, r, c, exclude_diag)
            if with_plse:
                _merge_lse(acc[2], acc[3], tile.positives(s, la[r], lb[c]))
            _merge_lse(acc[0], acc[1], s)
        lse[r] = acc[0].nan_to_num(neginf=0.0) + acc[1].log()  # -inf for a row with an empty W
        if with_plse:
            plse[r] = acc[2].nan_to_num(neginf=0.0) + acc[3].log()
    return lse, plse


def tiled_backward(
    x: Tensor, y: Tensor, la: Tensor, lb: Tensor, lse: Tensor, plse: Tensor | None, g_lse: Tensor,
    g_plse: Tensor | None, *, exclude_diag: bool, need_x: bool, need_y: bool, block: tuple[int, int],
) -> tuple[Tensor | None, Tensor | None]:
    """PyTorch twin of `_lse_bwd_x` and `_lse_bwd_y`: (dx, dy) from the gradients of lse and plse (None: unused)."""
    tile = _Tile(x, y, block, g_plse is not None)
    dx = torch.zeros_like(x) if need_x else None  # sum_j G_ij y_j
    dy = torch.zeros_like(y) if need_y else None  # sum_i G_ij x_i
    # g_lse_i exp(s - lse_i) = sign_i exp(s - shift_i): the row weight rides in the exp's shift, one tile pass less
    shift = lse - g_lse.abs().log()  # (M,); g_lse_i = 0 gives +inf, so exp = 0
    sign = torch.where(g_lse < 0, -1.0, 1.0).to(x.dtype) if bool((g_lse < 0).any()) else None  # (M,) or None
    for r, c in _tiles(x.shape[0], y.shape[0], block):
        g = tile.logits(x, y, r, c, exclude_diag)  # becomes G = dL/ds in place
        gp = None
        if g_plse is not None:  # g_plse_i exp(s - plse_i) on P; rows without positives have plse = -inf: zeroed
            gp = tile.positives(g, la[r], lb[c])
            gp.sub_(plse[r, None]).exp_().mul_(g_plse[r, None]).nan_to_num_(nan=0.0)
        g.sub_(shift[r, None]).exp_()  # |g_lse_i| softmax_W(s)_ij; exp(-inf) = 0 off W
        if sign is not None:
            g.mul_(sign[r, None])
        if gp is not None:
            g.add_(gp)
        if need_x:
            dx[r].addmm_(g, y[c])
        if need_y:
            dy[c].addmm_(g.T, x[r])
    return dx, dy


def _use_triton(x: Tensor, backend: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"row_stats: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return backend == "triton" or (backend == "auto" and x.is_cuda)


class _TiledLseFn(torch.autograd.Function):
    """Forward: lse (and plse when with_plse) of x y^T; backward: dx, dy from their gradients."""

    @staticmethod
    def forward(ctx, x, y, la, lb, exclude_diag, with_plse, use_triton):  # noqa: D102
        if use_triton:
            from fastvid.kernels import contrastive_triton

            lse, plse = contrastive_triton.lse_forward(x, y, la, lb, exclude_diag=exclude_diag, with_plse=with_plse,
                                                       block=TRITON_BLOCK)
        else:
            lse, plse = tiled_forward(x, y, la, lb, exclude_diag=exclude_diag, with_plse=with_plse, block=CPU_BLOCK)
        ctx.save_for_backward(x, y, la, lb, lse, *([plse] if with_plse else []))
        ctx.opts = dict(exclude_diag=exclude_diag)
        ctx.use_triton = use_triton
        return (lse, plse) if with_plse else lse

    @staticmethod
    def backward(ctx, g_lse, g_plse=None):  # noqa: D102
        x, y, la, lb, lse, *plse = ctx.saved_tensors
        plse = plse[0] if plse else None
        g_lse = g_lse.contiguous()
        g_plse = None if g_plse is None else g_plse.contiguous()
        need = dict(need_x=ctx.needs_input_grad[0], need_y=ctx.needs_input_grad[1])
        if ctx.use_triton:
            from fastvid.kernels import contrastive_triton

            dx, dy = contrastive_triton.lse_backward(x, y, la, lb, lse, plse, g_lse, g_plse, **ctx.opts, **need,
                                                     block=TRITON_BLOCK)
        else:
            dx, dy = tiled_backward(x, y, la, lb, lse, plse, g_lse, g_plse, **ctx.opts, **need, block=CPU_BLOCK)
        return dx, dy, None, None, None, None, None


def _positive_sums(x: Tensor, y: Tensor, la: Tensor, lb: Tensor, exclude_diag: bool) -> tuple[Tensor, Tensor]:
    """psum (M,) and npos (M,) from per-label sums of the candidates: O((M + K) D), differentiable by autograd."""
    m, k = x.shape[0], y.shape[0]
    ids = torch.unique(torch.cat([la, lb]), return_inverse=True)[1]  # labels -> 0..L-1, L <= M + K
    ia, ib = ids[:m], ids[m:]
    y_sum = y.new_zeros(m + k, y.shape[1]).index_add(0, ib, y)  # (L, D) sum of the candidates of each label
    count = x.new_zeros(m + k).index_add_(0, ib, x.new_ones(k))  # (L,)
    psum = (x * y_sum[ia]).sum(1)  # (M,)
    npos = count[ia]
    if exclude_diag:  # drop the pair j == i where it was counted as a positive
        self_pos = ia == ib  # (M,)
        psum = psum - torch.where(self_pos, (x * y).sum(1), 0.0)
        npos = npos - self_pos.to(npos.dtype)
    return psum, npos


def row_stats(
    a: Tensor,
    b: Tensor,
    beta: Tensor | float,
    labels_a: Tensor | None = None,
    labels_b: Tensor | None = None,
    *,
    exclude_diag: bool = False,
    normalize: bool = True,
    with_plse: bool = False,
    backend: str = "auto",
) -> RowStats:
    """Fused contrastive statistics of anchors a: (M, D) against candidates b: (K, D).

    beta: scalar or (K,) inverse temperature per candidate; labels_a: (M,), labels_b: (K,) int64 (positives are
    equal labels; without labels there are no positives); exclude_diag drops the pairs j == i (a and b are the
    same set); with_plse also computes plse (a second log-sum-exp over the tiles: only MIL-NCE needs it).
    a and b: float16/bfloat16/float32/float64 of one dtype; statistics accumulate in float32 (float64 for float64).
    backend: "auto" (Triton for CUDA tensors, tiled PyTorch otherwise), "triton" (also runs CPU tensors under
    TRITON_INTERPRET=1) or "torch".
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"row_stats: need a (M, D) and b (K, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or not a.dtype.is_floating_point:
        raise TypeError(f"row_stats: a and b must share a floating dtype, got {a.dtype} and {b.dtype}")
    if a.shape[1] > MAX_DIM:
        raise ValueError(f"row_stats: feature size {a.shape[1]} exceeds the kernels' limit of {MAX_DIM}")
    if exclude_diag and a.shape[0] != b.shape[0]:
        raise ValueError("row_stats: exclude_diag needs as many anchors as candidates")
    if (labels_a is None) != (labels_b is None):
        raise ValueError("row_stats: give both labels_a and labels_b, or neither")
    if with_plse and labels_a is None:
        raise ValueError("row_stats: with_plse needs labels_a and labels_b (plse is over the positives)")
    m, k = a.shape[0], b.shape[0]
    if labels_a is not None and (labels_a.shape != (m,) or labels_b.shape != (k,)):
        raise ValueError(
            f"row_stats: labels must be ({m},) and ({k},), got {tuple(labels_a.shape)}, {tuple(labels_b.shape)}"
        )
    use_triton = _use_triton(a, backend)
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    beta = torch.as_tensor(beta, dtype=acc, device=a.device).expand(k)
    x, y = a.to(acc), b.to(acc)  # (M, D), (K, D)
    if normalize:  # O((M + K) D): the scaled copies are the only extra feature-sized memory
        x = x * x.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
        y = y * y.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
    y = y * beta[:, None]  # s = x y^T
    if labels_a is None:  # no positives
        la = lb = torch.empty(0, dtype=torch.int64, device=a.device)
        psum, npos = x.new_zeros(m), x.new_zeros(m)
    else:
        la, lb = labels_a.to(a.device, torch.int64).contiguous(), labels_b.to(a.device, torch.int64).contiguous()
        psum, npos = _positive_sums(x, y, la, lb, exclude_diag)
    # The kernels read the inputs' dtype (bf16/fp16 tensor cores) and accumulate in float32; the CPU stays in acc.
    kx, ky = (x.to(a.dtype), y.to(a.dtype)) if use_triton else (x, y)
    out = _TiledLseFn.apply(kx.contiguous(), ky.contiguous(), la, lb, exclude_diag, with_plse, use_triton)
    lse, plse = out if with_plse else (out, None)
    return RowStats(lse, plse, psum, npos.detach())
