"""FINCH and k-means for Vi2CLR: FINCH's partitions on a hand-worked example, PCL's concentration."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastvid.methods.clustering import (
    cluster_features,
    concentration,
    finch,
    first_neighbours,
    kmeans,
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
