"""Fused contrastive losses: each is a few O(N) ops on `fastvid.kernels.row_stats`, which never builds the
N x N (or N x K) similarity matrix. The formulas they equal are in `fastvid.losses.reference`.

All inputs are raw features: the L2 normalisation is fused into the kernels unless normalize=False.
`backend` picks the row-statistics implementation ("auto": Triton for CUDA tensors, tiled PyTorch otherwise).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastvid.kernels.contrastive import row_stats


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float, *, normalize: bool = True, backend: str = "auto") -> Tensor:
    """NT-Xent, thesis eq. (1): z_a, z_b: (N, D) two views -> scalar, mean over the 2N anchors."""
    n = z_a.shape[0]
    z = torch.cat([z_a, z_b])  # (2N, D); row i's positive is row i +- N
    ids = torch.arange(2 * n, device=z.device) % n  # (2N,) instance id
    st = row_stats(z, z, 1.0 / temperature, ids, ids, exclude_diag=True, normalize=normalize, backend=backend)
    return (st.lse - st.psum).mean()


def info_nce_queue(
    q: Tensor, k: Tensor, queue: Tensor, temperature: float, *, normalize: bool = True, backend: str = "auto"
) -> Tensor:
    """InfoNCE against a queue, thesis eq. (2): q, k: (N, D), queue: (K, D) -> scalar; k, queue get no gradient.

    The kernel reduces the K queue logits to one log-sum-exp per query; the positive logit q.k+ is O(N D).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_acc, k_acc = q.to(acc), k.detach().to(acc)  # (N, D) each: O(N D), only for the positive logit
    if normalize:
        q_acc, k_acc = F.normalize(q_acc, dim=1), F.normalize(k_acc, dim=1)
    pos = (q_acc * k_acc).sum(1) / temperature  # (N,) q.k+ / tau
    st = row_stats(q, queue.detach().to(q.dtype), 1.0 / temperature, normalize=normalize, backend=backend)
    return (torch.logaddexp(pos, st.lse) - pos).mean()


def _distinctive_key(factors: Tensor, invariant: Sequence[bool]) -> Tensor:
    """(N,) id of each row's combination of distinctive factors: c(T, T') = 1 exactly when the ids match."""
    if factors.ndim != 2 or factors.shape[1] != len(invariant):
        raise ValueError(
            f"gdt_loss: factors must be (N, F) with F = len(invariant) = {len(invariant)}, got {tuple(factors.shape)}"
        )
    distinctive = [f for f, inv in enumerate(invariant) if not inv]
    if not distinctive:  # everything invariant: c = 1 for every pair
        return torch.zeros(factors.shape[0], dtype=torch.int64, device=factors.device)
    return torch.unique(factors[:, distinctive], dim=0, return_inverse=True)[1]


def gdt_loss(
    v: Tensor, a: Tensor, factors: Tensor, invariant: Sequence[bool], temperature: float, *,
    cross_modal: bool = True, normalize: bool = True, backend: str = "auto",
) -> Tensor:
    """GDT eq. (1): v, a: (N, D), factors: (N, F) int64, invariant: F bools -> scalar.

    Row n of v and row n of a are two transformations that differ only in their last factor (the modality,
    or in Table 1 rows (a)-(d) the second augmentation draw g). Positives are the pairs that agree on every
    distinctive factor; w picks the pairs eq. (1) sums over:
      cross_modal=True:  w = delta(m != m') (sec. 3.2): video anchors contrast against the N audio rows and
                         audio anchors against the N video rows;
      cross_modal=False: w = delta(T != T') (SimCLR's, sec. 3.1): every anchor against the other 2N - 1 rows;
                         with one factor besides g this is NT-Xent (Table 1 row (a)).
    Sum over positive pairs of lse - s = npos * lse - psum, divided by the number of positive pairs.
    """
    key = _distinctive_key(factors, invariant)
    beta = 1.0 / temperature
    if not cross_modal:
        z, key2 = torch.cat([v, a]), torch.cat([key, key])  # (2N, D), (2N,)
        st = row_stats(z, z, beta, key2, key2, exclude_diag=True, normalize=normalize, backend=backend)
        return (st.npos * st.lse - st.psum).sum() / st.npos.sum()
    st_v = row_stats(v, a, beta, key, key, normalize=normalize, backend=backend)  # video anchors
    st_a = row_stats(a, v, beta, key, key, normalize=normalize, backend=backend)  # audio anchors
    total = (st_v.npos * st_v.lse - st_v.psum).sum() + (st_a.npos * st_a.lse - st_a.psum).sum()
    return total / (st_v.npos.sum() + st_a.npos.sum())


def mil_nce(
    z: Tensor, cluster_ids: Tensor, temperature: float, *, normalize: bool = True, backend: str = "auto"
) -> Tensor:
    """MIL-NCE, Vi2CLR eq. (2): z: (N, D), cluster_ids: (N,) -> scalar, mean over anchors with a positive."""
    st = row_stats(z, z, 1.0 / temperature, cluster_ids, cluster_ids, exclude_diag=True, normalize=normalize,
                   with_plse=True, backend=backend)
    has_pos = st.npos > 0  # an anchor alone in its cluster has plse = -inf and no term
    return (st.lse - st.plse)[has_pos].mean()


def center_nce(
    z: Tensor, cluster_ids: Tensor, centroids: Tensor, concentration: Tensor, *,
    normalize: bool = True, backend: str = "auto",
) -> Tensor:
    """CenterNCE, Vi2CLR eq. (3): z: (N, D), cluster_ids: (N,), centroids: (C, D), concentration: (C,) -> scalar.

    The per-cluster concentration phi_j is a per-column inverse temperature; centroids get no gradient.
    """
    c = centroids.shape[0]
    if concentration.shape != (c,):
        raise ValueError(f"center_nce: concentration must be ({c},), got {tuple(concentration.shape)}")
    ids = torch.arange(c, device=z.device)
    st = row_stats(z, centroids.detach().to(z.dtype), 1.0 / concentration.detach(), cluster_ids, ids,
                   normalize=normalize, backend=backend)
    return (st.lse - st.psum).mean()


ACCURACY_ROWS = 1024  # anchors per block in `top1_accuracy`: a (1024, K) score block at a time


@torch.no_grad()
def top1_accuracy(
    a: Tensor, b: Tensor, labels_a: Tensor, labels_b: Tensor, *, beta: Tensor | float = 1.0,
    exclude_diag: bool = False, normalize: bool = True,
) -> Tensor:
    """Pretext top-1 accuracy (as MoCo and solo-learn log it): the fraction of anchors a: (M, D) whose
    highest-scoring candidate in b: (K, D) is a positive. Score s_ij = x_i . y_j beta_j with x, y the rows
    of a, b (L2-normalised unless normalize=False), beta a scalar or (K,); positives are labels_a[i] ==
    labels_b[j] (labels (M,), (K,)); exclude_diag leaves out j == i (a and b the same set). -> () float32.

    No gradient; anchors go `ACCURACY_ROWS` at a time, so memory is O(ACCURACY_ROWS K), never M x K.
    """
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.detach().to(acc), b.detach().to(acc)
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    y = y * torch.as_tensor(beta, dtype=acc, device=y.device).expand(y.shape[0])[:, None]  # (K, D)
    hits = torch.zeros((), dtype=torch.float32, device=a.device)
    for start in range(0, x.shape[0], ACCURACY_ROWS):
        s = x[start:start + ACCURACY_ROWS] @ y.T  # (rows, K)
        if exclude_diag:
            rows = torch.arange(s.shape[0], device=s.device)
            s[rows, rows + start] = float("-inf")
        best = s.argmax(dim=1)  # (rows,) ties go to the lowest index
        hits += (labels_b[best] == labels_a[start:start + ACCURACY_ROWS]).sum()
    return hits / max(x.shape[0], 1)


@torch.no_grad()
def gdt_top1_accuracy(v: Tensor, a: Tensor, factors: Tensor, invariant: Sequence[bool], *,
                      cross_modal: bool = True) -> Tensor:
    """`top1_accuracy` over the pairs `gdt_loss` contrasts (same arguments): () float32, the fraction of the
    2N anchors whose best candidate under w agrees with it on every distinctive factor."""
    key = _distinctive_key(factors, invariant)
    if not cross_modal:
        z, key2 = torch.cat([v, a]), torch.cat([key, key])  # (2N, D), (2N,)
        return top1_accuracy(z, z, key2, key2, exclude_diag=True)
    return (top1_accuracy(v, a, key, key) + top1_accuracy(a, v, key, key)) / 2
