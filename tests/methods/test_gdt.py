"""GDT's wiring: the hierarchical batch meets the paper's constraints (i)-(iii) for every row of Table 1,
each embedding row is the transformation its factors name, the loss is eq. (1)'s reference, the shapes
into each encoder, negatives gathered across two processes, and a few CPU steps."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastvid.losses import reference
from fastvid.methods import get_method
from fastvid.methods.gdt import GDT, GDTConfig, hypothesis, transformation_factors
from tests.methods.checks import assert_bf16_forward_matches_fp32, losses_over_steps

# Table 1 of the paper: row -> (Mod., TR, TS); DS is distinctive in every row; "none" is the table's dot.
TABLE1 = {
    "a": ("v", "none", "none"), "b": ("v", "i", "none"), "c": ("v", "none", "i"), "d": ("v", "i", "i"),
    "e": ("av", "none", "none"), "f": ("av", "i", "none"), "g": ("av", "none", "i"), "h": ("av", "i", "i"),
    "i": ("av", "d", "none"), "j": ("av", "none", "d"), "k": ("av", "d", "i"), "l": ("av", "i", "d"),
    "m": ("av", "d", "d"),
}
FRAMES, SIZE, MEL, STEPS = 4, 32, 40, 24  # tiny clips and spectrograms: the real encoders on 2 CPU cores


def row_config(row: str) -> GDTConfig:
    modality, tr, ts = TABLE1[row]
    return GDTConfig(modality=modality, time_reversal=tr, time_shift=ts)


def contrast(factors: torch.Tensor, invariant: tuple[bool, ...]) -> torch.Tensor:
    """c(T, T') of sec. 3.1 between row n's first modality and row n''s second: the product over factors."""
    c = torch.ones(factors.shape[0], factors.shape[0], dtype=torch.bool)
    for col, inv in enumerate(invariant):
        if not inv:
            c &= factors[:, None, col] == factors[None, :, col]
    return c


@pytest.mark.parametrize("row", sorted(TABLE1))
def test_batch_satisfies_constraints(row):
    cfg = row_config(row)
    k_tau, k_r, invariant = hypothesis(cfg)
    assert (k_tau, k_r) == (1 if cfg.time_shift == "none" else 2, 1 if cfg.time_reversal == "none" else 2)
    k_i = 3
    factors = transformation_factors(torch.tensor([11, 4, 7]), k_tau, k_r)  # (N, 3) = (i, tau, r)
    assert factors.shape == (k_i * k_tau * k_r, 3)
    # hierarchical: videos, then shifts, then reversals, every combination exactly once (balanced)
    assert factors[:, 0].tolist() == [i for i in (11, 4, 7) for _ in range(k_tau * k_r)]
    assert len({tuple(f) for f in factors.tolist()}) == factors.shape[0]
    for col, k in ((1, k_tau), (2, k_r)):
        assert torch.bincount(factors[:, col]).tolist() == [k_i * k_tau * k_r // k] * k
    c = contrast(factors, invariant)  # (N, N), pairs across the two modalities (w = 1)
    # (i) every transformation has a positive; (ii) with T != T': across modalities m differs, and each
    # sampled invariant factor differs in some positive pair (the invariance is actually learned)
    assert c.any(dim=1).all() and c.diagonal().all()
    for col, name in ((1, "time_shift"), (2, "time_reversal")):
        differs = factors[:, None, col] != factors[None, :, col]
        if getattr(cfg, name) == "i":
            assert (c & differs).any()
        if getattr(cfg, name) == "d":  # a hard negative: same video, only this factor differs
            same_rest = (factors[:, None, 0] == factors[None, :, 0]) & differs
            assert (same_rest & ~c).any(dim=1).all()
    # (iii) every positive pair's anchor also has a negative, so eq. (1)'s fraction is not constant
    assert (~c).any(dim=1).all()


def random_batch(cfg: GDTConfig, k_i: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every view any row of Table 1 reads: (tau, r) data of each modality and the second augmentations."""
    gen = torch.Generator().manual_seed(seed)
    batch = {"index": torch.tensor([5, 2, 9, 1][:k_i]), "label": torch.zeros(k_i, dtype=torch.long)}
    for k in (1, 2):
        for rev in ("", "_rev"):
            batch[f"video{k}{rev}"] = torch.randn(k_i, 3, FRAMES, SIZE, SIZE, generator=gen)
            batch[f"video{k}{rev}_g"] = torch.randn(k_i, 3, FRAMES, SIZE, SIZE, generator=gen)
            batch[f"audio{k}{rev}"] = torch.randn(k_i, 1, MEL, STEPS, generator=gen)
    return batch


def build(cfg: GDTConfig, seed: int = 0) -> GDT:
    torch.manual_seed(seed)
    return GDT(cfg)


def test_registered_and_views():
    assert get_method("gdt") is GDT
    av = build(GDTConfig())
    views = {v.name: v for v in av.views()}
    # row (l): 2 shifts x 2 reversals, each a view of its own (reversed before its own augmentation)
    assert sorted(views) == ["audio1", "audio1_rev", "audio2", "audio2_rev",
                             "video1", "video1_rev", "video2", "video2_rev"]
    assert views["audio1"].audio.follow == "video1" and views["audio1_rev"].audio.follow == "video1_rev"
    assert views["video1"].temporal.frames == 30
    assert (views["video1"].temporal.reverse, views["video1_rev"].temporal.reverse) == (0.0, 1.0)
    assert views["video1_rev"].temporal.anchor == views["video1"].temporal.anchor != views["video2"].temporal.anchor
    # row (a): one shift, no reversal, its second "modality" a second augmentation of the same frames
    v = build(row_config("a"))
    views = {x.name: x for x in v.views()}
    assert sorted(views) == ["video1", "video1_g"]
    assert views["video1_g"].temporal == views["video1"].temporal and views["video1_g"].modality == "rgb"
    # row (b): reversal sampled: each reversal and its second augmentation
    assert sorted(x.name for x in build(row_config("b")).views()) == ["video1", "video1_g", "video1_rev",
                                                                       "video1_rev_g"]
    assert set(v.encoders()) == {"video"} and set(av.encoders()) == {"video", "audio"}


@pytest.fixture(scope="module")
def row_l() -> GDT:
    """The default hypothesis, Table 1 row (l): K_tau = 2 (distinctive), K_r = 2 (invariant)."""
    return build(GDTConfig())


def test_shapes_into_each_encoder(row_l):
    seen = {}
    hooks = [row_l.video.register_forward_pre_hook(lambda m, args: seen.update(video=args[0].shape)),
             row_l.audio.register_forward_pre_hook(lambda m, args: seen.update(audio=args[0].shape))]
    out = row_l.train()(random_batch(row_l.cfg, k_i=2))
    for h in hooks:
        h.remove()
    n = 2 * 2 * 2  # K_i K_tau K_r
    assert seen == {"video": (n, 3, FRAMES, SIZE, SIZE), "audio": (n, 1, MEL, STEPS)}
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_rows_are_the_transformations_they_name(row_l):
    method = row_l.eval()  # eval: BN uses running stats, so a row embeds the same alone or in a batch
    batch = random_batch(method.cfg, k_i=2)
    with torch.no_grad():
        v, a, factors = method.embed(batch)
        clips, specs = [], []
        for i, tau, r in factors.tolist():
            pos = batch["index"].tolist().index(i)
            rev = "_rev" if r else ""  # r_1: the loader's reversed read, augmented on its own
            clips.append(batch[f"video{tau + 1}{rev}"][pos])  # (3, T, H, W)
            specs.append(batch[f"audio{tau + 1}{rev}"][pos])  # (1, F, T_mel)
        torch.testing.assert_close(v, method.head_v(method.video(torch.stack(clips))), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a, method.head_a(method.audio(torch.stack(specs))), atol=1e-5, rtol=1e-4)
    assert sorted(map(tuple, factors.tolist())) == [(i, t, r) for i in (2, 5) for t in (0, 1) for r in (0, 1)]


@pytest.mark.parametrize("row", ["a", "d", "m"])
def test_loss_equals_reference(row):
    method = build(row_config(row)).eval()
    batch = random_batch(method.cfg, k_i=2)
    cross_modal = row not in "abcd"  # rows a-d: SimCLR's w = delta(T != T')
    with torch.no_grad():
        v, a, factors = method.embed(batch)
        want = reference.gdt_loss(v.double(), a.double(), factors, method.invariant, 0.07, cross_modal=cross_modal)
        out = method(batch)
    torch.testing.assert_close(out["loss"].double(), want, atol=1e-5, rtol=1e-5)
    assert 0.0 <= out["acc"].item() <= 1.0


def test_row_a_is_nt_xent_over_the_two_augmentations():
    """Table 1 row (a) "emulating SimCLR": the loss is NT-Xent between the two augmentation draws."""
    method = build(row_config("a")).eval()
    batch = random_batch(method.cfg, k_i=3)
    with torch.no_grad():
        v, a, _ = method.embed(batch)  # (3, D) each: draw g and draw g' of each video
        torch.testing.assert_close(method(batch)["loss"].double(), reference.nt_xent(v.double(), a.double(), 0.07),
                                   atol=1e-5, rtol=1e-5)


def test_pretext_accuracy_is_one_when_the_modalities_agree():
    """acc counts anchors whose best cross-modal candidate is a positive: identical video and audio
    embeddings (positives exactly aligned) give 1."""
    method = build(row_config("e")).eval()
    batch = random_batch(method.cfg, k_i=3)
    with torch.no_grad():
        v, _, factors = method.embed(batch)
        method.embed = lambda batch: (v, v.clone(), factors)
        assert method(batch)["acc"].item() == 1.0


def test_a_few_cpu_steps_lower_the_loss():
    method = build(GDTConfig(hidden_dim=64, embed_dim=32))
    batch = random_batch(method.cfg, k_i=2)
    losses = losses_over_steps(method, batch, torch.optim.Adam(method.parameters(), lr=1e-4), steps=3)
    assert losses[-1] < losses[0]


def small_encoders(method: GDT) -> GDT:
    """The gather test is about rows crossing processes, not the backbones: swap in tiny networks with the
    encoders' output sizes so two processes run in seconds on 2 cores."""
    torch.manual_seed(1)
    method.video.net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.AdaptiveAvgPool3d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, method.video.out_dim))
    method.audio.net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten(), torch.nn.Linear(4, method.audio.out_dim))
    return method


def _two_process_worker(rank: int, init: str, out: str) -> None:
    """One of two processes: half the videos, eq. (1) over both halves, DDP's gradient average."""
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    method = small_encoders(build(GDTConfig())).eval()  # eval: the halves embed as the whole batch does
    batch = random_batch(method.cfg, k_i=2)
    half = {k: x[rank:rank + 1] for k, x in batch.items()}  # one video, 4 transformations, per process
    loss = method(half)["loss"]
    loss.backward()
    grad = method.head_v[-1].weight.grad.clone()
    dist.all_reduce(grad)
    if rank == 0:
        torch.save({"loss": loss.detach(), "grad": grad / 2}, out)
    dist.destroy_process_group()


def test_negatives_gathered_across_two_processes(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_two_process_worker, args=(f"file://{tmp_path / 'pg'}", str(out)), nprocs=2, join=True)
    method = small_encoders(build(GDTConfig())).eval()
    loss = method(random_batch(method.cfg, k_i=2))["loss"]
    loss.backward()
    got = torch.load(out)
    # the same loss and gradient as one process holding both videos
    torch.testing.assert_close(got["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["grad"], method.head_v[-1].weight.grad, atol=1e-5, rtol=1e-4)


def test_packaged_config_has_the_papers_defaults():
    from fastvid.run_config import load_config

    cfg = load_config("gdt")
    m = cfg.model
    assert (m.video_arch, m.audio_arch, m.temperature, m.embed_dim) == ("r2plus1d_18", "resnet9", 0.07, 256)
    assert (m.modality, m.time_reversal, m.time_shift) == TABLE1["l"]  # the setup of sec. 4.4
    assert (m.views.frames, m.views.size, m.views.short_side, m.views.short_side_jitter) == (30, 112, 128, 1.25)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.data.batch_size) == ("sgd", 0.01, 1e-5, 8)


def test_bf16_autocast_forward():
    method = small_encoders(build(GDTConfig()))  # the eq. (1) rows and gathers, not the backbones' bf16 kernels
    assert_bf16_forward_matches_fp32(method, random_batch(method.cfg, k_i=2))
