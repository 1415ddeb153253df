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
     {"classifier.3.weight", "classifier.3.bias", "classifier.6.weight", "classifier.6.bias"}),
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


def test_caffenet_fc6_is_relu_output_and_groups_match_caffe():
    enc = Encoder("caffenet_bn", 3).eval()
    feats = enc(torch.randn(3, 3, 96, 96))
    assert (feats >= 0).all() and (feats > 0).any()  # fc6 after ReLU
    convs = [m for m in enc.net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    bns = [m for m in enc.net.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5  # batch norm on every convolution


def test_vgg16_fc6_with_flow_stack_reloads():
    enc = Encoder("vgg16", 20).eval()
    assert enc(torch.randn(1, 20, 32, 32)).shape == (1, 4096)
    net = load_backbone(enc.export(), num_classes=3)
    assert net.features[0].in_channels == 20
    assert torch.equal(net.classifier[0].weight, enc.net.classifier[0].weight)


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
