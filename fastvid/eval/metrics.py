"""Scores shared by every protocol: top-k accuracy, retrieval recall at k, kNN votes, a binomial CI.

All functions are pure and work on CPU tensors; they are the numbers the papers report, so the tests
check them on cases small enough to compute by hand.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest scores, for each k (capped at the class count).

    scores: (N, C) logits or probabilities; labels: (N,) int64 in [0, C)."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]  # (N, kmax)
    return {f"top{k}": hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def cosine_neighbours(query: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k gallery rows most cosine-similar to each query row: (similarities, indices), both (Q, k).

    query: (Q, D), gallery: (G, D). Ties are broken towards the lower gallery index (stable sort), so
    results are reproducible."""
    if k > gallery.shape[0]:
        raise ValueError(f"asked for {k} neighbours but the gallery holds {gallery.shape[0]} items")
    sim = F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T  # (Q, G)
    order = sim.argsort(dim=1, descending=True, stable=True)[:, :k]  # (Q, k)
    return sim.gather(1, order), order


def retrieval_recall(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                     gallery_labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, float]:
    """Recall at k (GDT Table 3, Vi2CLR Table 5): a query counts at k if any of its k nearest gallery
    items (cosine similarity) has the query's class. ks larger than the gallery are clipped to it."""
    kmax = min(max(ks), gallery.shape[0])
    _, nn_idx = cosine_neighbours(query, gallery, kmax)  # (Q, kmax)
    hit = gallery_labels[nn_idx] == query_labels[:, None]  # (Q, kmax)
    return {f"R@{k}": hit[:, :min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


def knn_votes(query: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor, num_classes: int,
              k: int) -> torch.Tensor:
    """Class scores (Q, C) from a majority vote of the k nearest gallery items, divided by k.

    A tie between classes goes to the class whose first neighbour ranks higher: each vote adds 1 and
    each class also gets a bonus below 1 set by the rank of its best neighbour (rank r: 0.5 (k - r) / k)."""
    _, nn_idx = cosine_neighbours(query, gallery, k)  # (Q, k)
    votes = torch.zeros(query.shape[0], num_classes)  # (Q, C)
    votes.scatter_add_(1, gallery_labels[nn_idx], torch.ones(nn_idx.shape))
    rank_bonus = torch.linspace(0.5, 0.5 / k, k).expand(nn_idx.shape).contiguous()  # (Q, k): rank 0 largest
    bonus = torch.zeros_like(votes).scatter_reduce_(1, gallery_labels[nn_idx], rank_bonus, "amax")
    return (votes + bonus) / k


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); unlike the normal approximation it
    stays inside [0, 1] and is sensible at 0 or n successes."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2)).item()
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def average_by_group(values: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows of `values` (N, ...) that share a group id (N,): (unique groups (G,), means (G, ...)).

    This is how a test video is scored over several clips: its clips' class scores are averaged."""
    uniq, inverse = groups.unique(sorted=True, return_inverse=True)
    sums = torch.zeros((len(uniq),) + values.shape[1:], dtype=values.dtype).index_add_(0, inverse, values)
    counts = torch.zeros(len(uniq), dtype=values.dtype).index_add_(0, inverse, torch.ones(len(groups), dtype=values.dtype))
    return uniq, sums / counts.view(-1, *([1] * (values.ndim - 1)))


def group_labels(labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The label of each group (G,), in the order of `groups.unique(sorted=True)`; every clip of a video
    must carry its video's label, so a disagreement is a data error, not something to average away."""
    uniq, inverse = groups.unique(sorted=True, return_inverse=True)
    first = torch.full((len(uniq),), -1, dtype=labels.dtype).scatter_(0, inverse, labels)  # (G,)
    bad = (first[inverse] != labels).nonzero()
    if len(bad):
        g = uniq[inverse[bad[0, 0]]].item()
        raise ValueError(f"clips of video {g} carry different labels: {sorted(set(labels[groups == g].tolist()))}")
    return first
