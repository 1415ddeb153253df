"""Precise BN for frozen features: running statistics recomputed over given batches, for both encoders alike."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import fastvid.eval.api as api
from fastvid.checkpoint import save_encoders
from fastvid.cli import main
from fastvid.eval.encoders import precise_bn
from fastvid.eval.probe import ClipSpec
from fastvid.models import Encoder


class OneBN(nn.Module):
    """A 1x1x1 convolution and a BN with S3D's momentum (0.001), pooled: a video encoder in one BN layer."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm3d(4, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean(dim=(2, 3, 4))


def test_statistics_are_the_mean_over_batches_of_each_batch_s_and_the_encoder_is_untouched():
    torch.manual_seed(0)
    encoder = OneBN().eval()
    batches = [torch.randn(4, 3, 2, 3, 3) * 2 + 1, torch.randn(2, 3, 2, 3, 3) - 3]  # unequal sizes
    done = precise_bn(encoder, batches)
    with torch.no_grad():
        seen = [encoder.conv(b) for b in batches]  # what the BN layer normalises
    mean = torch.stack([s.mean(dim=(0, 2, 3, 4)) for s in seen]).mean(0)  # per batch, then averaged
    var = torch.stack([s.var(dim=(0, 2, 3, 4), unbiased=True) for s in seen]).mean(0)
    torch.testing.assert_close(done.bn.running_mean, mean)
    torch.testing.assert_close(done.bn.running_var, var)
    assert done.bn.momentum == 0.001 and not done.training
    assert torch.equal(encoder.bn.running_mean, torch.zeros(4)) and torch.equal(encoder.bn.running_var, torch.ones(4))
    with pytest.raises(ValueError, match="no batch"):
        precise_bn(encoder, [])


@pytest.fixture
def spied(tmp_path, monkeypatch) -> tuple[str, list[int]]:
    """An r3d_18 checkpoint, and the rows each precise-BN pass of `fastvid eval` reads (one entry per pass)."""
    torch.manual_seed(1)
    ckpt = tmp_path / "ckpt.pt"
    save_encoders(ckpt, {"method": "video_simclr", "config": {}}, {"video": Encoder("r3d_18").export()})
    rows: list[int] = []

    def spy(encoder, batches, *rest):
        batches = list(batches)
        rows.append(sum(len(b) for b in batches))
        return precise_bn(encoder, batches, *rest)

    monkeypatch.setattr(api, "precise_bn", spy)
    return str(ckpt), rows


@pytest.mark.parametrize("bn, passes", [("precise", 2), ("running", 0)])
def test_the_probe_recomputes_both_encoders_over_every_probe_clip_once(bn, passes, spied, tmp_path):
    ckpt, rows = spied
    out = tmp_path / "probe"
    assert main(["eval", "--checkpoint", ckpt, "--probe", "arrow", "--frames", "4", "--size", "32",
                 "--clips-per-video", "4", "--bn", bn, "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["bn"] == bn
    assert rows == [report["data"]["clips"]] * passes  # pretrained and random: each clip once


def test_knn_recomputes_both_encoders_over_the_training_clips_once(shards, spied, tmp_path):
    """The protocols' pass reads the --train split, shuffled and complete: each training clip once per encoder."""
    ckpt, rows = spied
    report = api.evaluate(api.EvalConfig(checkpoint=ckpt, out=str(tmp_path / "knn"), protocol="knn",
                                         train=shards, test=shards, test_split="train", test_clips=1,
                                         clip=ClipSpec(frames=4, stride=1, size=32), batch_size=16))
    clips = json.loads(Path(shards).read_text())["splits"]["train"]
    assert rows == [clips, clips]  # pretrained and random
    assert set(report["results"]) == {"pretrained", "random"}
