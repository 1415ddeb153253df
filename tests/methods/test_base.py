"""Shared method plumbing: heads, the momentum update's values, the registry."""
import pytest
import torch
from torch import nn

from fastvid.config import ConfigError
from fastvid.distributed import SyncBatchNorm
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


@pytest.mark.parametrize("method, override, message", [
    ("video_simclr", "model.temperature=0", r"model\.temperature: must be > 0, got 0"),
    ("video_simclr", "model.encoder=resnet50", r"model\.encoder: must be one of the video encoders "
                                               r"r2plus1d_18, r3d_18, s3d, got 'resnet50'"),
    ("video_simclr", "model.head_dims=[1024,256]", r"model\.head_dims: must start with r3d_18's representation "
                                                   r"size 512 .*, got \[1024, 256\]"),
    ("video_moco", "model.momentum=1", r"model\.momentum: must be in \[0, 1\), got 1"),
    ("video_moco", "model.queue_size=0", r"model\.queue_size: must be >= 1, got 0"),
    ("gdt", "model.temperature=-0.07", r"model\.temperature: must be > 0, got -0\.07"),
    ("gdt", "model.audio_arch=s3d", r"model\.audio_arch: must be one of the image encoders .*resnet9.*, got 's3d'"),
    ("vi2clr", "model.temperature=0", r"model\.temperature: must be > 0, got 0"),
    ("vi2clr", "model.image_arch=s3d", r"model\.image_arch: must be one of the image encoders .*resnet50.*, got 's3d'"),
    ("vi2clr", "model.num_clusters=1", r"model\.num_clusters: must be >= 2 \(or null\), got 1"),
    ("vi2clr", "model.loss_weights=[0,0,0]", r"model\.loss_weights: must be >= 0 and not all 0"),
    ("cross_and_learn", "model.eps=0", r"model\.eps: must be > 0, got 0"),
    ("cross_and_learn", "model.use_cross=false model.use_div=false", r"model\.use_div: use_cross and use_div "
                                                                      r"both off leave no loss, got False"),
])
def test_method_config_is_checked_when_it_loads(method, override, message):
    """Checked by the config's __post_init__ (no model is built), reported as the override at fault."""
    from fastvid.run_config import load_config

    with pytest.raises(ConfigError, match=message) as err:
        load_config(method, None, override.split())
    assert err.value.key == override.split()[-1].split("=")[0]


@pytest.mark.parametrize("name", ["video_simclr", "gdt", "vi2clr"])
def test_methods_gathering_negatives_synchronise_bn_by_default(name):
    """Every BatchNorm layer of the methods that gather negatives is a SyncBatchNorm (plain BN on one process;
    tests/test_distributed.py: statistics over both of two processes); `model.sync_bn=false` keeps local BN."""
    from fastvid.run_config import load_config

    on = get_method(name)(load_config(name).model)
    bns = [m for m in on.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) is SyncBatchNorm for m in bns)
    off = get_method(name)(load_config(name, None, ["model.sync_bn=false"]).model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in off.modules())
