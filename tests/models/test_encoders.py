"""Encoders: the representation each paper uses, at the sizes it uses, and weights that reload into
the torchvision model they came from."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
import torchvision.models.video as tvv

from fastvid.models import CaffeNetBN, Encoder, load_backbone

# (arch, in_channels, input shape, torchvision builder, classifier parameter names)
CASES = [
    ("r3d_18", 3, (2, 3, 4, 32, 32), tvv.r3d_18, {"fc.weight", "fc.bias"}),
    ("r2plus1d_18", 3, (2, 3, 4, 32, 32), tvv.r2plus1d_18, {"fc.weight", "fc.bias"}),
    ("s3d", 3, (2, 3, 8, 32, 32), tvv.s3d, {"classifier.1.weight", "classifier.1.bias"}),
    ("resnet50", 3, (2, 3, 32, 32), tvm.resnet50, {"fc.weight", "fc.bias"}),
    ("caffenet_bn", 20, (2, 20, 80, 80), CaffeNetBN,
     {"classifier.4.weight", "classifier.4.bias", "classifier.6.weight", "classifier.6.bias"}),
]
DIMS = {"r3d_18": 512, "r2plus1d_18": 512, "s3d": 1024, "resnet50": 2048, "caffenet_bn": 4096}


@pytest.mark.parametrize("arch,in_channels,shape,builder,classifier", CASES, ids=[c[0] for c in CASES])
def test_representation_size_and_torchvision_reload(arch, in_channels, shape, builder, classifier):
    torch.manual_seed(0)
    enc = Encoder(arch, in_channels).eval()
    x = torch.randn(shape)
    feats = enc(x)
    assert feats.shape == (shape[0], DIMS[arch])

    # The export loads into the untouched model of the same family: only the classifier is missing.
    export = enc.export()
    net = builder(num_classes=5)
    if in_channels != 3:
        net = load_backbone(export, num_classes=5)
    else:
        result = net.load_state_dict(export["state_dict"], strict=False)
        assert set(result.missing_keys) == classifier and not result.unexpected_keys
    for name, value in export["state_dict"].items():
        assert torch.equal(net.state_dict()[name], value), name
    # ... and the reloaded network's logits are its classifier applied to the encoder's features
    # (S3D's torchvision classifier needs 16x224x224 clips for its fixed pool: too slow here).
    if arch == "s3d":
        return
    net.eval()
    head = net.fc if hasattr(net, "fc") else net.classifier[3:]
    with torch.no_grad():
        torch.testing.assert_close(net(x), head(feats), rtol=1e-4, atol=1e-5)


# The authors' CaffeNet_BN (github.com/nawidsayed/Cross-and-Learn, compvis/models/networks.py), layer by layer:
# (type, conv (out channels, kernel, stride, padding, groups) or None, output (C, H, W) at a 224x224 input).
CAFFENET_FEATURES = [
    ("Conv2d", (96, 11, 4, 2, 1), (96, 55, 55)), ("ReLU", None, (96, 55, 55)), ("BatchNorm2d", None, (96, 55, 55)),
    ("MaxPool2d", None, (96, 27, 27)),
    ("Conv2d", (256, 5, 1, 2, 2), (256, 27, 27)), ("ReLU", None, (256, 27, 27)),
    ("BatchNorm2d", None, (256, 27, 27)), ("MaxPool2d", None, (256, 13, 13)),
    ("Conv2d", (384, 3, 1, 1, 1), (384, 13, 13)), ("ReLU", None, (384, 13, 13)), ("BatchNorm2d", None, (384, 13, 13)),
    ("Conv2d", (384, 3, 1, 1, 2), (384, 13, 13)), ("ReLU", None, (384, 13, 13)), ("BatchNorm2d", None, (384, 13, 13)),
    ("Conv2d", (256, 3, 1, 1, 2), (256, 13, 13)), ("ReLU", None, (256, 13, 13)), ("BatchNorm2d", None, (256, 13, 13)),
    ("MaxPool2d", None, (256, 6, 6)),
]
# dropout -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> fc8; the representation is classifier[:3]
CAFFENET_CLASSIFIER = [("Dropout", None), ("Linear", (9216, 4096)), ("ReLU", None), ("Dropout", None),
                       ("Linear", (4096, 4096)), ("ReLU", None), ("Linear", (4096, 1000))]


def layer_outputs(layers: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """(C, H, W) after each layer of a Sequential."""
    shapes = []
    for layer in layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_caffenet_bn_is_the_authors_layer_by_layer():
    net = CaffeNetBN().eval()
    assert [type(m).__name__ for m in net.features] == [t for t, _, _ in CAFFENET_FEATURES]
    for m, (_, conv, _) in zip(net.features, CAFFENET_FEATURES):
        if conv is not None:  # the conv keeps its bias: BN follows the ReLU, so the bias is not redundant
            got = (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.groups)
            assert got == conv and m.bias is not None
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert layer_outputs(net.features, x) == [shape for _, _, shape in CAFFENET_FEATURES]
        pool5 = net.features(x)
        assert torch.equal(net.avgpool(pool5), pool5)  # 224x224 gives pool5 6x6 itself: no resampling
    assert [(type(m).__name__, (m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else None)
            for m in net.classifier] == CAFFENET_CLASSIFIER


def test_caffenet_fc6_is_relu_output_of_dropped_pool5():
    enc = Encoder("caffenet_bn", 3)
    net = enc.net
    assert [type(m).__name__ for m in net.classifier] == ["Dropout", "Linear", "ReLU"]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = enc.eval()(x)
        torch.testing.assert_close(feats, torch.relu(net.classifier[1](net.avgpool(net.features(x)).flatten(1))))
    assert (feats >= 0).all() and (feats > 0).any()


# The authors' VGG_16_BN features: 3x3 convs (padding 1), each followed by BN then ReLU, "M" a 2x2 max pool.
VGG16_BN_CHANNELS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def test_vgg16_bn_is_the_authors_layer_by_layer():
    net = Encoder("vgg16_bn", 20).net.eval()
    expected = []
    for c in VGG16_BN_CHANNELS:
        expected += ["MaxPool2d"] if c == "M" else ["Conv2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in net.features] == expected
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [c for c in VGG16_BN_CHANNELS if c != "M"]
    assert all((c.kernel_size, c.padding) == ((3, 3), (1, 1)) for c in convs) and convs[0].in_channels == 20
    with torch.no_grad():
        shapes = layer_outputs(net.features, torch.randn(1, 20, 64, 64))
    assert [s[1] for s, m in zip(shapes, net.features) if isinstance(m, torch.nn.MaxPool2d)] == [32, 16, 8, 4, 2]
    # fc6 -> ReLU -> dropout is the representation, as the authors' `get_feature_output(layer='fc6')`
    assert [type(m).__name__ for m in net.classifier] == ["Linear", "ReLU", "Dropout"]
    assert (net.classifier[0].in_features, net.classifier[0].out_features) == (512 * 7 * 7, 4096)


def test_vgg16_bn_fc6_with_flow_stack_reloads():
    enc = Encoder("vgg16_bn", 20).eval()
    assert enc(torch.randn(1, 20, 32, 32)).shape == (1, 4096)
    net = load_backbone(enc.export(), num_classes=3)
    assert net.features[0].in_channels == 20 and isinstance(net.features[1], torch.nn.BatchNorm2d)
    assert torch.equal(net.classifier[0].weight, enc.net.classifier[0].weight)
    assert torch.equal(net.features[1].running_var, enc.net.features[1].running_var)


def test_wrong_input_names_the_layout():
    enc = Encoder("r3d_18")
    with pytest.raises(ValueError, match=r"r3d_18 expects \(N, C, T, H, W\) with C=3"):
        enc(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown encoder arch 'r4d'"):
        Encoder("r4d")


def test_resnet9_export_loads_in_a_process_that_never_imported_audio(tmp_path):
    """GDT's audio export must load in a fresh eval process: resnet9 lives in ARCHS, not an import side effect."""
    path = tmp_path / "audio.pt"
    torch.save(Encoder("resnet9", in_channels=1).export(), path)
    code = ("import torch; from fastvid.models.encoders import load_backbone; "
            f"net = load_backbone(torch.load({str(path)!r}), num_classes=3); "
            "assert net(torch.randn(2, 1, 40, 50)).shape == (2, 3)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize("arch, block, x_shape", [
    ("resnet50", "layer1.1", (2, 256, 8, 8)),  # Bottleneck, no downsample
    ("r3d_18", "layer1.1", (2, 64, 2, 4, 4)),  # BasicBlock (3D), no downsample
])
def test_zero_init_residual_starts_each_block_as_the_identity(arch, block, x_shape):
    """relu(x + F(x)) with F's last BN scale 0 is relu(x) = x for x >= 0; the default init is not."""
    torch.manual_seed(0)
    x = torch.rand(x_shape)
    zero = Encoder(arch, zero_init_residual=True).net.get_submodule(block).eval()
    default = Encoder(arch).net.get_submodule(block).eval()
    with torch.no_grad():
        assert torch.equal(zero(x), x)
        assert not torch.allclose(default(x), x, atol=1e-3)


def test_zero_init_residual_leaves_an_arch_without_residual_blocks_as_it_was():
    torch.manual_seed(0)
    plain = Encoder("s3d").state_dict()
    torch.manual_seed(0)
    asked = Encoder("s3d", zero_init_residual=True).state_dict()
    assert plain.keys() == asked.keys() and all(torch.equal(plain[k], asked[k]) for k in plain)
