"""Clustering for Vi2CLR's pseudo-labels: FINCH (the paper's default) and k-means (its alternative).

FINCH, Sarfraz et al., CVPR 2019 ("Efficient parameter-free clustering using first neighbor relations"):
1. each point's first neighbour kappa_i is its nearest other point (cosine distance);
2. i and j are linked when j = kappa_i, or kappa_j = i, or kappa_i = kappa_j; the connected components of
   that graph are the first partition;
3. the clusters' means are clustered the same way, giving the next (coarser) partition, and so on until one
   cluster is left or nothing merges any more (that last step is not kept, as in the authors' code).
Vi2CLR (sec. 4.3) takes the second partition; `select_partition` can instead take the one whose number of
clusters is nearest a requested count, and k-means gets FINCH's estimated K (as the paper does) unless one
is given.

Each cluster also gets ProtoNCE's concentration (Li et al., PCL, eq. 12), which Vi2CLR eq. (3) divides by:
phi = sum_z |v_z - c| / (Z log(Z + alpha)) over the Z members; a singleton gets the largest phi; phi is
clipped to its 10th-90th percentiles and scaled so that its mean equals the temperature.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor


@dataclass
class Clusters:
    """One clustering of N features: what Vi2CLR's losses read (and what its checkpoint keeps)."""

    ids: Tensor  # (N,) int64 cluster of each sample, 0..C-1
    centroids: Tensor  # (C, D) L2-normalised cluster means
    concentration: Tensor  # (C,) phi of each cluster, mean = temperature


def nearest(queries: Tensor, keys: Tensor, *, skip_self: bool = False, max_elements: int = 2**26
            ) -> tuple[Tensor, Tensor]:
    """Largest dot product per row: queries (Q, D), keys (K, D) -> (value (Q,), index (Q,) int64).

    Rows go `max_elements // K` at a time so memory stays bounded on a whole dataset (250K x 250K
    similarities would be 250 GB). `skip_self` (queries are the keys) leaves out each row's own column.
    Ties go to the lowest index.
    """
    step = max(1, max_elements // keys.shape[0])
    values = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    index = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], step):
        sim = queries[start:start + step] @ keys.T  # (step, K)
        if skip_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")  # a point is not its own neighbour
        values[start:start + step], index[start:start + step] = sim.max(dim=1)
    return values, index


def first_neighbours(x: Tensor) -> Tensor:
    """x: (N, D) -> (N,) int64 index of each row's nearest other row by cosine distance.

    Ties go to the lowest index, which rules out first-neighbour cycles longer than two.
    """
    if x.shape[0] < 2:
        raise ValueError(f"first neighbours need at least 2 points, got {x.shape[0]}")
    unit = F.normalize(x.float(), dim=1)  # (N, D)
    return nearest(unit, unit, skip_self=True)[1]  # largest cosine similarity = smallest cosine distance


def _components(kappa: Tensor) -> Tensor:
    """kappa: (N,) first neighbours -> (N,) int64 connected-component labels of FINCH's graph.

    Linking i to kappa_i (undirected) connects exactly the pairs FINCH's adjacency names: kappa_i = kappa_j
    joins i and j through kappa_i. Labels are numbered in order of each component's lowest index.
    """
    n = kappa.shape[0]
    graph = coo_matrix((np.ones(n), (np.arange(n), kappa.cpu().numpy())), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    return torch.from_numpy(labels).long().to(kappa.device)


def _means(x: Tensor, ids: Tensor, num: int) -> Tensor:
    """x: (N, D), ids: (N,) in [0, num) -> (num, D) mean of each cluster's rows."""
    sums = torch.zeros(num, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, ids, x)  # (num, D)
    counts = torch.bincount(ids, minlength=num).clamp_min(1).to(x.dtype)  # (num,)
    return sums / counts[:, None]


def finch(x: Tensor) -> list[Tensor]:
    """FINCH's hierarchy of partitions of x: (N, D), finest first; each entry (N,) int64 labels 0..C_k-1."""
    x = x.float()
    ids = _components(first_neighbours(x))  # (N,) first partition
    partitions = [ids]
    while True:
        num = int(ids.max()) + 1
        if num < 2:
            break
        merged = _components(first_neighbours(_means(x, ids, num)))  # (num,) label of each cluster
        if int(merged.max()) + 1 >= num:  # nothing merged: the hierarchy has converged
            break
        ids = merged[ids]  # (N,)
        if int(ids.max()) == 0:  # everything in one cluster: not a useful partition (the authors drop it)
            break
        partitions.append(ids)
    return partitions


def select_partition(partitions: list[Tensor], *, level: int | None = None, num_clusters: int | None = None
                     ) -> Tensor:
    """One partition of FINCH's hierarchy: the `level`-th (1-based, clamped to the coarsest available), or
    the one whose number of clusters is nearest `num_clusters` (the finer one on a tie)."""
    if (level is None) == (num_clusters is None):
        raise ValueError("select_partition: give exactly one of level and num_clusters")
    if level is not None:
        if level < 1:
            raise ValueError(f"select_partition: level must be >= 1, got {level}")
        return partitions[min(level, len(partitions)) - 1]
    counts = [int(p.max()) + 1 for p in partitions]
    best = min(range(len(partitions)), key=lambda k: (abs(counts[k] - num_clusters), -counts[k]))
    return partitions[best]


def _kmeans_pp(unit: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ seeds (Arthur and Vassilvitskii 2007; the greedy form scikit-learn uses):
    unit: (N, D) -> (k, D). Each step draws 2 + log k candidates with probability proportional to their
    squared distance to the nearest seed so far and keeps the one that lowers the total the most."""
    n = unit.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    seeds = [unit[first]]
    d2 = (2 - 2 * unit @ unit[first]).clamp_min(0)  # (N,) squared distance on the unit sphere
    for _ in range(1, k):
        u = torch.rand(trials, generator=gen, dtype=torch.float64).to(unit.device)  # (L,)
        cdf = torch.cumsum(d2.double(), 0)  # (N,)
        picks = torch.searchsorted(cdf, u * cdf[-1]).clamp_max(n - 1)  # (L,) stays on the device: no sync
        cand = torch.minimum(d2[None], (2 - 2 * unit[picks] @ unit.T).clamp_min(0))  # (L, N)
        best = cand.sum(dim=1).argmin()
        seeds.append(unit[picks[best]])
        d2 = cand[best]
    return torch.stack(seeds)  # (k, D)


def kmeans(x: Tensor, k: int, *, iters: int = 20, seed: int = 0) -> Tensor:
    """Lloyd's k-means from greedy k-means++ seeds on the L2-normalised rows of x: (N, D) -> (N,) int64 labels
    0..k-1. An emptied cluster is re-seeded with the row farthest from its centroid, so all k stay in use.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, {n}], got {k}")
    unit = F.normalize(x.float(), dim=1)  # (N, D)
    centroids = _kmeans_pp(unit, k, torch.Generator().manual_seed(seed))  # (k, D)
    ids = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        best, ids = nearest(unit, centroids)  # (N,) similarity to and index of the closest centroid
        counts = torch.bincount(ids, minlength=k)  # (k,)
        for empty in torch.nonzero(counts == 0).flatten().tolist():  # rare: a CPU sync per empty cluster
            far = int(best.argmin())
            ids[far], best[far] = empty, float("inf")
        centroids = _means(unit, ids, k)  # (k, D)
    return ids


def concentration(x: Tensor, ids: Tensor, means: Tensor, temperature: float, alpha: float = 10.0) -> Tensor:
    """PCL's phi per cluster: x: (N, D) features, ids: (N,), means: (C, D) -> (C,) with mean = temperature."""
    num = means.shape[0]
    dist = (x - means[ids]).norm(dim=1)  # (N,) |v_z - c|
    size = torch.bincount(ids, minlength=num).to(x.dtype)  # (C,) Z
    total = torch.zeros(num, dtype=x.dtype, device=x.device).index_add_(0, ids, dist)  # (C,)
    phi = total / (size.clamp_min(1) * torch.log(size + alpha))  # (C,)
    single = size <= 1
    if bool(single.all()):
        phi = torch.ones_like(phi)
    else:
        phi = torch.where(single, phi[~single].max(), phi)
    low, high = torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=phi.dtype, device=phi.device))
    phi = phi.clamp(low, high)  # extreme values are clipped for stability (PCL)
    return temperature * phi / phi.mean()


def cluster_features(
    x: Tensor,
    *,
    method: Literal["finch", "kmeans"] = "finch",
    level: int = 2,
    num_clusters: int | None = None,
    temperature: float = 0.08,
    kmeans_iters: int = 20,
    seed: int = 0,
) -> Clusters:
    """Cluster x: (N, D) and return ids, centroids and concentrations for Vi2CLR's losses.

    FINCH takes partition `level` of its hierarchy, or the one nearest `num_clusters` when that is set;
    k-means takes `num_clusters`, or FINCH's estimate at `level` when it is None (Vi2CLR sec. 4.3).
    """
    if method not in ("finch", "kmeans"):
        raise ValueError(f"cluster method must be 'finch' or 'kmeans', got {method!r}")
    x = F.normalize(x.float(), dim=1)  # (N, D) clustering works on the unit sphere, as the losses do
    if method == "finch":
        parts = finch(x)
        ids = select_partition(parts, level=level) if num_clusters is None \
            else select_partition(parts, num_clusters=num_clusters)
    else:
        k = num_clusters if num_clusters is not None else int(select_partition(finch(x), level=level).max()) + 1
        ids = kmeans(x, k, iters=kmeans_iters, seed=seed)
    return clusters_from_ids(x, ids, temperature)


def clusters_from_ids(x: Tensor, ids: Tensor, temperature: float) -> Clusters:
    """Centroids and concentrations of the partition `ids` (N,) of x: (N, D), on the unit sphere."""
    x = F.normalize(x.float(), dim=1)  # (N, D)
    means = _means(x, ids, int(ids.max()) + 1)  # (C, D)
    return Clusters(ids=ids, centroids=F.normalize(means, dim=1),
                    concentration=concentration(x, ids, means, temperature))


def mined_order(positions: np.ndarray, clusters: np.ndarray, *, positives: int, batch_size: int,
                world_size: int, rng: np.random.Generator) -> np.ndarray:
    """Vi2CLR's positive mining as a reading order: "for each instance in a given cluster, we randomly mine
    samples from the same cluster as positive pairs" (sec. 3.2), so that they meet in one batch.

    positions: (N,) dataset positions; clusters: (N,) the cluster of each (-1: none, read alone). Returns
    the N positions in reading order for all processes together, cut the way the loader cuts it: rank r
    reads the block [rN/W, (r+1)N/W), in batches of `batch_size` from the block's start.
    1. Each cluster's members, in random order, form groups of `positives` + 1 or more (sizes differ by at
       most one; a cluster smaller than that is one group): every member's group holds at least
       min(positives, cluster size - 1) others of its cluster.
    2. Groups, in random order, fill the batches whole. Only when no remaining group fits a batch's free
       places is one group split across two batches: at most one per batch boundary.
    So every sample outside a split group shares its batch with min(positives, cluster size - 1) or more
    samples of its cluster. positives=0 gives a plain random permutation.
    """
    groups = _cluster_groups(np.asarray(positions), np.asarray(clusters), positives + 1, rng)
    capacities = _batch_capacities(len(positions), batch_size, world_size)
    return np.concatenate(_fill_batches(_GroupPool(groups), capacities, np.asarray(positions)[:0]))


def _cluster_groups(positions: np.ndarray, clusters: np.ndarray, size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Step 1 of `mined_order`: each cluster's members in random order, split into groups of `size` or more
    (an unclustered sample, -1, is a group of its own); the groups in random order."""
    perm = rng.permutation(len(positions))
    positions, clusters = positions[perm], clusters[perm]
    groups: list[np.ndarray] = []
    for c in np.unique(clusters):
        members = positions[clusters == c]  # in random order
        if c < 0:
            groups += [members[i:i + 1] for i in range(len(members))]
        else:
            groups += np.array_split(members, max(len(members) // size, 1))
    return [groups[i] for i in rng.permutation(len(groups))]


def _batch_capacities(n: int, batch_size: int, world_size: int) -> list[int]:
    """The sizes of the batches the loader will form from n samples, in reading order: rank r's block
    [rN/W, (r+1)N/W) in batches of `batch_size`, the last one shorter."""
    capacities = []
    for r in range(world_size):
        size = (r + 1) * n // world_size - r * n // world_size
        capacities += [batch_size] * (size // batch_size) + ([size % batch_size] if size % batch_size else [])
    return capacities


class _GroupPool:
    """The groups not yet placed in a batch: the next in random order, or one of a given size when the next
    would leave a gap no group fills."""

    def __init__(self, groups: list[np.ndarray]) -> None:
        self.groups = groups
        self.by_size: dict[int, list[int]] = {}  # size -> indices of unused groups, the next one last
        for i in reversed(range(len(groups))):
            self.by_size.setdefault(len(groups[i]), []).append(i)
        self.left = {size: len(stack) for size, stack in self.by_size.items()}  # unused groups per size
        self.used = np.zeros(len(groups), dtype=bool)
        self.following = 0  # the next unused group in random order

    def use(self, i: int) -> np.ndarray:
        """Group i, marked used."""
        self.used[i] = True
        self.left[len(self.groups[i])] -= 1
        return self.groups[i]

    def _take(self, size: int) -> int:
        """The next unused group of `size` members (one is left)."""
        stack = self.by_size[size]
        while self.used[stack[-1]]:
            stack.pop()
        return stack.pop()

    def choose(self, free: int) -> int | None:
        """A whole group for `free` places: the next in random order unless it would leave a gap no group
        fills; then one that fills them exactly, or the largest that leaves a fillable gap; None: none fits
        (then `following` is the next unused group, the one to split)."""
        while self.used[self.following]:
            self.following += 1
        sizes = [size for size, count in self.left.items() if count > 0 and size <= free]
        if not sizes:
            return None
        smallest = min(size for size, count in self.left.items() if count > 0)
        nxt = len(self.groups[self.following])
        if nxt <= free and (nxt == free or free - nxt >= smallest):
            return self.following
        if free in sizes:
            return self._take(free)
        fillable = [size for size in sizes if free - size >= smallest]
        return self._take(max(fillable or sizes))


def _fill_batches(pool: _GroupPool, capacities: list[int], empty: np.ndarray) -> list[np.ndarray]:
    """Step 2 of `mined_order`: whole groups fill each batch's places; when none fits, the next group is
    split and its rest opens the following batch. Returns the pieces in reading order.
    empty: a (0,) array of the positions' dtype, the carry before the first batch."""
    out: list[np.ndarray] = []
    carry = empty  # the rest of a group split at the last batch boundary
    for free in capacities:
        out.append(carry[:free])  # opens this batch
        free, carry = free - len(out[-1]), carry[free:]
        while free > 0:
            pick = pool.choose(free)
            if pick is None:  # no whole group fits: split the next one across this boundary
                group = pool.use(pool.following)
                out.append(group[:free])
                carry = group[free:]
                break
            out.append(pool.use(pick))
            free -= len(out[-1])
    return out
