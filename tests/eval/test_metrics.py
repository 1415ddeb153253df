"""Scores on cases small enough to check by hand."""
import math

import pytest
import torch

from fastvid.eval.metrics import (average_by_group, cosine_neighbours, group_labels, knn_votes,
                                  retrieval_recall, topk_accuracy, wilson_interval)

# Gallery on the unit circle at 0, 90, 180 and 270 degrees (scaled: cosine ignores the norm).
GALLERY = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -1.0]])
GALLERY_LABELS = torch.tensor([0, 1, 2, 1])


def test_cosine_neighbours_orders_by_angle():
    query = torch.tensor([[1.0, 0.2], [-1.0, -0.9]])  # 11 degrees; 222 degrees
    sims, idx = cosine_neighbours(query, GALLERY, 3)
    assert idx.tolist() == [[0, 1, 3], [2, 3, 1]]
    expected = torch.tensor([1.0, 0.2]) / math.hypot(1.0, 0.2)
    assert sims[0, 0].item() == pytest.approx(expected[0].item(), abs=1e-6)
    assert sims[0, 1].item() == pytest.approx(expected[1].item(), abs=1e-6)


def test_retrieval_recall_counts_a_query_if_any_of_k_matches():
    query = torch.tensor([[1.0, 0.2], [-1.0, -0.9], [0.1, 1.0]])
    labels = torch.tensor([1, 1, 2])
    # query 0 (class 1): neighbours 0 (c0), 1 (c1), 3, 2 -> first hit at rank 2
    # query 1 (class 1): neighbours 2 (c2), 3 (c1) -> first hit at rank 2
    # query 2 (class 2): neighbours 1 (c1), 0 (c0), 2 (c2) -> first hit at rank 3
    recall = retrieval_recall(query, labels, GALLERY, GALLERY_LABELS, ks=(1, 2, 3, 20))
    assert recall == {"R@1": 0.0, "R@2": pytest.approx(2 / 3), "R@3": 1.0, "R@20": 1.0}


def test_knn_votes_majority_then_nearest_breaks_ties():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0]])
    labels = torch.tensor([2, 0, 0, 1])
    votes = knn_votes(torch.tensor([[1.0, 0.0]]), gallery, labels, 3, k=3)
    assert votes.argmax(1).item() == 0  # two votes for class 0 beat the nearest (class 2)
    tie = knn_votes(torch.tensor([[1.0, 0.0]]), gallery, labels, 3, k=2)
    assert tie.argmax(1).item() == 2  # one vote each: the nearest neighbour's class wins
    assert votes[0, 1].item() == 0.0


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, (1, 2, 5)) == {"top1": pytest.approx(1 / 3),
                                                        "top2": pytest.approx(2 / 3), "top5": 1.0}


def test_wilson_interval_matches_the_formula():
    # 8 of 10 at 95%: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), the textbook (0.490, 0.943).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(50, 100, 0.99)[1] - wilson_interval(50, 100, 0.99)[0] > \
        wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0]
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_average_by_group_and_labels():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]])
    groups = torch.tensor([7, 3, 7, 3])
    uniq, means = average_by_group(values, groups)
    assert uniq.tolist() == [3, 7]
    assert means.tolist() == [[0.5, 1.0], [0.75, 0.25]]
    assert group_labels(torch.tensor([1, 4, 1, 4]), groups).tolist() == [4, 1]
    with pytest.raises(ValueError, match="video 7 carry different labels"):
        group_labels(torch.tensor([1, 4, 2, 4]), groups)
