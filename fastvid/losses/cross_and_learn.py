"""Cross and Learn loss (Sayed et al., eqs. (1)-(4)), fused in plain PyTorch.

The loss only compares the 2 pairs inside each of B tuples: 4 distances per tuple, O(B D) work and memory,
with no B x B matrix to avoid. A tiled kernel would buy nothing, so this computes all norms in one pass and
the four dot products in one batched op instead of the reference's four separate distance calls.
"""
from __future__ import annotations

import torch
from torch import Tensor


def cross_and_learn_loss(
    rgb: Tensor, flow: Tensor, *, use_cross: bool = True, use_div: bool = True, eps: float = 1e-5
) -> dict[str, Tensor]:
    """rgb = f(x), flow = g(y): (B, 2, D) each (pair i, pair j of every tuple) -> {"loss", "cross", "div"}.

    d(a, b) = 1 - a.b / (sqrt(|a|^2 + eps) sqrt(|b|^2 + eps)) (eq. 2, eps inside the root);
    cross = mean 1/2 [d(f_i, g_i) + d(f_j, g_j)], div = -mean 1/2 [d(f_i, f_j) + d(g_i, g_j)], loss = cross + div.
    """
    if rgb.ndim != 3 or rgb.shape[1] != 2 or rgb.shape != flow.shape:
        raise ValueError(f"cross_and_learn_loss: rgb and flow must both be (B, 2, D), got {tuple(rgb.shape)}, "
                         f"{tuple(flow.shape)}")
    acc = torch.float64 if rgb.dtype == torch.float64 else torch.float32
    feats = torch.stack([rgb, flow], 1).to(acc)  # (B, 2 modalities, 2 pairs, D)
    unit = feats * torch.rsqrt((feats * feats).sum(-1, keepdim=True) + eps)  # (B, 2, 2, D)
    cross_sim = (unit[:, 0] * unit[:, 1]).sum(-1)  # (B, 2): f_i.g_i, f_j.g_j
    div_sim = (unit[:, :, 0] * unit[:, :, 1]).sum(-1)  # (B, 2): f_i.f_j, g_i.g_j
    cross = (1 - cross_sim).mean()  # mean over B and the two pairs = mean of 1/2 [.. + ..]
    div = -(1 - div_sim).mean()
    return {"loss": use_cross * cross + use_div * div, "cross": cross, "div": div}
