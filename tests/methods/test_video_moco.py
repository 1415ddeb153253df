"""videoMoCo wiring: v1/v2 heads and views, InfoNCE equal to thesis eq. (2) against the queue as it was,
the FIFO queue's values and wrap-around, the momentum update's values, shuffling BN on one process and
the pretext accuracy."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvid.data.views import VideoContrastViews
from fastvid.losses import reference
from fastvid.methods.base import SplitBatchNorm
from fastvid.methods.video_moco import VideoMoCo, VideoMoCoConfig
from tests.methods.checks import assert_bf16_forward_matches_fp32


def small(**kw) -> VideoMoCo:
    """A tiny-clip videoMoCo; plain BN (bn_splits=1) unless asked, so keys can be recomputed unshuffled."""
    torch.manual_seed(0)
    kw.setdefault("bn_splits", 1)
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
    torch.testing.assert_close(out["loss"], reference.info_nce_queue(q, k, queue0, 0.07), rtol=1e-4, atol=1e-5)
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


def test_held_out_clips_contrast_with_the_batch_keys_not_the_queue():
    """Eval mode: eq. (2) for each query with its own key as k+ and the batch's other keys as the dictionary,
    whatever the queue holds; top-1 counts queries whose own key scores highest."""
    method = small().eval()
    b = batch(4)
    out = method(b)
    with torch.no_grad():
        q = method.head(method.encoder(b["query"]))
        k = method.key_head(method.key_encoder(b["key"]))
    expected = torch.stack([reference.info_nce_queue(q[n:n + 1], k[n:n + 1], k[torch.arange(4) != n], 0.07)
                            for n in range(4)]).mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-4, atol=1e-5)
    scores = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T
    assert out["acc"].item() == (scores.argmax(1) == torch.arange(4)).float().mean().item()
    method.queue.copy_(F.normalize(torch.randn_like(method.queue), dim=1))
    assert torch.equal(method(b)["loss"], out["loss"])


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


def test_split_batch_norm_normalises_each_sub_batch_with_its_own_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(3)
    bn.weight.data.uniform_(0.5, 2.0)
    bn.bias.data.normal_()
    split = SplitBatchNorm(bn, 3)
    assert list(split.state_dict()) == list(bn.state_dict())  # same names: checkpoints, torchvision export
    x = torch.randn(7, 3, 2, 4, 4) * 3 + 1  # 7 clips in sub-batches of 3, 2 and 2
    got = split.train()(x)
    want, means, variances = [], [], []
    for chunk in (x[:3], x[3:5], x[5:]):
        mean, var = torch.zeros(3), torch.ones(3)
        want.append(F.batch_norm(chunk, mean, var, bn.weight, bn.bias, True, 0.1, bn.eps))
        means.append(mean)
        variances.append(var)
    torch.testing.assert_close(got, torch.cat(want))
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    # one chunk's output depends on its own clips only
    moved = x.clone()
    moved[6] += 5.0
    assert torch.equal(split(moved)[:5], got[:5]) and not torch.allclose(split(moved)[5], got[5])
    bn.load_state_dict(split.state_dict())
    torch.testing.assert_close(split.eval()(x), bn.eval()(x))  # eval: ordinary BN on the running statistics


def test_one_process_shuffling_bn_gives_keys_other_bn_groups_than_queries():
    """MoCo's shuffling BN on one GPU: both encoders normalise over bn_splits sub-batches, and the keys are
    shuffled first, so no key is normalised over the same group of clips as its query."""
    method = small(bn_splits=2)
    for encoder in (method.encoder, method.key_encoder):
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, SplitBatchNorm) and m.splits == 2 for m in norms)
    b = batch(8)
    b["key"] = b["query"].clone()  # key clip n is query clip n: rows identify the clips
    seen = {}
    method.encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("q", args[0]))
    method.key_encoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("k", args[0]))
    torch.manual_seed(3)
    method(b)

    def groups(clips: torch.Tensor) -> set[frozenset[int]]:
        order = [int(torch.nonzero((b["query"] == c).flatten(1).all(1))[0]) for c in clips]  # clip identities
        return {frozenset(order[:4]), frozenset(order[4:])}  # the two BN sub-batches

    assert groups(seen["q"]) == {frozenset(range(4)), frozenset(range(4, 8))}
    assert groups(seen["k"]).isdisjoint(groups(seen["q"]))  # every key group mixes clips of both query groups


def test_shuffled_keys_come_back_in_batch_order():
    method = small(bn_splits=2).eval()  # eval: running statistics, so the shuffle cannot change a key's value
    clips = batch(6)["key"]
    with torch.no_grad():
        torch.testing.assert_close(method.keys(clips), method.key_head(method.key_encoder(clips)))


def test_too_few_clips_for_the_bn_splits_is_named():
    with pytest.raises(ValueError, match="at least 4 samples"):
        small(bn_splits=4)(batch(2))


def test_pretext_accuracy_counts_queries_whose_key_beats_the_queue():
    method = small()  # training: the queue is the dictionary; the key encoder starts as a copy of the query's
    b = batch(4)
    b["key"] = b["query"].clone()
    assert method(b)["acc"].item() == 1.0  # q = k: cosine 1 beats any queue entry
    b["key"][:2] = batch(2)["key"]  # queries 0 and 1 get other keys...
    with torch.no_grad():
        method.queue.copy_(F.normalize(torch.randn_like(method.queue), dim=1))
        method.queue[:2] = F.normalize(method.head(method.encoder(b["query"]))[:2], dim=1)  # ...and the queue
    assert method(b)["acc"].item() == 0.5  # holds them exactly: for 0 and 1 a queue entry wins


def test_no_accuracy_when_the_step_is_not_logged():
    """want_metrics off (a step the trainer does not log): the same loss terms, no accuracy computed."""
    method = small().eval()
    b = batch(4)
    with_acc = method(b)
    method.want_metrics = False
    without = method(b)
    assert set(without) == {"loss", "info_nce"} and "acc" in with_acc
    assert without["loss"].item() == with_acc["loss"].item()


def test_packaged_config_follows_the_thesis_code():
    """Values the thesis leaves out come from its videoMOCO_scripts/main_moco.py: tau 0.07 (--moco-t, one
    script for v1 and v2), SGD lr 0.03, momentum 0.9, weight decay 1e-4, m 0.999, 128-d keys."""
    from fastvid.run_config import load_config

    cfg = load_config("video_moco")
    m = cfg.model
    assert (m.temperature, m.momentum, m.dim, m.queue_size) == (0.07, 0.999, 128, 8192)
    assert VideoMoCoConfig().temperature == 0.07
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.03, 0.9, 1e-4)
