"""Cross and Learn wiring: views per modality, channel counts into f and g, pairs formed into B tuples,
L_cross + L_div equal to eqs. (1)-(4), the only-L_div and Concat ablations."""
import pytest
import torch
import torch.nn.functional as F

from fastvid.data.views import CrossAndLearnViews
from fastvid.losses import reference
from fastvid.methods.cross_and_learn import CrossAndLearn, CrossAndLearnConfig
from tests.methods.checks import assert_bf16_forward_matches_fp32


def small(second: str = "flow", **kw) -> CrossAndLearn:
    torch.manual_seed(0)
    return CrossAndLearn(CrossAndLearnConfig(views=CrossAndLearnViews(second=second, size=80), **kw)).eval()


def test_views_and_input_channels():
    flow, sod = small("flow"), small("sod")
    assert [v.name for v in flow.views()] == ["rgb", "flow"]
    assert [v.name for v in sod.views()] == ["rgb", "sod"]
    assert (flow.f.in_channels, flow.g.in_channels, sod.g.in_channels) == (3, 20, 12)
    assert set(sod.encoder_state_dicts()) == {"rgb", "sod"}


def test_flow_stack_order_tuples_and_loss_eqs_1_to_4():
    method = small("flow")
    x, flow = torch.randn(4, 3, 80, 80), torch.randn(4, 2, 10, 80, 80)
    y = method.second_modality({"flow": flow})
    assert y.shape == (4, 20, 80, 80)
    assert torch.equal(y[:, 0], flow[:, 0, 0]) and torch.equal(y[:, 1], flow[:, 1, 0])  # u1, v1, u2, ...
    assert torch.equal(y[:, 2], flow[:, 0, 1])
    out = method({"rgb": x, "flow": flow})
    with torch.no_grad():
        fx, gy = method.f(x).double(), method.g(y).double()  # (4, 4096)
    # Video b pairs with video b + B: tuples (0, 2) and (1, 3).
    rgb, of = torch.stack([fx[:2], fx[2:]], 1), torch.stack([gy[:2], gy[2:]], 1)  # (2, 2, D)
    expected = reference.cross_and_learn_loss(rgb, of, eps=1e-5)
    for term in ("loss", "cross", "div"):
        torch.testing.assert_close(out[term].double(), expected[term], rtol=1e-4, atol=1e-5)
    d = lambda a, b: 1 - F.cosine_similarity(a, b, dim=0)  # noqa: E731 - eq. (2) without eps
    by_hand = 0.5 * (d(fx[0], gy[0]) + d(fx[2], gy[2])) - 0.5 * (d(fx[0], fx[2]) + d(gy[0], gy[2]))
    by_hand = (by_hand + 0.5 * (d(fx[1], gy[1]) + d(fx[3], gy[3])) - 0.5 * (d(fx[1], fx[3]) + d(gy[1], gy[3]))) / 2
    torch.testing.assert_close(out["loss"].double(), by_hand, rtol=1e-4, atol=1e-5)


def test_sod_takes_frame_differences():
    method = small("sod")
    frames = torch.randn(2, 3, 5, 80, 80)
    y = method.second_modality({"sod": frames})
    assert y.shape == (2, 12, 80, 80)
    torch.testing.assert_close(y[:, 3:6], frames[:, :, 2] - frames[:, :, 1])  # difference 2 -> channels 3..5


def test_only_l_div_ablation_and_odd_batch():
    method = small("flow", use_cross=False)
    out = method({"rgb": torch.randn(2, 3, 80, 80), "flow": torch.randn(2, 2, 10, 80, 80)})
    torch.testing.assert_close(out["loss"], out["div"])
    with pytest.raises(ValueError, match="even batch"):
        method({"rgb": torch.randn(3, 3, 80, 80), "flow": torch.randn(3, 2, 10, 80, 80)})


def test_concat_ablation_labels_same_and_crossed_pairs():
    method = small("flow", objective="concat")
    x, flow = torch.randn(4, 3, 80, 80), torch.randn(4, 2, 10, 80, 80)
    out = method({"rgb": x, "flow": flow})
    with torch.no_grad():
        fx, gy = method.f(x), method.g(method.second_modality({"flow": flow}))
        pairs = [(0, 0), (2, 2), (1, 1), (3, 3), (0, 2), (2, 0), (1, 3), (3, 1)]  # same..., crossed...
        logits = method.pair_classifier(torch.stack([torch.cat([fx[a], gy[b]]) for a, b in pairs]))
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    torch.testing.assert_close(out["cross_entropy"], F.cross_entropy(logits, labels), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward():
    method = small("sod")
    method.f.net.classifier[2].p = method.g.net.classifier[2].p = 0.0  # dropout draws differ between copies
    assert_bf16_forward_matches_fp32(method, {"rgb": torch.randn(4, 3, 80, 80), "sod": torch.randn(4, 3, 5, 80, 80)})
