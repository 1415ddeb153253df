"""Naive contrastive losses written straight from the papers' equations.

They build the full similarity matrix and are meant for tests (in float64) and as the baseline in
`benchmarks/losses.py`; training goes through the fused versions in `fastvid.losses`. Sums over anchors in
the papers are divided by the number of terms (a mean), so a loss does not scale with the batch size.

Papers: thesis = Simion-Constantinescu, "videoSimCLR / videoMoCo" (TU Delft), eqs. (1)-(2);
C&L = Sayed et al., "Cross and Learn", eqs. (1)-(4); GDT = Patrick et al., eq. (1);
Vi2CLR = Diba et al., eqs. (2)-(3).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Tensor, normalize: bool) -> Tensor:
    """Rows scaled to unit L2 norm (the papers' cosine similarity) when `normalize` is set."""
    return F.normalize(x, dim=-1) if normalize else x


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float, *, normalize: bool = True) -> Tensor:
    """NT-Xent, thesis eq. (1): z_a, z_b: (N, D) two views of N clips -> scalar, mean over all 2N anchors.

    L_ij = -log exp(sim(p_i, p_j)/tau) / sum_{k != i} exp(sim(p_i, p_k)/tau), sim = cosine similarity.
    """
    n = z_a.shape[0]
    p = _unit(torch.cat([z_a, z_b]), normalize)  # (2N, D)
    sim = p @ p.T / temperature  # (2N, 2N)
    eye = torch.eye(2 * n, dtype=torch.bool, device=p.device)
    denom = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)  # (2N,) sum over k != i
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(p.device)  # (2N,) index of p_j
    return (denom - sim[torch.arange(2 * n), partner]).mean()


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float, *, normalize: bool = True) -> Tensor:
    """InfoNCE against a queue, thesis eq. (2): q, k: (N, D), queue: (K, D) -> scalar, mean over N queries.

    L_q = -log exp(q.k+/tau) / sum_{i=0..K} exp(q.k_i/tau) with k_0 = k+ and k_1..k_K the queue.
    k and the queue come from the momentum encoder and get no gradient.
    """
    q = _unit(q, normalize)
    k, queue = _unit(k.detach(), normalize), _unit(queue.detach(), normalize)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / temperature  # (N, 1 + K), k+ first
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def cosine_distance(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """C&L eq. (2): d(a, b) = 1 - a.b / (|a| |b|), with eps inside the square root of each norm."""
    norm_a = torch.sqrt((a * a).sum(-1) + eps)
    norm_b = torch.sqrt((b * b).sum(-1) + eps)
    return 1 - (a * b).sum(-1) / (norm_a * norm_b)


def cross_and_learn_loss(
    rgb: Tensor, flow: Tensor, *, use_cross: bool = True, use_div: bool = True, eps: float = 1e-5
) -> dict[str, Tensor]:
    """Cross and Learn, eqs. (1)-(4): rgb = f(x), flow = g(y), both (B, 2, D): B tuples of pairs i, j.

    L_cross = 1/2 [d(f(x_i), g(y_i)) + d(f(x_j), g(y_j))], L_div = -1/2 [d(f(x_i), f(x_j)) + d(g(y_i), g(y_j))],
    L = L_cross + L_div (terms switched off by `use_cross` / `use_div`), each averaged over the B tuples.
    """
    f_i, f_j, g_i, g_j = rgb[:, 0], rgb[:, 1], flow[:, 0], flow[:, 1]  # (B, D) each
    cross = 0.5 * (cosine_distance(f_i, g_i, eps) + cosine_distance(f_j, g_j, eps)).mean()
    div = -0.5 * (cosine_distance(f_i, f_j, eps) + cosine_distance(g_i, g_j, eps)).mean()
    loss = use_cross * cross + use_div * div
    return {"loss": loss, "cross": cross, "div": div}


def gdt_loss(
    v: Tensor, a: Tensor, factors: Tensor, invariant: Sequence[bool], temperature: float, *,
    cross_modal: bool = True, normalize: bool = True
) -> Tensor:
    """GDT eq. (1) over the 2N transformations T = (factors[n], m) with m in {video, audio}.

    v, a: (N, D) video / audio embeddings of row n; factors: (N, F) int64 labels of the other transformation
    factors (sample index i, time shift, time reversal, ...); invariant[f] picks c(t_f, t_f') = 1 (invariant)
    or delta(t_f = t_f') (distinctive). c(T, T') = prod_f c(t_f, t_f'); the modality is invariant, and
    w(T, T') = delta(m != m') keeps cross-modal pairs only (sec. 3.2), or with cross_modal=False SimCLR's
    w(T, T') = delta(T != T') (sec. 3.1; Table 1 rows (a)-(d), where m is a second augmentation). Returns the
    double sum of eq. (1) divided by the number of pairs with c * w = 1.
    """
    if factors.shape[1] != len(invariant):
        raise ValueError(f"gdt_loss: factors has {factors.shape[1]} columns but invariant has {len(invariant)}")
    n = v.shape[0]
    phi = torch.cat([_unit(v, normalize), _unit(a, normalize)])  # (2N, D) Phi(x(T))
    fac = torch.cat([factors, factors])  # (2N, F)
    modality = torch.cat([torch.zeros(n), torch.ones(n)]).to(v.device)  # (2N,)
    c = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=v.device)
    for f, inv in enumerate(invariant):
        if not inv:
            c &= fac[:, f, None] == fac[None, :, f]
    if cross_modal:
        w = modality[:, None] != modality[None, :]  # (2N, 2N)
    else:
        w = ~torch.eye(2 * n, dtype=torch.bool, device=v.device)  # every T'' != T
    sim = phi @ phi.T / temperature  # (2N, 2N)
    log_denom = torch.logsumexp(sim.masked_fill(~w, float("-inf")), dim=1, keepdim=True)  # (2N, 1)
    cw = (c & w).to(sim.dtype)
    return -(cw * (sim - log_denom)).sum() / cw.sum()


def mil_nce(z: Tensor, cluster_ids: Tensor, temperature: float, *, normalize: bool = True) -> Tensor:
    """Multi-instance InfoNCE, Vi2CLR eq. (2): z: (N, D), cluster_ids: (N,) -> scalar.

    -log sum_{p in P_i} exp(r_i.r_p/tau) / (sum_{p in P_i} exp(r_i.r_p/tau) + sum_{n in N_i} exp(r_i.r_n/tau))
    with P_i = the other rows of i's cluster and N_i = the rows of other clusters; averaged over the anchors
    that have at least one positive (an anchor alone in its cluster has no term).
    """
    r = _unit(z, normalize)
    sim = r @ r.T / temperature  # (N, N)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = (cluster_ids[:, None] == cluster_ids[None, :]) & ~eye  # (N, N) P_i
    num = torch.logsumexp(sim.masked_fill(~pos, float("-inf")), dim=1)  # (N,)
    den = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)  # (N,) P_i and N_i
    has_pos = pos.any(dim=1)
    return (den - num)[has_pos].mean()


def center_nce(
    z: Tensor, cluster_ids: Tensor, centroids: Tensor, concentration: Tensor, *, normalize: bool = True
) -> Tensor:
    """CenterNCE, Vi2CLR eq. (3): z: (N, D), cluster_ids: (N,), centroids: (C, D), concentration: (C,).

    -log exp(r_i.c_s/phi_s) / sum_{j=1..k} exp(r_i.c_j/phi_j), s = cluster of i, averaged over N. Centroids
    and concentrations are clustering results and get no gradient.
    """
    r = _unit(z, normalize)
    c = _unit(centroids.detach(), normalize)
    logits = (r @ c.T) / concentration.detach()[None, :]  # (N, C)
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, cluster_ids[:, None]).squeeze(1)).mean()
