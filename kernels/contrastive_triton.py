"""Triton kernels for the contrastive row statistics (the maths is in `fastvid.kernels.contrastive`).

For anchors a_i (M, D) and candidates b_j (K, D) with logits s_ij = beta_j * ra_i * rb_j * (a_i . b_j)
(ra, rb: inverse L2 norms, or ones; beta: per-column inverse temperature), each program owns BLOCK_M rows
and walks over the columns in BLOCK_N tiles with an online log-sum-exp, so only a BLOCK_M x BLOCK_N tile of
logits ever exists. Masks: W_ij = j valid and (j != i when EXCLUDE_DIAG); P_ij = W_ij and LA_i == LB_j.
Outputs per row: lse = log sum_W exp(s), plse = log sum_P exp(s), psum = sum_P s, npos = |P|.
The backward kernels recompute the logits from the saved lse/plse: one kernel owns rows (dA), one owns
columns (dB), so no atomics are needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _load_cols(
    B, RB, BETA, LB,  # (K, D) candidate features, (K,) inverse norms, (K,) beta, (K,) int64 labels
    j0, K, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One tile of candidates: features (BN, BD), rb * beta (BN,), labels (BN,), column indices (BN,)."""
    cols = j0 + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < K
    b = tl.load(B + cols[:, None] * D + dims[None, :], mask=col_ok[:, None] & (dims[None, :] < D), other=0.0)
    col_scale = tl.load(RB + cols, mask=col_ok, other=0.0) * tl.load(BETA + cols, mask=col_ok, other=0.0)
    lb = tl.load(LB + cols, mask=col_ok, other=-1)
    return b, col_scale, lb, cols


@triton.jit
def _logits_tile(
    a, ra, la, rows,  # (BM, BD) anchors, (BM,) inverse norms, (BM,) labels, (BM,) row indices
    b, col_scale, lb, cols,  # a tile from _load_cols
    M, K, EXCLUDE_DIAG: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Logits s (BM, BN) of one tile and its masks W (kept pairs) and P (positive pairs)."""
    s = tl.dot(a, tl.trans(b), input_precision=PRECISION, out_dtype=ACC)
    s = s * ra[:, None] * col_scale[None, :]
    w = (rows[:, None] < M) & (cols[None, :] < K)
    if EXCLUDE_DIAG:
        w = w & (rows[:, None] != cols[None, :])
    p = w & (la[:, None] == lb[None, :])
    return s, w, p


@triton.jit
def _row_stats_fwd(
    A, B,  # (M, D), (K, D) features, row-major contiguous, same dtype
    RA, RB,  # (M,), (K,) inverse row norms in ACC dtype (ones when not normalising)
    BETA,  # (K,) per-column inverse temperature, ACC dtype
    LA, LB,  # (M,), (K,) int64 labels: positives are pairs with equal labels
    LSE, PLSE, PSUM, NPOS,  # (M,) outputs in ACC dtype
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    a = tl.load(A + rows[:, None] * D + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < D), other=0.0)
    ra = tl.load(RA + rows, mask=row_ok, other=0.0)
    la = tl.load(LA + rows, mask=row_ok, other=-2)
    neg_inf = float("-inf")
    m_w = tl.full([BLOCK_M], neg_inf, ACC)  # running max over W
    l_w = tl.zeros([BLOCK_M], ACC)  # running sum of exp(s - m_w) over W
    m_p = tl.full([BLOCK_M], neg_inf, ACC)
    l_p = tl.zeros([BLOCK_M], ACC)
    psum = tl.zeros([BLOCK_M], ACC)
    npos = tl.zeros([BLOCK_M], ACC)
    for j0 in tl.range(0, K, BLOCK_N):
        b, col_scale, lb, cols = _load_cols(B, RB, BETA, LB, j0, K, D, BLOCK_N, BLOCK_D)
        s, w, p = _logits_tile(a, ra, la, rows, b, col_scale, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        # Online log-sum-exp; a row with nothing seen yet keeps m = -inf, so shift by 0 instead.
        m_new = tl.maximum(m_w, tl.max(tl.where(w, s, neg_inf), 1))
        shift = tl.where(m_new == neg_inf, 0.0, m_new)
        l_w = l_w * tl.exp(m_w - shift) + tl.sum(tl.where(w, tl.exp(s - shift[:, None]), 0.0), 1)
        m_w = m_new
        m_new = tl.maximum(m_p, tl.max(tl.where(p, s, neg_inf), 1))
        shift = tl.where(m_new == neg_inf, 0.0, m_new)
        l_p = l_p * tl.exp(m_p - shift) + tl.sum(tl.where(p, tl.exp(s - shift[:, None]), 0.0), 1)
        m_p = m_new
        psum += tl.sum(tl.where(p, s, 0.0), 1)
        npos += tl.sum(p.to(ACC), 1)
    lse = tl.where(m_w == neg_inf, 0.0, m_w) + tl.log(l_w)  # -inf for a row with an empty W
    plse = tl.where(m_p == neg_inf, 0.0, m_p) + tl.log(l_p)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(PLSE + rows, plse, mask=row_ok)
    tl.store(PSUM + rows, psum, mask=row_ok)
    tl.store(NPOS + rows, npos, mask=row_ok)


@triton.jit
def _grad_logits(s, w, p, lse, plse, g_lse, g_plse, g_psum):
    """dLoss/ds_ij = g_lse_i softmax_W(s)_ij + P_ij (g_plse_i softmax_P(s)_ij + g_psum_i)."""
    g = tl.where(w, g_lse[:, None] * tl.exp(s - lse[:, None]), 0.0)
    return g + tl.where(p, g_plse[:, None] * tl.exp(s - plse[:, None]) + g_psum[:, None], 0.0)


@triton.jit
def _row_stats_bwd_a(
    A, B, RA, RB, BETA, LA, LB,  # as in _row_stats_fwd
    LSE, PLSE,  # (M,) saved forward statistics
    G_LSE, G_PLSE, G_PSUM,  # (M,) incoming gradients of lse, plse, psum (ACC dtype)
    DA,  # (M, D) output gradient of A, A's dtype
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    tile_mask = row_ok[:, None] & (dims[None, :] < D)
    a = tl.load(A + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    ra = tl.load(RA + rows, mask=row_ok, other=0.0)
    la = tl.load(LA + rows, mask=row_ok, other=-2)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    plse = tl.load(PLSE + rows, mask=row_ok, other=0.0)
    g_lse = tl.load(G_LSE + rows, mask=row_ok, other=0.0)
    g_plse = tl.load(G_PLSE + rows, mask=row_ok, other=0.0)
    g_psum = tl.load(G_PSUM + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)  # sum_j G_ij beta_j rb_j b_j
    for j0 in tl.range(0, K, BLOCK_N):
        b, col_scale, lb, cols = _load_cols(B, RB, BETA, LB, j0, K, D, BLOCK_N, BLOCK_D)
        s, w, p = _logits_tile(a, ra, la, rows, b, col_scale, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        g = _grad_logits(s, w, p, lse, plse, g_lse, g_plse, g_psum) * col_scale[None, :]
        acc += tl.dot(g.to(b.dtype), b, input_precision=PRECISION, out_dtype=ACC)
    if NORMALIZE:  # chain rule through a / |a|: ra * (acc - a_hat (a_hat . acc))
        a_acc = a.to(ACC)
        acc = ra[:, None] * acc - (ra * ra * ra * tl.sum(a_acc * acc, 1))[:, None] * a_acc
    tl.store(DA + rows[:, None] * D + dims[None, :], acc.to(DA.dtype.element_ty), mask=tile_mask)


@triton.jit
def _row_stats_bwd_b(
    A, B, RA, RB, BETA, LA, LB, LSE, PLSE, G_LSE, G_PLSE, G_PSUM,  # as in _row_stats_bwd_a
    DB,  # (K, D) output gradient of B, B's dtype
    M, K, D,
    EXCLUDE_DIAG: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    b, col_scale, lb, cols = _load_cols(B, RB, BETA, LB, tl.program_id(0) * BLOCK_N, K, D, BLOCK_N, BLOCK_D)
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims[None, :] < D
    acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)  # sum_i G_ij ra_i a_i (times beta_j rb_j below)
    for i0 in tl.range(0, M, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        a = tl.load(A + rows[:, None] * D + dims[None, :], mask=row_ok[:, None] & dim_ok, other=0.0)
        ra = tl.load(RA + rows, mask=row_ok, other=0.0)
        la = tl.load(LA + rows, mask=row_ok, other=-2)
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        plse = tl.load(PLSE + rows, mask=row_ok, other=0.0)
        g_lse = tl.load(G_LSE + rows, mask=row_ok, other=0.0)
        g_plse = tl.load(G_PLSE + rows, mask=row_ok, other=0.0)
        g_psum = tl.load(G_PSUM + rows, mask=row_ok, other=0.0)
        s, w, p = _logits_tile(a, ra, la, rows, b, col_scale, lb, cols, M, K, EXCLUDE_DIAG, ACC, PRECISION)
        g = _grad_logits(s, w, p, lse, plse, g_lse, g_plse, g_psum) * ra[:, None]
        acc += tl.dot(tl.trans(g.to(a.dtype)), a, input_precision=PRECISION, out_dtype=ACC)
    col_ok = cols < K
    acc = acc * col_scale[:, None]  # beta_j rb_j
    if NORMALIZE:  # chain rule through b / |b|, as for a
        rb = tl.load(RB + cols, mask=col_ok, other=0.0)
        b_acc = b.to(ACC)
        acc = acc - (rb * rb * tl.sum(b_acc * acc, 1))[:, None] * b_acc
    tl.store(DB + cols[:, None] * D + dims[None, :], acc.to(DB.dtype.element_ty), mask=col_ok[:, None] & dim_ok)


_ACC = {torch.float64: tl.float64}


def _meta(a: Tensor, block_m: int, block_n: int) -> dict:
    """Compile-time constants shared by the three kernels."""
    return dict(
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(a.shape[1])),
        ACC=_ACC.get(a.dtype, tl.float32),
        PRECISION="ieee" if a.dtype in (torch.float32, torch.float64) else "tf32",
    )


def row_stats_forward(
    a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, beta: Tensor, la: Tensor, lb: Tensor, *,
    exclude_diag: bool, block_m: int, block_n: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the forward kernel; returns (lse, plse, psum, npos), each (M,) in ra's dtype."""
    m, k, d = a.shape[0], b.shape[0], a.shape[1]
    lse, plse, psum, npos = (torch.empty(m, dtype=ra.dtype, device=a.device) for _ in range(4))
    grid = (triton.cdiv(m, block_m),)
    _row_stats_fwd[grid](
        a, b, ra, rb, beta, la, lb, lse, plse, psum, npos, m, k, d,
        EXCLUDE_DIAG=exclude_diag, **_meta(a, block_m, block_n),
    )
    return lse, plse, psum, npos


def row_stats_backward(
    a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, beta: Tensor, la: Tensor, lb: Tensor,
    lse: Tensor, plse: Tensor, g_lse: Tensor, g_plse: Tensor, g_psum: Tensor, *,
    exclude_diag: bool, normalize: bool, need_a: bool, need_b: bool, block_m: int, block_n: int,
) -> tuple[Tensor | None, Tensor | None]:
    """Launch the backward kernels that are needed; returns (dA, dB)."""
    m, k, d = a.shape[0], b.shape[0], a.shape[1]
    meta = dict(EXCLUDE_DIAG=exclude_diag, NORMALIZE=normalize, **_meta(a, block_m, block_n))
    args = (a, b, ra, rb, beta, la, lb, lse, plse, g_lse, g_plse, g_psum)
    da = db = None
    if need_a:
        da = torch.empty_like(a)
        _row_stats_bwd_a[(triton.cdiv(m, block_m),)](*args, da, m, k, d, **meta)
    if need_b:
        db = torch.empty_like(b)
        _row_stats_bwd_b[(triton.cdiv(k, block_n),)](*args, db, m, k, d, **meta)
    return da, db
