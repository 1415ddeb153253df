"""Checks every method's tests share. The bfloat16 path: the trainer runs `method(batch)` under `accelerator.autocast()`,
so every method must accept autocast's bf16 activations (queues, cluster state and losses stay float32)."""
import copy

import torch

from fastvid.methods import Method


def is_accuracy(term: str) -> bool:
    """Pretext top-1 accuracies ("acc", "<loss>_acc") are logged beside the loss terms."""
    return term == "acc" or term.endswith("_acc")


def assert_bf16_forward_matches_fp32(method: Method, batch: dict[str, torch.Tensor], rtol: float = 0.05) -> Method:
    """Run one training forward in float32 and under CPU bf16 autocast on copies of `method`: every loss term
    finite and within `rtol` of float32's, and the loss back-propagates. Returns the bf16 copy (its state)."""
    fp32, bf16 = copy.deepcopy(method).train(), copy.deepcopy(method).train()
    want = fp32(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bf16(batch)
    assert set(got) == set(want)
    for term, value in got.items():
        assert value.dtype == torch.float32, term  # losses accumulate in float32 whatever the activations
        if is_accuracy(term):  # an argmax: bf16 rounding may flip a near tie, so only its range is checked
            assert 0.0 <= value.item() <= 1.0, term
            continue
        torch.testing.assert_close(value, want[term], rtol=rtol, atol=1e-3,
                                   msg=f"{term}: bf16 {value.item():.5f} vs fp32 {want[term].item():.5f}")
    got["loss"].backward()  # CPU bf16 Conv3d weight gradients are unreliable (see fastvid.train); no value check
    return bf16


def losses_over_steps(method: Method, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                      steps: int) -> list[float]:
    """Train `steps` optimiser steps on one fixed batch; the loss before each step. All must be finite."""
    losses = []
    for _ in range(steps):
        loss = method(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return losses
