"""videoMoCo wiring: v1/v2 heads and views, InfoNCE equal to thesis eq. (2) against the queue as it was,
the FIFO queue's values and wrap-around, and the momentum update's values."""
import torch
import torch.nn.functional as F
from torch import nn

from fastvid.data.views import VideoContrastViews
from fastvid.losses import reference
from fastvid.methods.video_moco import VideoMoCo, VideoMoCoConfig
from tests.methods.checks import assert_bf16_forward_matches_fp32


def small(**kw) -> VideoMoCo:
    torch.manual_seed(0)
    return VideoMoCo(VideoMoCoConfig(queue_size=6, dim=8, views=VideoContrastViews(frames=4, size=32), **kw))


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    return {"query": torch.randn(n, 3, 4, 32, 32), "key": torch.randn(n, 3, 4, 32, 32)}


def test_heads_and_views_per_version():
    v1, v2 = small(version="v1"), small(version="v2")
    assert [type(m) for m in v1.head] == [nn.Linear]
    assert [type(m) for m in v2.head] == [nn.Linear, nn.ReLU, nn.Linear]
    q1, k1 = v1.views()
    q2, _ = v2.views()
    assert (q1.name, k1.name) == ("query", "key")
    assert (q1.spatial.blur, q1.spatial.jitter) == (0.0, 1.0) and q2.spatial.blur > 0  # v2: stronger aug


def test_loss_is_eq2_against_the_queue_before_enqueue_and_queue_fifo():
    method = small()
    b = batch(4)
    queue0 = method.queue.clone()  # (6, 8)
    out = method(b)
    with torch.no_grad():
        q = method.head(method.encoder(b["query"]))
        k = method.key_head(method.key_encoder(b["key"]))
    torch.testing.assert_close(out["loss"], reference.info_nce_queue(q, k, queue0, 0.2), rtol=1e-4, atol=1e-5)
    # The 4 new keys fill rows 0..3; the pointer moves to 4.
    torch.testing.assert_close(method.queue[:4], F.normalize(k, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.queue[4:], queue0[4:])
    assert method.queue_ptr.item() == 4
    # The next 4 keys wrap around: rows 4, 5, 0, 1.
    b2 = batch(4)
    method(b2)
    with torch.no_grad():
        k2 = F.normalize(method.key_head(method.key_encoder(b2["key"])), dim=1)
    torch.testing.assert_close(method.queue[[4, 5, 0, 1]], k2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.queue[2:4], F.normalize(k, dim=1)[2:4], rtol=1e-5, atol=1e-6)
    assert method.queue_ptr.item() == 2


def test_eval_mode_leaves_the_queue_alone():
    method = small().eval()
    queue0 = method.queue.clone()
    method(batch(2))
    assert torch.equal(method.queue, queue0) and method.queue_ptr.item() == 0


def test_momentum_update_after_a_step():
    method = small(momentum=0.9)
    key0 = [p.clone() for p in method.key_encoder.parameters()]
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(batch(2))["loss"].backward()
    opt.step()
    method.after_step()
    for p_k, p_k0, p_q in zip(method.key_encoder.parameters(), key0, method.encoder.parameters()):
        torch.testing.assert_close(p_k, 0.9 * p_k0 + 0.1 * p_q)
    assert not any(p.requires_grad for p in method.key_encoder.parameters())
    assert set(method.encoder_state_dicts()) == {"video"}


def test_bf16_autocast_enqueues_float32_keys():
    """Under bf16 autocast the keys are bf16; the float32 queue takes them (it used to fail in enqueue)."""
    method = small()
    after = assert_bf16_forward_matches_fp32(method, batch(4))
    assert after.queue.dtype == torch.float32 and int(after.queue_ptr) == 4
    torch.testing.assert_close(after.queue[4:], method.queue[4:])  # untouched entries
    torch.testing.assert_close(after.queue[:4].norm(dim=1), torch.ones(4), rtol=1e-2, atol=0)  # unit keys
