"""The logistic-regression probe: optimality, separable data, the sweep, grouped splits."""
import pytest
import torch
import torch.nn.functional as F

from fastvid.eval.linear import fit_logistic, linear_probe, split_train_val


def _blobs(n_per_class: int, centres: torch.Tensor, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)
    return centres[labels] + noise * torch.randn(len(labels), centres.shape[1], generator=gen), labels


def test_fit_reaches_the_regularised_optimum():
    x, y = _blobs(30, torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.5, 0.0], [0.0, -2.0, -1.0]]), 1.0, 0)
    l2 = 1e-2
    model = fit_logistic(x, y, 3, l2)
    w = model.weight.clone().requires_grad_(True)
    b = model.bias.clone().requires_grad_(True)
    xs = (x - model.mean) / model.std
    loss = F.cross_entropy(xs @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max().item() < 1e-4 and b.grad.abs().max().item() < 1e-4


def test_separable_classes_are_classified_perfectly():
    centres = 5 * torch.eye(4, 8)
    train_x, train_y = _blobs(20, centres, 0.5, 1)
    test_x, test_y = _blobs(10, centres, 0.5, 2)
    res = linear_probe(train_x, train_y, test_x, test_y, 4, seed=0)
    assert res["top1"] == 1.0 and res["correct"] == res["n"] == 40
    assert res["top5"] == 1.0


def test_clip_scores_are_averaged_per_video():
    # Two test videos of class 0; video 0 has two clips that the model gets right and one wrong.
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    train_x, train_y = _blobs(20, centres, 0.3, 3)
    test_x = torch.tensor([[2.0, 0.0], [2.5, 0.0], [-0.5, 0.0], [3.0, 0.0]])
    test_y = torch.zeros(4, dtype=torch.long)
    res = linear_probe(train_x, train_y, test_x, test_y, 2, test_groups=torch.tensor([0, 0, 0, 1]), seed=0)
    assert res["n"] == 2 and res["top1"] == 1.0
    clip_level = linear_probe(train_x, train_y, test_x, test_y, 2, seed=0)
    assert clip_level["n"] == 4 and clip_level["top1"] == 0.75


def test_sweep_prefers_strong_regularisation_on_noise_features():
    # Labels independent of 50 noise features: any fit is chance; ties go to the largest l2.
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(60, 50, generator=gen), torch.arange(60) % 2
    res = linear_probe(x, y, x[:10], y[:10], 2, l2_grid=(1e-6, 1e3), seed=0)
    assert set(res["val_top1"]) == {"1e-06", "1000.0"}
    if res["val_top1"]["1e-06"] <= res["val_top1"]["1000.0"]:
        assert res["l2"] == 1e3


def test_split_train_val_keeps_groups_whole():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    tr, va = split_train_val(10, groups, 0.4, seed=5)
    assert len(tr) + len(va) == 10 and len(va) == 4
    assert not set(groups[tr].tolist()) & set(groups[va].tolist())
    with pytest.raises(ValueError, match="at least 2"):
        split_train_val(3, torch.zeros(3, dtype=torch.long), 0.2, 0)
