"""Linear evaluation: an L2-regularised multinomial logistic regression on frozen features (thesis Sec. 4.1,
"a l2-regularized multinomial logistic regression"), fitted full-batch with L-BFGS, its regularisation
picked on a validation split carved from the training set, then refitted on the whole training set."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastvid.eval.metrics import average_by_group, group_labels, topk_accuracy

DEFAULT_L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Below this many feature values an L-BFGS step is a few small matmuls: intra-op threads only add
# synchronisation (measured 20-50x slower with 2 threads on a busy 2-core machine), so fit on one.
SINGLE_THREAD_BELOW = 1 << 20


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class LogisticModel:
    """Standardisation statistics and the fitted weights: probabilities = softmax(((x - mean) / std) W^T + b)."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, C) logits."""
        return ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                 max_iter: int = 100) -> LogisticModel:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 over standardised features (bias not penalised).

    features: (N, D); labels: (N,) int64. Standardising first makes one l2 grid fit every encoder."""
    x = features.float()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)  # (D,), (D,)
    x = (x - mean) / std  # (N, D)
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)  # (C, D)
    bias = torch.zeros(num_classes, requires_grad=True)  # (C,)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with _threads(1 if x.numel() < SINGLE_THREAD_BELOW else torch.get_num_threads()):
        opt.step(closure)
    return LogisticModel(mean, std, weight.detach(), bias.detach())


def split_train_val(n: int, groups: torch.Tensor | None, val_fraction: float, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of n training items. With groups (N,) (the source video of each clip), whole
    groups go to one side, so the sweep does not reward memorising a video seen in both halves."""
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        groups = torch.arange(n)
    uniq = groups.unique()
    if len(uniq) < 2:
        raise ValueError(f"cannot carve a validation split from {len(uniq)} group(s); need at least 2")
    shuffled = uniq[torch.randperm(len(uniq), generator=gen)]
    n_val = min(max(1, round(val_fraction * len(uniq))), len(uniq) - 1)
    is_val = torch.isin(groups, shuffled[:n_val])  # (N,)
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, *, test_groups: torch.Tensor | None = None,
                 train_groups: torch.Tensor | None = None, l2_grid: Sequence[float] = DEFAULT_L2,
                 val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Sweep l2 on a validation split, refit on all of train, score the test set.

    train_x: (N, D), train_y: (N,); test_x: (M, D), test_y: (M,). test_groups (M,) names the video of
    each test clip: clips of one video have their softmax probabilities averaged before top-k, as the
    papers score a video over several clips. Returns top1/top5, the chosen l2, per-l2 validation
    accuracy, and per-clip predictions (for confidence intervals)."""
    tr, va = split_train_val(len(train_y), train_groups, val_fraction, seed)
    val_acc = {}
    for l2 in l2_grid:
        model = fit_logistic(train_x[tr], train_y[tr], num_classes, l2)
        val_acc[l2] = topk_accuracy(model.logits(train_x[va]), train_y[va], (1,))["top1"]
    best = max(l2_grid, key=lambda l2: (val_acc[l2], l2))  # ties: the stronger regularisation
    model = fit_logistic(train_x, train_y, num_classes, best)
    probs = model.logits(test_x).softmax(dim=1)  # (M, C)
    if test_groups is not None:
        _, probs = average_by_group(probs, test_groups)  # (V, C)
        test_y = group_labels(test_y, test_groups)  # (V,)
    scores = topk_accuracy(probs, test_y, (1, 5))
    correct = probs.argmax(dim=1) == test_y
    return {**scores, "l2": best, "val_top1": {str(k): v for k, v in val_acc.items()},
            "correct": int(correct.sum()), "n": len(test_y)}
