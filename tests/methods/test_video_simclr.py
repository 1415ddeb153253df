"""videoSimCLR wiring: its views, the clips into the 3D ResNet-18, NT-Xent equal to thesis eq. (1), the
pretext accuracy."""
import torch

from fastvid.data.views import VideoContrastViews
from fastvid.losses import reference
from fastvid.methods.video_simclr import VideoSimCLR, VideoSimCLRConfig
from tests.methods.checks import assert_bf16_forward_matches_fp32, losses_over_steps


def small(**views) -> VideoSimCLR:
    torch.manual_seed(0)
    return VideoSimCLR(VideoSimCLRConfig(views=VideoContrastViews(frames=4, size=32, **views)))


def test_views_follow_the_switches():
    assert VideoSimCLRConfig().views.temporal == "shift"  # the thesis's best: RandomShift [-8, 8] on UCF101
    i, j = small(temporal="shift", shift=8).views()
    assert (i.name, j.name) == ("clip_i", "clip_j")
    # both versions shift (thesis Fig. 3), each by its own draw; the drawn distributions: tests/data/test_sampling.py
    assert (i.temporal.frames, i.temporal.shift, j.temporal.shift, i.spatial.per_frame) == (4, 8, 8, False)
    i, j = small(temporal="drop").views()
    assert (i.temporal.drop, j.temporal.drop, i.temporal.phase, j.temporal.phase) == (True, True, 0, 1)
    _, j = small(temporal="reverse", frame_wise=True).views()
    assert j.temporal.reverse == 1.0 and j.spatial.per_frame


def test_clips_into_encoder_and_loss_is_eq1():
    method = small()
    seen = []
    method.encoder.register_forward_hook(lambda mod, args, out: seen.append((args[0].shape, out.shape)))
    batch = {"clip_i": torch.randn(3, 3, 4, 32, 32), "clip_j": torch.randn(3, 3, 4, 32, 32)}
    out = method(batch)
    assert seen == [((6, 3, 4, 32, 32), (6, 512))]  # both versions in one pass: BN over all 2N clips
    with torch.no_grad():
        p = method.embed(torch.cat([batch["clip_i"], batch["clip_j"]])).double()  # (6, 256)
    assert p.shape == (6, 256)
    expected = reference.nt_xent(p[:3], p[3:], 0.5)
    torch.testing.assert_close(out["loss"].double(), expected, rtol=1e-4, atol=1e-5)


def test_pretext_accuracy_is_the_share_of_clips_whose_nearest_is_their_other_version():
    method = small().eval()  # eval: BN on running statistics, so equal clips embed equally
    clips = torch.randn(4, 3, 4, 32, 32)
    assert method({"clip_i": clips, "clip_j": clips.clone()})["acc"].item() == 1.0  # p_i = p_j
    # version j of clip n is clip n + 1: every version's exact match is another clip's version
    assert method({"clip_i": clips, "clip_j": clips.roll(-1, dims=0)})["acc"].item() == 0.0


def test_loss_falls_on_a_fixed_batch():
    method = small()
    batch = {"clip_i": torch.randn(4, 3, 4, 32, 32), "clip_j": torch.randn(4, 3, 4, 32, 32)}
    batch["clip_j"] = batch["clip_i"] + 0.1 * batch["clip_j"]  # two noisy versions of the same clips
    losses = losses_over_steps(method, batch, torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9), steps=4)
    assert losses[-1] < losses[0]


def test_bf16_autocast_forward():
    batch = {"clip_i": torch.randn(3, 3, 4, 32, 32), "clip_j": torch.randn(3, 3, 4, 32, 32)}
    assert_bf16_forward_matches_fp32(small(), batch)


def test_packaged_config_follows_the_thesis_code():
    """The optimiser the thesis leaves out is its released train_videos_3d.py's: Adam, lr 3e-4, weight decay
    1e-6; tau 0.5 from its config.txt; the cosine decay of sec. 4."""
    from fastvid.run_config import load_config

    cfg = load_config("video_simclr")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("adam", 3e-4, 1e-6, "cosine")
    assert cfg.model.temperature == 0.5 and cfg.model.head_dims == [512, 512, 256]
