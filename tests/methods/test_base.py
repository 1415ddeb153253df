"""Shared method plumbing: heads, the momentum update's values, the registry."""
import pytest
import torch
from torch import nn

from fastvid.methods import METHODS, get_method
from fastvid.methods.base import Method, mlp_head, momentum_copy, momentum_update


def test_mlp_head_layout():
    head = mlp_head([512, 512, 256])
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(4, 512)).shape == (4, 256)
    assert [type(m) for m in mlp_head([512, 128])] == [nn.Linear]  # MoCo v1: one linear layer
    bn = mlp_head([8, 16, 4], batch_norm=True)
    assert [type(m) for m in bn] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    with pytest.raises(ValueError, match="at least input and output"):
        mlp_head([8])


def test_momentum_update_values():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    momentum_update(online, target, 0.9)
    for p_k, p_k0, p_q in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(p_k, 0.9 * p_k0 + 0.1 * p_q)


def test_registry_names_and_unknown_method():
    assert set(METHODS) == {"cross_and_learn", "video_simclr", "video_moco", "gdt", "vi2clr"}
    with pytest.raises(ValueError, match="unknown method 'simclr'"):
        get_method("simclr")
    assert issubclass(get_method("video_simclr"), Method)
