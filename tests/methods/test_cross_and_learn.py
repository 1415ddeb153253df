"""Cross and Learn wiring: views per modality, channel counts into f and g, pairs formed into B tuples,
L_cross + L_div equal to eqs. (1)-(4), the only-L_div and Concat ablations, the pretext accuracy and the
sign of a time-reversed flow stack."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fastvid.data.views import CrossAndLearnViews, cross_and_learn_views
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
    # acc: each f(x) closer to its own pair's g(y) than to every other g(y) of the batch
    cos = F.normalize(fx, dim=1) @ F.normalize(gy, dim=1).T  # (4, 4)
    hits = [all(cos[a, a] > cos[a, o] for o in range(4) if o != a) for a in range(4)]
    assert out["acc"].item() == sum(hits) / 4


def test_pretext_accuracy_is_one_when_each_rgb_matches_its_own_flow():
    method = small("flow").eval()
    x, flow = torch.randn(4, 3, 80, 80), torch.randn(4, 2, 10, 80, 80)
    with torch.no_grad():
        gy = method.g(method.second_modality({"flow": flow}))
    method.f.forward = lambda x: gy  # f(x_n) = g(y_n): every pair is its own best match
    assert method({"rgb": x, "flow": flow})["acc"].item() == 1.0


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
    assert out["acc"].item() == ((logits.argmax(1) == labels).float().mean().item())


def test_time_reversed_flow_stack_negates_every_field():
    """Sec. 4.1's "random temporal flips" of the flow stack: reversed in time, each field u, v negated (flow
    t -> t+1 read backwards is t+1 -> t), as the authors' `rand_timeflip` does (`s = -s`)."""
    from fastvid.data.plans import SampleDrawer
    from fastvid.data.plans.flow import finish_flow

    view = cross_and_learn_views(CrossAndLearnViews(weighted=False))[1]  # "flow", uniform window start
    view = replace(view, spatial=replace(view.spatial, flow_flip=1.0, flow_mean=False, flip=0.0))
    meta = {"key": "k", "num_frames": 40, "width": 256, "height": 256, "flow": {"bound": 20.0}}
    aux = torch.from_numpy(SampleDrawer([view], seed=0).draw(meta, 0)["flow"].aux)[None]  # (1, 4)
    assert aux[0, 2] == 1.0 and aux[0, 3] == 20.0  # temporal flip, the quantisation bound
    x = torch.randint(0, 256, (1, 10, 4, 4, 2), dtype=torch.uint8)  # (N, T, H, W, 2) quantised u, v
    forward = finish_flow(x, aux * torch.tensor([1.0, 1.0, 0.0, 1.0]), False)  # the same stack, not reversed
    torch.testing.assert_close(finish_flow(x, aux, False), -forward.flip(2))  # (N, 2, T, H, W): T reversed


def test_flow_is_dequantised_with_the_bound_its_sample_records():
    """A shard written with another bound (KEY.json's `flow.bound`) gives flow in pixels all the same:
    u = (stored - 128) * bound / 127, times the crop's scale."""
    from fastvid.data.plans import SampleDrawer
    from fastvid.data.plans.flow import finish_flow

    view = cross_and_learn_views(CrossAndLearnViews(weighted=False))[1]
    view = replace(view, spatial=replace(view.spatial, flow_flip=0.0, flow_mean=False, flip=0.0))
    stored = torch.tensor([1.0, 64.0, 128.0, 200.0])
    x = stored.to(torch.uint8).view(1, 1, 1, 4, 1).expand(1, 10, 4, 4, 2)  # (N, T, H, W, 2) u = v
    for bound in (20.0, 7.5):
        meta = {"key": "k", "num_frames": 40, "width": 256, "height": 256, "flow": {"bound": bound}}
        aux = torch.from_numpy(SampleDrawer([view], seed=0).draw(meta, 0)["flow"].aux)[None]  # (1, 4)
        flow = finish_flow(x, aux, False)  # (N, 2, T, H, W)
        for field in (0, 1):  # u, v
            want = (stored - 128.0) * bound / 127.0 * aux[0, field]
            torch.testing.assert_close(flow[0, field, 3, 2], want)

def test_bf16_autocast_forward():
    method = small("sod")
    for m in method.modules():  # dropout draws differ between copies
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert_bf16_forward_matches_fp32(method, {"rgb": torch.randn(4, 3, 80, 80), "sod": torch.randn(4, 3, 5, 80, 80)})
