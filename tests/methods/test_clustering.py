"""FINCH and k-means for Vi2CLR: FINCH's partitions on a hand-worked example, PCL's concentration, and the
positive-mining reading order."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvid.methods.clustering import (
    cluster_features,
    concentration,
    finch,
    first_neighbours,
    kmeans,
    mined_order,
    nearest,
    select_partition,
)

# Points on the unit circle, so FINCH's cosine distance 1 - cos(a - b) grows with the angle between them and
# every neighbour can be read off the angles (degrees). Four groups: A = {0, 6}, B = {40, 44, 50},
# C = {180, 186}, D = {220, 225}; listed out of order so the label numbering is exercised too.
ANGLES = [180, 0, 44, 225, 6, 186, 50, 220, 40]
#  index:   0  1   2    3  4    5   6    7   8


def circle(angles: list[float]) -> torch.Tensor:
    rad = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)  # (N, 2)


def test_first_neighbours_by_hand():
    # 180->186 (6 deg), 0->6 (6; 40 is 40 away), 44->40 (4; 50 is 6), 225->220 (5), 6->0 (6; 40 is 34),
    # 186->180 (6; 220 is 34), 50->44 (6), 220->225 (5), 40->44 (4)
    assert first_neighbours(circle(ANGLES)).tolist() == [5, 4, 8, 7, 1, 0, 2, 3, 2]


def test_nearest_in_chunks_equals_the_full_matrix():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=gen)
    full = x @ x.T  # (37, 37)
    full.fill_diagonal_(float("-inf"))
    values, index = nearest(x, x, skip_self=True, max_elements=37 * 4)  # 4 rows at a time, a ragged last chunk
    assert torch.equal(index, full.argmax(dim=1))
    torch.testing.assert_close(values, full.max(dim=1).values)


def test_finch_partitions_by_hand():
    parts = finch(circle(ANGLES))
    # Partition 1: i ~ kappa_i links {0,5} = C, {1,4} = A, {2,6,8} = B, {3,7} = D. Components are numbered
    # by their lowest index: C (index 0) -> 0, A (1) -> 1, B (2) -> 2, D (3) -> 3.
    assert parts[0].tolist() == [0, 1, 2, 3, 1, 0, 2, 3, 2]
    # Partition 2 clusters the four cluster means, at about C 183, A 3, B 44.7, D 222.5 degrees:
    # C->D (39.5; A is 180), A->B (41.7; D is 140.5), B->A, D->C. Components {C, D} (lowest label 0) -> 0
    # and {A, B} -> 1, so each point takes its group's new label.
    assert parts[1].tolist() == [0, 1, 1, 0, 1, 0, 1, 0, 1]
    # Partition 3 would join the two halves (each is the other's first neighbour) into one cluster, which
    # FINCH does not keep: the hierarchy ends at two partitions.
    assert len(parts) == 2


def test_select_partition():
    parts = finch(circle(ANGLES))  # 4 clusters, then 2
    assert select_partition(parts, level=2) is parts[1]
    assert select_partition(parts, level=5) is parts[1]  # clamped to the coarsest partition
    assert select_partition(parts, num_clusters=5) is parts[0]
    assert select_partition(parts, num_clusters=1) is parts[1]
    assert select_partition(parts, num_clusters=3) is parts[0]  # a tie (|4-3| = |2-3|) goes to the finer one
    with pytest.raises(ValueError, match="exactly one"):
        select_partition(parts, level=1, num_clusters=2)


def test_kmeans_finds_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=gen), dim=1)  # (3, 8)
    truth = torch.arange(3).repeat_interleave(20)  # (60,)
    x = centres[truth] + 0.02 * torch.randn(60, 8, generator=gen)
    ids = kmeans(x, 3, seed=1)
    # same partition up to a renaming of the labels: each true blob maps to exactly one k-means label
    assert all(ids[truth == t].unique().numel() == 1 for t in range(3))
    assert ids.unique().numel() == 3


def test_concentration_by_hand():
    # cluster 0: (1,0), (-1,0) around (0,0): distances 1, 1 -> phi = 2 / (2 log(2 + 10)) = 1 / log 12
    # cluster 1: (0,0), (0,2), (0,4) around (0,2): 2, 0, 2 -> phi = 4 / (3 log 13)
    # cluster 2: a singleton -> the largest phi, 4 / (3 log 13)
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 0], [0, 2], [0, 4], [5, 5]], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    means = torch.tensor([[0.0, 0], [0, 2], [5, 5]], dtype=torch.float64)
    p0, p1 = 1 / math.log(12), 4 / (3 * math.log(13))
    # clipped to the 10th..90th percentile of (p0, p1, p1): low = p0 + 0.2 (p1 - p0), high = p1
    low = p0 + 0.2 * (p1 - p0)
    raw = torch.tensor([low, p1, p1], dtype=torch.float64)
    expected = 0.08 * raw / raw.mean()  # mean scaled to the temperature
    phi = concentration(x, ids, means, temperature=0.08)
    torch.testing.assert_close(phi, expected)
    assert phi.mean().item() == pytest.approx(0.08)


def test_cluster_features_finch_and_kmeans():
    x = circle(ANGLES).float() * 3  # the scale is irrelevant: features are normalised first
    res = cluster_features(x, method="finch", level=2, temperature=0.08)
    assert res.ids.tolist() == [0, 1, 1, 0, 1, 0, 1, 0, 1]
    unit = F.normalize(x, dim=1)
    torch.testing.assert_close(res.centroids[0], F.normalize(unit[res.ids == 0].mean(0), dim=0))
    assert res.centroids.shape == (2, 2) and res.concentration.shape == (2,)
    # k-means gets FINCH's number of clusters (2 at level 2) and finds the same two halves of the circle
    km = cluster_features(x, method="kmeans", level=2, temperature=0.08)
    assert km.centroids.shape[0] == 2
    assert all(km.ids[res.ids == c].unique().numel() == 1 for c in range(2))
    with pytest.raises(ValueError, match="finch"):
        cluster_features(x, method="spectral")


# --- positive mining: the reading order ------------------------------------------------------------------

def batches(order: np.ndarray, batch_size: int, world_size: int) -> list[np.ndarray]:
    """The full batches the loader forms from `order`: rank r's block [rN/W, (r+1)N/W) in batch_size steps."""
    n, out = len(order), []
    for r in range(world_size):
        block = order[r * n // world_size:(r + 1) * n // world_size]
        out += [block[b:b + batch_size] for b in range(0, len(block) - batch_size + 1, batch_size)]
    return out


def lacking(order, cluster_of: dict, size: Counter, positives: int, batch_size: int, world_size: int) -> list[int]:
    """Per full batch: how many samples share it with fewer than min(positives, cluster size - 1) of their
    cluster (samples of cluster -1 are alone by design and never count)."""
    out = []
    for batch in batches(order, batch_size, world_size):
        here = Counter(cluster_of[p] for p in batch)
        out.append(sum(here[cluster_of[p]] - 1 < min(positives, size[cluster_of[p]] - 1)
                       for p in batch if cluster_of[p] >= 0))
    return out


def test_mined_order_by_hand():
    """Four clusters of two, batches of four, two processes: every batch is two whole clusters."""
    positions = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    clusters = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    cluster_of = dict(zip(positions.tolist(), clusters.tolist()))
    for seed in range(5):
        order = mined_order(positions, clusters, positives=1, batch_size=4, world_size=2,
                            rng=np.random.default_rng(seed))
        assert sorted(order.tolist()) == positions.tolist()
        for batch in batches(order, 4, 2):
            assert sorted(Counter(cluster_of[p] for p in batch.tolist()).values()) == [2, 2]


@pytest.mark.parametrize("positives,batch_size,world_size", [(1, 64, 1), (1, 64, 3), (3, 64, 8), (2, 30, 2)])
def test_mined_order_puts_each_sample_with_its_mined_positives(positives, batch_size, world_size):
    """FINCH-like clusters (2 to 39 members) and unclustered samples: every position once; per full batch at
    most the two pieces of the groups split at its two boundaries (each < 2 (positives + 1) - 1 samples)
    lack their positives, and overall at least 97% have them, where a plain shuffle of these 8.6K samples
    in 400 clusters gives under 30% (under 1% on a real dataset: 240K videos in 12K clusters)."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 40, size=400)
    clusters = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(37, -1)])
    positions = rng.permutation(len(clusters)) * 2 + 5  # any distinct dataset positions
    cluster_of, size = dict(zip(positions.tolist(), clusters.tolist())), Counter(clusters.tolist())
    order = mined_order(positions, clusters, positives=positives, batch_size=batch_size, world_size=world_size,
                        rng=np.random.default_rng(1))
    assert sorted(order.tolist()) == sorted(positions.tolist())
    per_batch = lacking(order.tolist(), cluster_of, size, positives, batch_size, world_size)
    assert max(per_batch) <= 2 * (2 * (positives + 1) - 2)
    seen = len(per_batch) * batch_size
    assert 1 - sum(per_batch) / seen >= 0.97
    shuffled = rng.permutation(positions).tolist()
    assert 1 - sum(lacking(shuffled, cluster_of, size, positives, batch_size, world_size)) / seen < 0.3


def test_mined_order_is_reproducible_and_zero_positives_is_a_shuffle():
    positions, clusters = np.arange(50), np.arange(50) % 5
    first, again = (mined_order(positions, clusters, positives=2, batch_size=8, world_size=2,
                                rng=np.random.default_rng(3)) for _ in range(2))
    assert np.array_equal(first, again)
    plain = mined_order(positions, clusters, positives=0, batch_size=8, world_size=2, rng=np.random.default_rng(3))
    assert sorted(plain.tolist()) == list(range(50)) and not np.array_equal(plain, positions)
