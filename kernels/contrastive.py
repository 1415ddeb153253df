"""Contrastive row statistics: the one fused mechanism behind every InfoNCE-style loss in fastvid.losses.

Maths. Anchors a_i (M, D), candidates b_j (K, D), logits s_ij = beta_j <a_i/|a_i|, b_j/|b_j|> (no division
by the norms when normalize=False; beta_j is 1/temperature, or a per-column 1/phi_j for CenterNCE). Two masks
come from small per-row vectors evaluated on the fly: W_ij (pairs in the denominator: every valid j, minus
j == i when a and b are the same set) and P_ij = W_ij and label_a[i] == label_b[j] (positives). Per row:

    lse_i  = log sum_{j in W_i} exp(s_ij)      plse_i = log sum_{j in P_i} exp(s_ij)
    psum_i = sum_{j in P_i} s_ij               npos_i = |P_i|

Every loss is then a few O(M) torch ops on these: one positive per row (NT-Xent, CenterNCE) or a sum of logs
over several (GDT) is npos * lse - psum; log of a sum (MIL-NCE) is lse - plse; an external positive logit
(MoCo's k+) is logaddexp(pos, lse) - pos. Gradients flow back through lse, plse and psum:
dL/ds_ij = g_lse_i softmax_W(s)_ij + P_ij (g_plse_i softmax_P(s)_ij + g_psum_i), recomputed tile by tile from
the saved lse/plse, so neither pass ever holds the M x K matrix.

Two implementations: Triton kernels for CUDA tensors (`contrastive_triton`) and the tiled PyTorch code below
for the CPU, which is also the oracle the kernels are tested against.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Tile sizes (rows, columns). Module constants so tests can shrink them to exercise partial tiles.
CPU_BLOCK = (1024, 2048)
TRITON_BLOCK = (64, 64)
MAX_DIM = 512  # one feature tile per program in the kernels


class RowStats(NamedTuple):
    """Per-row statistics, each (M,) in float32 (float64 for float64 inputs)."""

    lse: Tensor
    plse: Tensor
    psum: Tensor
    npos: Tensor


def _tile_logits(
    a: Tensor, b: Tensor, ra: Tensor, col_scale: Tensor, la: Tensor, lb: Tensor, i0: int, j0: int, exclude_diag: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (bm, bn) and masks W, P of the tile whose first row is i0 and first column j0."""
    s = (a.to(ra.dtype) @ b.to(ra.dtype).T) * ra[:, None] * col_scale[None, :]  # (bm, bn)
    w = torch.ones_like(s, dtype=torch.bool)
    if exclude_diag:
        rows = torch.arange(i0, i0 + a.shape[0], device=a.device)
        cols = torch.arange(j0, j0 + b.shape[0], device=a.device)
        w = rows[:, None] != cols[None, :]
    p = w & (la[:, None] == lb[None, :])
    return s, w, p


def _tiles(m: int, k: int, block: tuple[int, int]):
    """(row slice, column slice) pairs covering an m x k matrix, row-major."""
    for i0 in range(0, m, block[0]):
        for j0 in range(0, k, block[1]):
            yield slice(i0, min(i0 + block[0], m)), slice(j0, min(j0 + block[1], k))


def tiled_forward(
    a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, beta: Tensor, la: Tensor, lb: Tensor, *,
    exclude_diag: bool, block: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch twin of `_row_stats_fwd`: log-sum-exps merged tile by tile with logaddexp."""
    m = a.shape[0]
    lse = torch.full((m,), float("-inf"), dtype=ra.dtype, device=a.device)
    plse = lse.clone()
    psum = torch.zeros_like(lse)
    npos = torch.zeros_like(lse)
    col_scale = rb * beta  # (K,)
    for r, c in _tiles(m, b.shape[0], block):
        s, w, p = _tile_logits(a[r], b[c], ra[r], col_scale[c], la[r], lb[c], r.start, c.start, exclude_diag)
        lse[r] = torch.logaddexp(lse[r], torch.logsumexp(s.masked_fill(~w, float("-inf")), 1))
        plse[r] = torch.logaddexp(plse[r], torch.logsumexp(s.masked_fill(~p, float("-inf")), 1))
        psum[r] += (s * p).sum(1)
        npos[r] += p.sum(1)
    return lse, plse, psum, npos


def _project(grad: Tensor, x: Tensor, rx: Tensor) -> Tensor:
    """Chain rule through x / |x|: rx * (grad - x_hat (x_hat . grad)), row by row."""
    x = x.to(grad.dtype)
    return rx[:, None] * grad - (rx**3 * (x * grad).sum(1))[:, None] * x


def tiled_backward(
    a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, beta: Tensor, la: Tensor, lb: Tensor,
    lse: Tensor, plse: Tensor, g_lse: Tensor, g_plse: Tensor | None, g_psum: Tensor | None, *,
    exclude_diag: bool, normalize: bool, need_a: bool, need_b: bool, block: tuple[int, int],
) -> tuple[Tensor | None, Tensor | None]:
    """PyTorch twin of `_row_stats_bwd_a` and `_row_stats_bwd_b`; returns (dA, dB) in the inputs' dtypes.
    A None gradient (that statistic was not used) skips its term."""
    acc_a = torch.zeros(a.shape, dtype=ra.dtype, device=a.device)  # sum_j G_ij beta_j rb_j b_j
    acc_b = torch.zeros(b.shape, dtype=ra.dtype, device=a.device)  # sum_i G_ij beta_j rb_j ra_i a_i
    col_scale = rb * beta
    for r, c in _tiles(a.shape[0], b.shape[0], block):
        s, w, p = _tile_logits(a[r], b[c], ra[r], col_scale[c], la[r], lb[c], r.start, c.start, exclude_diag)
        g = torch.where(w, g_lse[r, None] * torch.exp(s - lse[r, None]), 0.0)  # (bm, bn) dL/ds
        if g_plse is not None:  # skipped when no loss used plse (one full exp pass less)
            g = g + torch.where(p, g_plse[r, None] * torch.exp(s - plse[r, None]), 0.0)
        if g_psum is not None:
            g = g + g_psum[r, None] * p
        g = g * col_scale[None, c]
        if need_a:
            acc_a[r] += g @ b[c].to(g.dtype)
        if need_b:
            acc_b[c] += (g * ra[r, None]).T @ a[r].to(g.dtype)
    da = db = None
    if need_a:
        da = (_project(acc_a, a, ra) if normalize else acc_a).to(a.dtype)
    if need_b:
        db = (_project(acc_b, b, rb) / rb[:, None] if normalize else acc_b).to(b.dtype)
    return da, db


def _use_triton(x: Tensor, backend: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"row_stats: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return backend == "triton" or (backend == "auto" and x.is_cuda)


class _RowStatsFn(torch.autograd.Function):
    """Forward: per-row statistics; backward: gradients of A and B from the gradients of lse, plse, psum."""

    @staticmethod
    def forward(ctx, a, b, beta, la, lb, exclude_diag, normalize, backend):  # noqa: D102
        acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        a, b = a.contiguous(), b.contiguous()
        beta = beta.to(device=a.device, dtype=acc_dtype).contiguous()
        la, lb = la.to(a.device, torch.int64).contiguous(), lb.to(a.device, torch.int64).contiguous()
        ones = lambda x: torch.ones(x.shape[0], dtype=acc_dtype, device=x.device)  # noqa: E731
        # Inverse norms (M,), (K,): the L2 normalisation is applied to the logits, no normalised copy exists.
        ra = a.to(acc_dtype).norm(dim=1).clamp_min(1e-12).reciprocal() if normalize else ones(a)
        rb = b.to(acc_dtype).norm(dim=1).clamp_min(1e-12).reciprocal() if normalize else ones(b)
        use_triton = _use_triton(a, backend)
        if use_triton:
            from fastvid.kernels import contrastive_triton

            stats = contrastive_triton.row_stats_forward(
                a, b, ra, rb, beta, la, lb, exclude_diag=exclude_diag, block_m=TRITON_BLOCK[0],
                block_n=TRITON_BLOCK[1],
            )
        else:
            stats = tiled_forward(a, b, ra, rb, beta, la, lb, exclude_diag=exclude_diag, block=CPU_BLOCK)
        ctx.save_for_backward(a, b, ra, rb, beta, la, lb, stats[0], stats[1])
        ctx.opts = dict(exclude_diag=exclude_diag, normalize=normalize)
        ctx.use_triton = use_triton
        ctx.mark_non_differentiable(stats[3])
        return stats

    @staticmethod
    def backward(ctx, g_lse, g_plse, g_psum, _g_npos):  # noqa: D102
        a, b, ra, rb, beta, la, lb, lse, plse = ctx.saved_tensors
        grads = [None if g is None else g.to(ra.dtype).contiguous() for g in (g_lse, g_plse, g_psum)]
        need = dict(need_a=ctx.needs_input_grad[0], need_b=ctx.needs_input_grad[1])
        if ctx.use_triton:  # the kernels take every term; an unused one is a zero vector
            from fastvid.kernels import contrastive_triton

            grads = [torch.zeros_like(ra) if g is None else g for g in grads]
            da, db = contrastive_triton.row_stats_backward(
                a, b, ra, rb, beta, la, lb, lse, plse, *grads, **ctx.opts, **need,
                block_m=TRITON_BLOCK[0], block_n=TRITON_BLOCK[1],
            )
        else:
            if grads[0] is None:
                grads[0] = torch.zeros_like(ra)
            da, db = tiled_backward(a, b, ra, rb, beta, la, lb, lse, plse, *grads, **ctx.opts, **need,
                                    block=CPU_BLOCK)
        return da, db, None, None, None, None, None, None


def row_stats(
    a: Tensor,
    b: Tensor,
    beta: Tensor | float,
    labels_a: Tensor | None = None,
    labels_b: Tensor | None = None,
    *,
    exclude_diag: bool = False,
    normalize: bool = True,
    backend: str = "auto",
) -> RowStats:
    """Fused contrastive statistics of anchors a: (M, D) against candidates b: (K, D).

    beta: scalar or (K,) inverse temperature per candidate; labels_a: (M,), labels_b: (K,) int64 (positives are
    equal labels; without labels there are no positives); exclude_diag drops the pairs j == i (a and b are the
    same set). a and b: float16/bfloat16/float32/float64 of one dtype; statistics accumulate in float32
    (float64 for float64). backend: "auto" (Triton for CUDA tensors, tiled PyTorch otherwise), "triton" (also
    runs CPU tensors under TRITON_INTERPRET=1) or "torch".
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"row_stats: need a (M, D) and b (K, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or not a.dtype.is_floating_point:
        raise TypeError(f"row_stats: a and b must share a floating dtype, got {a.dtype} and {b.dtype}")
    if a.shape[1] > MAX_DIM:
        raise ValueError(f"row_stats: feature size {a.shape[1]} exceeds the kernels' limit of {MAX_DIM}")
    if exclude_diag and a.shape[0] != b.shape[0]:
        raise ValueError("row_stats: exclude_diag needs as many anchors as candidates")
    m, k = a.shape[0], b.shape[0]
    beta = torch.as_tensor(beta, dtype=torch.float64, device=a.device).expand(k)
    if (labels_a is None) != (labels_b is None):
        raise ValueError("row_stats: give both labels_a and labels_b, or neither")
    if labels_a is None:  # labels that never match: no positives
        labels_a = torch.zeros(m, dtype=torch.int64, device=a.device)
        labels_b = torch.ones(k, dtype=torch.int64, device=a.device)
    if labels_a.shape != (m,) or labels_b.shape != (k,):
        raise ValueError(
            f"row_stats: labels must be ({m},) and ({k},), got {tuple(labels_a.shape)}, {tuple(labels_b.shape)}"
        )
    return RowStats(*_RowStatsFn.apply(a, b, beta, labels_a, labels_b, exclude_diag, normalize, backend))
