"""Vi2CLR's wiring: the views, the per-epoch clustering state (index-aligned, checkpointed) feeding
CenterNCE and the two MIL-NCE losses as eqs. (2)-(4) say, shapes into each encoder, a descent step on the CPU,
unaugmented clustering inputs, the positive-mining reading order and the pretext accuracies."""
import copy
from collections import Counter
from dataclasses import fields

import numpy as np

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastvid.data.plans import SampleDrawer
from fastvid.data.views import Vi2CLRViews
from fastvid.losses import reference
from fastvid.methods import get_method
from fastvid.methods.clustering import cluster_features
from fastvid.methods.vi2clr import Vi2CLR, Vi2CLRConfig
from fastvid.models import Encoder
from tests.methods.checks import assert_bf16_forward_matches_fp32

FRAMES, CLIP, FRAME = 8, 32, 32  # tiny inputs: S3D and ResNet-50 on 2 CPU cores


def random_batch(index: list[int], seed: int = 0, groups: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Random clips and frames; samples with the same `groups` entry are near-copies (noise 1e-2), so even
    an untrained network embeds them together and the feature pass finds more than one cluster."""
    gen = torch.Generator().manual_seed(seed)
    b = len(index)
    group = torch.tensor(groups if groups is not None else range(b))
    batch = {"index": torch.tensor(index), "label": torch.zeros(b, dtype=torch.long)}
    for k in (1, 2):
        for name, shape in ((f"clip{k}", (3, FRAMES, CLIP, CLIP)), (f"frame{k}", (3, FRAME, FRAME))):
            base = torch.randn(int(group.max()) + 1, *shape, generator=gen)
            batch[name] = base[group] + 1e-2 * torch.randn(b, *shape, generator=gen)
    return batch


@pytest.fixture(scope="module")
def clustered() -> tuple[Vi2CLR, list[dict[str, torch.Tensor]]]:
    """A Vi2CLR after one feature pass over a 12-sample "dataset" seen out of order in three batches, each
    batch two groups of two near-copies."""
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig())
    passes = [random_batch([7, 0, 11, 3], seed=1, groups=[0, 1, 0, 1]),
              random_batch([5, 9, 1, 10], seed=2, groups=[0, 0, 1, 1]),
              random_batch([2, 8, 4, 6], seed=3, groups=[1, 0, 0, 1])]
    method.before_epoch(0, passes)
    return method, passes


def test_registered_and_views():
    assert get_method("vi2clr") is Vi2CLR
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig())
    views = {v.name: v for v in method.views()}
    assert sorted(views) == ["clip1", "clip2", "frame1", "frame2"]
    assert views["clip1"].temporal.frames == 32 and views["clip1"].temporal.anchor != views["clip2"].temporal.anchor
    # the 2D stream sees the middle frame of its clip
    assert views["frame1"].temporal.anchor == views["clip1"].temporal.anchor
    assert views["frame1"].temporal.offset == 16
    assert set(method.encoders()) == {"video", "image"}
    assert method.needs_feature_pass
    with pytest.raises(RuntimeError, match="no clusters yet"):
        method(random_batch([0, 1]))


def test_clustering_state_is_the_clustering_of_r_j(clustered):
    method, passes = clustered
    method.eval()
    with torch.no_grad():
        r_j = torch.cat([method.embed(b["clip1"], b["frame1"])[2] for b in passes])  # (12, d)
    index = torch.cat([b["index"] for b in passes])  # (12,) dataset order is not batch order
    found = cluster_features(r_j, method="finch", level=2, temperature=0.08)
    assert method.cluster_ids.shape == (12,) and found.centroids.shape[0] >= 2
    assert torch.equal(method.cluster_ids[index], found.ids)  # sample i keeps its own cluster
    torch.testing.assert_close(method.centroids, found.centroids)
    torch.testing.assert_close(method.concentration, found.concentration)
    assert method.concentration.mean().item() == pytest.approx(0.08, rel=1e-5)


def forward_and_embed(method: Vi2CLR, training: bool = True) -> tuple[dict, dict, torch.Tensor, torch.Tensor,
                                                                     torch.Tensor, torch.Tensor]:
    """A forward on a fixed batch, in training mode (BN on batch statistics; on a copy, so the fixture's
    running statistics stay) or eval mode: (batch, outputs, r_V, r_I, r_J, cluster id of each row)."""
    method = copy.deepcopy(method).train(training)
    batch = random_batch([3, 10, 6, 1], seed=4)
    with torch.no_grad():
        out = method(batch)
        r_v, r_i, r_j = method.embed(torch.cat([batch["clip1"], batch["clip2"]]),
                                     torch.cat([batch["frame1"], batch["frame2"]]))
    ids = method.cluster_ids[batch["index"]].repeat(2)  # both crops of a video are in its cluster
    return batch, out, r_v, r_i, r_j, ids


def test_held_out_clips_are_scored_on_the_instance_part_of_eq4(clustered):
    """Eval mode (validation): VideoNCE + ImgNCE with each crop's twin as its only positive, no CenterNCE;
    the clustering state is not read."""
    method, _ = clustered
    _, out, r_v, r_i, _, _ = forward_and_embed(method, training=False)
    twins = torch.arange(4).repeat(2)
    torch.testing.assert_close(out["video_nce"], reference.mil_nce(r_v, twins, 0.08), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["img_nce"], reference.mil_nce(r_i, twins, 0.08), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], out["video_nce"] + out["img_nce"])
    assert "center_nce" not in out and "center_acc" not in out
    sim = F.normalize(r_v, dim=1) @ F.normalize(r_v, dim=1).T
    sim.fill_diagonal_(-2.0)
    assert out["video_acc"].item() == pytest.approx((twins[sim.argmax(1)] == twins).float().mean().item())
    unclustered = copy.deepcopy(method).eval()
    unclustered.cluster_ids = torch.empty(0, dtype=torch.long)  # held-out scoring needs no clusters
    with torch.no_grad():
        torch.testing.assert_close(unclustered(random_batch([3, 10, 6, 1], seed=4))["loss"], out["loss"])


def test_losses_read_the_clustering_state(clustered):
    method, _ = clustered
    batch, out, r_v, r_i, r_j, ids = forward_and_embed(method)
    want = {
        "center_nce": reference.center_nce(r_j, ids, method.centroids, method.concentration),  # eq. (3)
        "video_nce": reference.mil_nce(r_v, ids, 0.08),  # eq. (2) on r_V
        "img_nce": reference.mil_nce(r_i, ids, 0.08),  # eq. (2) on r_I
    }
    for name, value in want.items():
        torch.testing.assert_close(out[name], value, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], sum(want.values()), atol=1e-5, rtol=1e-5)  # eq. (4), equal weights
    # the state is what the losses read: other assignments give other losses
    single_method = copy.deepcopy(method).train()
    single_method.cluster_ids = torch.arange(12)  # every video its own cluster: positives are only the twin crop
    with torch.no_grad():
        single = single_method(batch)
    torch.testing.assert_close(single["video_nce"], reference.mil_nce(r_v, torch.arange(4).repeat(2), 0.08),
                               atol=1e-5, rtol=1e-5)


def test_pretext_accuracies_read_the_clustering_state(clustered):
    method, _ = clustered
    _, out, r_v, _, r_j, ids = forward_and_embed(method)
    sim = F.normalize(r_v, dim=1) @ F.normalize(r_v, dim=1).T
    sim.fill_diagonal_(-2.0)
    assert out["video_acc"].item() == pytest.approx((ids[sim.argmax(1)] == ids).float().mean().item())
    logits = F.normalize(r_j, dim=1) @ method.centroids.T / method.concentration  # eq. (3)'s r.c_j / phi_j
    assert out["center_acc"].item() == pytest.approx((logits.argmax(1) == ids).float().mean().item())
    assert 0.0 <= out["img_acc"].item() <= 1.0


def test_clusters_come_from_unaugmented_inputs():
    """R_J = f_VI(X): the feature pass reads the centred clip and its middle frame, centre-cropped, with no
    flip or colour change: the same draws whatever the seed or epoch."""
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig())
    views = method.feature_views()
    assert [v.name for v in views] == ["clip1", "frame1"]
    meta = {"key": "k", "num_frames": 100, "width": 160, "height": 120}
    draws = [SampleDrawer(views, seed, epoch).draw(meta, 0) for seed, epoch in ((0, 0), (1, 0), (7, 3))]
    for d in draws[1:]:
        assert all(np.array_equal(getattr(d[v.name], f.name), getattr(draws[0][v.name], f.name))
                   for v in views for f in fields(d[v.name]))
    d = draws[0]
    frames = np.concatenate([d["clip1"].frames, d["frame1"].frames])  # clip1 (32), then frame1
    assert frames[:32].tolist() == list(range(34, 66)) and frames[32] == 34 + 16  # centred clip, middle frame
    for v in views:
        assert np.allclose(d[v.name].roi, [[0, 20, 120, 140]])  # the centre 120 x 120 square, unflipped
        assert np.allclose(d[v.name].colour, [np.eye(3, 4)], atol=1e-5)  # identity colour map
        assert not d[v.name].blur


def test_sample_order_mines_same_cluster_samples_into_each_batch():
    """The order the loader reads (set_order): every position once, and each sample of a cluster of two or
    more shares its batch with `mined_positives` of them (clusters here have 3 members, batches 6)."""
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig(mined_positives=2))
    method.cluster_ids = torch.arange(24) // 3  # 8 clusters of 3 positions
    shuffled = np.random.default_rng(0).permutation(24)
    order = method.sample_order(0, shuffled, batch_size=6, world_size=2)
    assert sorted(order.tolist()) == list(range(24))
    for batch in order.reshape(4, 6):  # ranks take 12 each: two batches of 6
        assert sorted(Counter((batch // 3).tolist()).values()) == [3, 3]
    assert np.array_equal(method.sample_order(0, shuffled, 6, 2), order)  # a resumed epoch reads the same
    assert not np.array_equal(method.sample_order(1, shuffled, 6, 2), order)


def test_one_cluster_falls_back_to_one_per_sample():
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig())
    # unrelated random inputs: the untrained network's r_J are nearly parallel and FINCH joins them all
    with pytest.warns(UserWarning, match="one cluster per sample"):
        method.before_epoch(0, [random_batch([2, 0, 1], seed=1), random_batch([4, 3], seed=2)])
    assert sorted(method.cluster_ids.tolist()) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(method.concentration, torch.full((5,), 0.08))


def test_clusters_survive_a_checkpoint(clustered):
    method, _ = clustered
    state = method.state_dict()
    torch.manual_seed(5)
    fresh = Vi2CLR(Vi2CLRConfig())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.cluster_ids, method.cluster_ids)
    assert torch.equal(fresh.centroids, method.centroids)
    assert torch.equal(fresh.concentration, method.concentration)
    with pytest.raises(RuntimeError, match="did not cluster"):
        fresh(random_batch([12, 0]))  # index 12 was not in the feature pass


def test_shapes_into_each_encoder_and_a_descent_step(clustered):
    method = copy.deepcopy(clustered[0]).train()  # the step below must not change the shared fixture
    seen = {}
    hooks = [method.video.register_forward_pre_hook(lambda m, args: seen.update(video=args[0].shape)),
             method.image.register_forward_pre_hook(lambda m, args: seen.update(image=args[0].shape))]
    batch = random_batch([0, 4, 9], seed=6)
    loss = method(batch)["loss"]
    for h in hooks:
        h.remove()
    assert seen == {"video": (6, 3, FRAMES, CLIP, CLIP), "image": (6, 3, FRAME, FRAME)}  # 2 crops x 3 videos
    # Random clips through batch-norm on 6 samples give gradient norms in the thousands, so a fixed-lr
    # optimiser step overshoots; a short step along -grad must lower the loss if the gradients are right.
    params = [p for p in method.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
    assert torch.isfinite(loss) and torch.isfinite(norm) and norm > 0
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= 1e-3 * g / norm
        assert method(batch)["loss"] < loss


def _feature_pass_worker(rank: int, init: str, out: str) -> None:
    """One of two processes holding 3 and 2 of the 5 samples."""
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    method = small_vi2clr()
    batch = feature_batch()
    share = {k: x[:3] if rank == 0 else x[3:] for k, x in batch.items()}  # uneven shares
    method.before_epoch(0, [share])
    torch.save({"ids": method.cluster_ids, "centroids": method.centroids}, f"{out}.{rank}")
    dist.destroy_process_group()


def small_vi2clr() -> Vi2CLR:
    """Vi2CLR with tiny stand-ins for S3D and ResNet-50 (same output sizes): the test is about the
    feature pass's gather, not the backbones."""
    torch.manual_seed(0)
    method = Vi2CLR(Vi2CLRConfig())
    method.video.net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.AdaptiveAvgPool3d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, method.video.out_dim))
    method.image.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, method.image.out_dim))
    return method


def feature_batch() -> dict[str, torch.Tensor]:
    return random_batch([4, 0, 3, 1, 2], seed=7, groups=[0, 1, 0, 1, 0])


def test_feature_pass_gathers_uneven_shares_across_two_processes(tmp_path):
    mp.spawn(_feature_pass_worker, args=(f"file://{tmp_path / 'pg'}", str(tmp_path / "state")), nprocs=2,
             join=True)
    single = small_vi2clr()
    single.before_epoch(0, [feature_batch()])  # one process seeing all five samples
    for rank in (0, 1):
        got = torch.load(tmp_path / f"state.{rank}")
        assert torch.equal(got["ids"], single.cluster_ids)  # every process holds the whole dataset's clusters
        torch.testing.assert_close(got["centroids"], single.centroids)


def test_packaged_config_has_the_papers_defaults():
    from fastvid.run_config import load_config

    cfg = load_config("vi2clr")
    m = cfg.model
    assert (m.video_arch, m.image_arch, m.embed_dim, m.temperature) == ("s3d", "resnet50", 128, 0.08)
    assert (m.cluster, m.finch_level, m.loss_weights) == ("finch", 2, (1.0, 1.0, 1.0))
    assert (m.views.frames, m.views.clip_size, m.views.frame_size) == (32, 128, 128)  # sec. 4.2: 128 x 128
    assert m.views == Vi2CLRViews()  # the dataclass defaults are the paper's too
    assert m.mined_positives == 1
    assert m.zero_init_residual and Vi2CLRConfig().zero_init_residual  # SimCLR's ResNet init, the dataclass's too
    image, default = Vi2CLR(m).image.net, Encoder("resnet50").net
    assert not image.layer1[0].bn3.weight.any() and default.layer1[0].bn3.weight.all()
    assert torch.equal(image.layer1[0].bn2.weight, default.layer1[0].bn2.weight)  # only each block's last BN
    assert (cfg.train.epochs, cfg.data.batch_size) == (300, 64)
    # no pre-training optimiser in the paper, no released code: CoCLR's (main_nce.py), not the evaluation runs'
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-3, 1e-5)


def test_bf16_autocast_forward(clustered):
    method, _ = clustered
    # ResNet-50 in bf16 moves cosine similarities by ~5e-3; at tau = 0.1 on near-copies that is ~6% of ImgNCE on
    # an AMD EPYC, and 12% of VideoNCE (0.905 vs 1.033) on the Intel Xeon with native bf16 that CI now runs on
    # (S3D's features themselves agree to a cosine of 0.99997 there): the bound leaves room for both.
    assert_bf16_forward_matches_fp32(method, random_batch([3, 10, 6, 1], seed=4), rtol=0.2)


def test_negative_mined_positives_is_a_config_error():
    from fastvid.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.mined_positives: must be >= 0.*got -1"):
        Vi2CLRConfig(mined_positives=-1)
    assert Vi2CLRConfig(mined_positives=0).mined_positives == 0  # a plain shuffle
