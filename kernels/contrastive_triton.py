"""Triton kernels for the tiled log-sum-exps of the contrastive row statistics (maths in
`fastvid.kernels.contrastive`).

For x (M, D) and y (K, D) (already normalised and scaled by beta), s = x y^T; each program owns BLOCK_M rows
and walks over the columns in BLOCK_N tiles with an online log-sum-exp, so only a BLOCK_M x BLOCK_N tile of
logits ever exists. Masks: W_ij = j valid and (j != i when EXCLUDE_DIAG); P_ij = W_ij and LA_i == LB_j.
Outputs per row: lse = log sum_W exp(s) and, when WITH_PLSE, plse = log sum_P exp(s) (the labels are not even
read otherwise). The backward kernels recompute the logits from the saved lse/plse: one kernel owns rows (dx),
one owns columns (dy), so no atomics are needed. Inputs in bf16/fp16/fp32 feed tl.dot directly; every
reduction accumulates in ACC (float32, float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _load_rows(
    X, LA,  # (M, D) features, (M,) int64 labels (read only when WITH_PLSE)
    i0, M, D, WITH_PLSE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One tile of rows: features (BLOCK, BD), labels (BLOCK,) (zeros without WITH_PLSE), row indices (BLOCK,)."""
    rows = i0 + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    ok = rows < M
    x = tl.load(X + rows[:, None] * D + dims[None, :], mask=ok[:, None] & (dims[None, :] < D), other=0.0)
    if WITH_PLSE:
        lab = tl.load(LA + rows, mask=ok, other=-1)
    else:
        lab = tl.zeros([BLOCK], tl.int64)
    return x, lab, rows


@triton.jit
def _logits_tile(
    x, la, rows,  # (BM, BD) anchors, (BM,) labels, (BM,) row indices
    y, lb, cols,  # (BN, BD) candidates, (BN,) labels, (BN,) column indices
    M, K, EXCLUDE_DIAG: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Logits s (BM, BN) of one tile and its masks W (kept pairs) and P (positive pairs)."""
    s = tl.dot(x, tl.trans(y), input_precision=PRECISION, out_dtype=ACC)
    w = (rows[:, None] < M) & (cols[None, :] < K)
    if EXCLUDE_DIAG:
        w = w & (rows[:, None] != cols[None, :])
    p = w & (la[:, None] == lb[None, :])
    return s, w, p


@triton.jit
def _online_lse(m_run, l_run, s, keep):
    """Fold one tile into a running (max, sum of exp(s - max)) per row; a row with nothing seen keeps max -inf."""
    neg_inf = float("-inf")
    m_new = tl.maximum(m_run, tl.max(tl.where(keep, s, neg_inf), 1))
    shift = tl.where(m_new == neg_inf, 0.0, m_new)
    l_run = l_run * tl.exp(m_run - shift) + tl.sum(tl.where(keep, tl.exp(s - shift[:, None]), 0.0), 1)
    return m_new, l_run


@triton.jit
def _lse_fwd(
    X, Y,  # (M, D), (K, D) scaled features, row-major contiguous, same dtype
    LA, LB,  # (M,), (K,) int64 labels: positives are pairs with equal labels (read only when WITH_PLSE)
    LSE, PLSE,  # (M,) outputs in ACC dtype (PLSE written only when WITH_PLSE)
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, WITH_PLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    x, la, rows = _load_rows(X, LA, tl.program_id(0) * BLOCK_M, M, D, WITH_PLSE, BLOCK_M, BLOCK_D)
    neg_inf = float("-inf")
    m_w = tl.full([BLOCK_M], neg_inf, ACC)  # running max over W
    l_w = tl.zeros([BLOCK_M], ACC)  # running sum of exp(s - m_w) over W
    m_p = tl.full([BLOCK_M], neg_inf, ACC)
    l_p = tl.zeros([BLOCK_M], ACC)
    for j0 in tl.range(0, K, BLOCK_N):
        y, lb, cols = _load_rows(Y, LB, j0, K, D, WITH_PLSE, BLOCK_N, BLOCK_D)
        s, w, p = _logits_tile(x, la, rows, y, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        m_w, l_w = _online_lse(m_w, l_w, s, w)
        if WITH_PLSE:
            m_p, l_p = _online_lse(m_p, l_p, s, p)
    row_ok = rows < M
    tl.store(LSE + rows, tl.where(m_w == neg_inf, 0.0, m_w) + tl.log(l_w), mask=row_ok)  # -inf: empty W
    if WITH_PLSE:
        tl.store(PLSE + rows, tl.where(m_p == neg_inf, 0.0, m_p) + tl.log(l_p), mask=row_ok)


@triton.jit
def _grad_logits(s, w, p, lse, plse, g_lse, g_plse, WITH_PLSE: tl.constexpr):
    """dLoss/ds_ij = g_lse_i softmax_W(s)_ij (+ P_ij g_plse_i softmax_P(s)_ij when WITH_PLSE)."""
    g = tl.where(w, g_lse[:, None] * tl.exp(s - lse[:, None]), 0.0)
    if WITH_PLSE:
        g += tl.where(p, g_plse[:, None] * tl.exp(s - plse[:, None]), 0.0)
    return g


@triton.jit
def _load_row_grads(LSE, PLSE, G_LSE, G_PLSE, rows, M, WITH_PLSE: tl.constexpr):
    """Saved statistics and incoming gradients of one block of rows, each (BLOCK,)."""
    ok = rows < M
    lse = tl.load(LSE + rows, mask=ok, other=0.0)
    g_lse = tl.load(G_LSE + rows, mask=ok, other=0.0)
    if WITH_PLSE:
        plse = tl.load(PLSE + rows, mask=ok, other=0.0)
        g_plse = tl.load(G_PLSE + rows, mask=ok, other=0.0)
    else:
        plse = tl.zeros_like(lse)
        g_plse = tl.zeros_like(lse)
    return lse, plse, g_lse, g_plse


@triton.jit
def _lse_bwd_x(
    X, Y, LA, LB,  # as in _lse_fwd
    LSE, PLSE,  # (M,) saved forward statistics (PLSE read only when WITH_PLSE)
    G_LSE, G_PLSE,  # (M,) incoming gradients of lse, plse (ACC dtype)
    DX,  # (M, D) output gradient of X, X's dtype
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, WITH_PLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    x, la, rows = _load_rows(X, LA, tl.program_id(0) * BLOCK_M, M, D, WITH_PLSE, BLOCK_M, BLOCK_D)
    lse, plse, g_lse, g_plse = _load_row_grads(LSE, PLSE, G_LSE, G_PLSE, rows, M, WITH_PLSE)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)  # sum_j G_ij y_j
    for j0 in tl.range(0, K, BLOCK_N):
        y, lb, cols = _load_rows(Y, LB, j0, K, D, WITH_PLSE, BLOCK_N, BLOCK_D)
        s, w, p = _logits_tile(x, la, rows, y, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        g = _grad_logits(s, w, p, lse, plse, g_lse, g_plse, WITH_PLSE)
        acc += tl.dot(g.to(y.dtype), y, input_precision=PRECISION, out_dtype=ACC)
    dims = tl.arange(0, BLOCK_D)
    tl.store(DX + rows[:, None] * D + dims[None, :], acc.to(DX.dtype.element_ty),
             mask=(rows[:, None] < M) & (dims[None, :] < D))


@triton.jit
def _lse_bwd_y(
    X, Y, LA, LB, LSE, PLSE, G_LSE, G_PLSE,  # as in _lse_bwd_x
    DY,  # (K, D) output gradient of Y, Y's dtype
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, WITH_PLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    y, lb, cols = _load_rows(Y, LB, tl.program_id(0) * BLOCK_N, K, D, WITH_PLSE, BLOCK_N, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)  # sum_i G_ij x_i
    for i0 in tl.range(0, M, BLOCK_M):
        x, la, rows = _load_rows(X, LA, i0, M, D, WITH_PLSE, BLOCK_M, BLOCK_D)
        lse, plse, g_lse, g_plse = _load_row_grads(LSE, PLSE, G_LSE, G_PLSE, rows, M, WITH_PLSE)
        s, w, p = _logits_tile(x, la, rows, y, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        g = _grad_logits(s, w, p, lse, plse, g_lse, g_plse, WITH_PLSE)
        acc += tl.dot(tl.trans(g.to(x.dtype)), x, input_precision=PRECISION, out_dtype=ACC)
    dims = tl.arange(0, BLOCK_D)
    tl.store(DY + cols[:, None] * D + dims[None, :], acc.to(DY.dtype.element_ty),
             mask=(cols[:, None] < K) & (dims[None, :] < D))


_ACC = {torch.float64: tl.float64}


def _meta(x: Tensor, with_plse: bool, exclude_diag: bool, block: tuple[int, int]) -> dict:
    """Compile-time constants shared by the three kernels, and the warps per program (4 for 64 x 64 tiles,
    8 above: flash-attention's choices for D = 64-128 on an H100)."""
    return dict(
        num_warps=4 if block[0] * block[1] <= 64 * 64 else 8,
        EXCLUDE_DIAG=exclude_diag,
        WITH_PLSE=with_plse,
        BLOCK_M=block[0],
        BLOCK_N=block[1],
        BLOCK_D=max(16, triton.next_power_of_2(x.shape[1])),
        ACC=_ACC.get(x.dtype, tl.float32),
        PRECISION="ieee" if x.dtype in (torch.float32, torch.float64) else "tf32",
    )


def lse_forward(
    x: Tensor, y: Tensor, la: Tensor, lb: Tensor, *, exclude_diag: bool, with_plse: bool, block: tuple[int, int]
) -> tuple[Tensor, Tensor | None]:
    """Launch the forward kernel; returns lse and plse (None without with_plse), each (M,) in the ACC dtype."""
    m, k, d = x.shape[0], y.shape[0], x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    lse = torch.empty(m, dtype=acc, device=x.device)
    plse = torch.empty_like(lse) if with_plse else None
    _lse_fwd[(triton.cdiv(m, block[0]),)](
        x, y, la, lb, lse, lse if plse is None else plse, m, k, d, **_meta(x, with_plse, exclude_diag, block)
    )
    return lse, plse


def lse_backward(
    x: Tensor, y: Tensor, la: Tensor, lb: Tensor, lse: Tensor, plse: Tensor | None, g_lse: Tensor,
    g_plse: Tensor | None, *, exclude_diag: bool, need_x: bool, need_y: bool, block: tuple[int, int],
) -> tuple[Tensor | None, Tensor | None]:
    """Launch the backward kernels that are needed; returns (dx, dy). plse/g_plse None: lse only."""
    m, k, d = x.shape[0], y.shape[0], x.shape[1]
    with_plse = g_plse is not None
    meta = _meta(x, with_plse, exclude_diag, block)
    args = (x, y, la, lb, lse, plse if with_plse else lse, g_lse, g_plse if with_plse else g_lse)
    dx = dy = None
    if need_x:
        dx = torch.empty_like(x)
        _lse_bwd_x[(triton.cdiv(m, block[0]),)](*args, dx, m, k, d, **meta)
    if need_y:
        dy = torch.empty_like(y)
        _lse_bwd_y[(triton.cdiv(k, block[1]),)](*args, dy, m, k, d, **meta)
    return dx, dy
