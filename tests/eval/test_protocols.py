"""Protocols on features whose answers are known: clip averaging, clip-level retrieval, label checks,
thumbnails, the retrieval figure, and fine-tuning's learning rates."""
import json

import pytest
import torch

from fastvid.data.spec import RGB_MEAN, RGB_STD
from fastvid.eval import protocols, report
from fastvid.eval.encoders import clip_features, normalize_clips
from fastvid.eval.probe import ClipSpec
from fastvid.models import Encoder


def _fs(features, labels, video) -> protocols.FeatureSet:
    n = len(labels)
    return protocols.FeatureSet(torch.tensor(features, dtype=torch.float32), torch.tensor(labels),
                                torch.tensor(video), torch.zeros(n, 3, protocols.THUMB, protocols.THUMB, 3, dtype=torch.uint8))


# Training clips: class 0 near +x, class 1 near +y, class 2 near -x.
TRAIN = _fs([[1, 0.1], [1, -0.1], [0.1, 1], [-0.1, 1], [-1, 0.1], [-1, -0.1]], [0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5])


def test_knn_protocol_recall_is_clip_level_and_accuracy_video_level():
    # Video 10 (class 0): two clips near +x, one near +y; video 11 (class 2): one clip near +y.
    test = _fs([[1, 0.05], [0.9, 0.0], [0.02, 1.0], [0.05, 1.0]], [0, 0, 0, 2], [10, 10, 10, 11])
    res = protocols.knn_protocol(TRAIN, test, 3, k=2, ks=(1, 2, 3))
    # Ranks 1-2 of every query are its own side's two clips: classes 0, 0 | 0, 0 | 1, 1 | 1, 1.
    # Rank 3 of the two +y queries (leaning to +x) is a class-0 clip: a hit for the third query only.
    assert res["R@1"] == 0.5 and res["R@2"] == 0.5 and res["R@3"] == 0.75
    # Per video: video 10 averages votes (0: 2 clips, 1: 1 clip) -> class 0, right; video 11 -> class 1, wrong.
    assert res["knn2_top1"] == 0.5 and res["videos"] == 2


def test_linear_protocol_averages_clips_per_video():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0]])
    ty = torch.arange(3).repeat(10)
    train = protocols.FeatureSet(centres[ty] + 0.3 * torch.randn(30, 2, generator=gen), ty, torch.arange(30),
                                 torch.zeros(30, 3, 1, 1, 3, dtype=torch.uint8))
    test = _fs([[4, 0], [3.5, 0.2], [0, 4], [-4, 0]], [0, 0, 1, 2], [0, 0, 1, 2])
    res = protocols.linear_protocol(train, test, 3, seed=0)
    assert res["top1"] == 1.0 and res["videos"] == 3


def test_extract_runs_every_view_and_refuses_unlabelled_clips():
    enc = Encoder("r3d_18").eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    batch = {"clip0": clip, "clip1": clip.flip(2), "label": torch.tensor([1, 0]), "index": torch.tensor([5, 6])}
    fs = protocols.extract(enc, [batch], ["clip0", "clip1"])
    assert fs.features.shape == (4, 512) and fs.video.tolist() == [5, 6, 5, 6] and fs.labels.tolist() == [1, 0, 1, 0]
    with torch.no_grad():
        torch.testing.assert_close(fs.features[:2], enc(clip))
    batch["label"] = torch.tensor([1, -1])
    with pytest.raises(ValueError, match="label_index -1"):
        protocols.extract(enc, [batch], ["clip0"])
    with pytest.raises(ValueError, match="no batches"):
        protocols.extract(enc, [], ["clip0"])


def test_image_encoders_average_frame_features():
    enc = Encoder("caffenet_bn").eval()
    clips = torch.randn(2, 3, 3, 100, 100)
    with torch.no_grad():
        feats = clip_features(enc, clips)
        by_frame = torch.stack([enc(clips[:, :, t]) for t in range(3)], 1).mean(1)
    torch.testing.assert_close(feats, by_frame)


def test_thumbnails_undo_the_loader_normalisation():
    frames = torch.randint(0, 256, (2, 5, 48, 48, 3), dtype=torch.uint8)  # (N, T, H, W, C)
    thumbs = protocols.thumbnails(normalize_clips(frames))
    assert thumbs.shape == (2, 3, 48, 48, 3)
    expected = frames[:, [0, 2, 4]].int()
    assert (thumbs.int() - expected).abs().max().item() <= 1
    mean, std = torch.tensor(RGB_MEAN), torch.tensor(RGB_STD)
    torch.testing.assert_close(normalize_clips(frames)[0, :, 0, 0, 0], (frames[0, 0, 0, 0].float() / 255 - mean) / std)


def test_views_sample_clips_independently_with_eval_or_train_augmentation():
    views = protocols.clip_views(3, ClipSpec(frames=4, stride=2, size=32), train=False)
    assert [v.name for v in views] == ["clip0", "clip1", "clip2"]
    assert len({v.temporal.anchor for v in views}) == 3
    assert all(v.spatial.crop == "center" and v.spatial.flip == 0 and v.spatial.size == (32, 32) for v in views)
    train = protocols.clip_views(1, ClipSpec(), train=True)[0]
    assert train.spatial.crop == "random_resized" and train.spatial.flip == 0.5


def test_finetune_trains_the_encoder_at_a_tenth_of_the_head_rate():
    torch.manual_seed(0)
    enc = Encoder("caffenet_bn").eval()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.randn(4, 3, 2, 100, 100)
    batch = {"clip0": x, "label": torch.tensor([0, 1, 0, 1]), "index": torch.arange(4)}
    res = protocols.finetune_protocol(enc, [[batch]] * 5, [batch], ["clip0"], 2, lr=1e-3, weight_decay=0.0,
                                      device="cpu")
    assert res["videos"] == 4 and 0.0 <= res["top1"] <= 1.0 and res["last_loss"] < res["first_loss"]
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # the caller's copy is untouched


def test_finetune_param_groups(monkeypatch):
    seen = {}
    real = torch.optim.SGD

    def spy(groups, **kw):
        seen["lrs"] = [g["lr"] for g in groups]
        seen["sizes"] = [sum(p.numel() for p in g["params"]) for g in groups]
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    enc = Encoder("caffenet_bn")
    batch = {"clip0": torch.randn(2, 3, 1, 100, 100), "label": torch.tensor([0, 1]), "index": torch.arange(2)}
    protocols.finetune_protocol(enc, [[batch]], [batch], ["clip0"], 5, lr=0.2, weight_decay=0.0, device="cpu")
    assert seen["lrs"] == [pytest.approx(0.02), 0.2]
    assert seen["sizes"] == [sum(p.numel() for p in enc.parameters()), 4096 * 5 + 5]


def test_report_table_json_and_retrieval_figure(tmp_path):
    results = {"pretrained": {"top1": 0.75, "n": 8, "ci": "wilson"}, "random": {"top1": 0.5, "n": 8, "ci": "wilson"}}
    text = report.table(results)
    assert text.splitlines()[-1].split() == ["gain", "+0.2500", "-"]  # no gain for a count
    path = report.write_json(tmp_path / "r.json", {"results": results})
    assert json.loads(path.read_text())["results"]["random"]["top1"] == 0.5
    thumbs = torch.randint(0, 256, (6, 3, protocols.THUMB, protocols.THUMB, 3), dtype=torch.uint8)
    train = protocols.FeatureSet(TRAIN.features, TRAIN.labels, TRAIN.video, thumbs)
    test = protocols.FeatureSet(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), torch.tensor([0, 1]), thumbs[:2])
    ex = protocols.retrieval_examples(train, test, queries=2, k=3)
    assert ex["neighbour_labels"][0].tolist()[:2] == [0, 0] and ex["neighbour_thumbs"].shape == (2, 3, 3, 48, 48, 3)
    png = report.retrieval_figure(tmp_path / "ret.png", ex, ["a", "b", "c"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
