"""Validation while training (`fastvid.validation`): the demo's held-out clips share no frame with a training
clip, the metrics are the direct computation on fixed batches, a resumed run validates to the same numbers,
and `fastvid plot` draws what the run logged."""
import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from fastvid.checksum import json_checksum
from fastvid.checkpoint import load_checkpoint
from fastvid.data.loader import LoaderError, build_loader
from fastvid.data.sample import SampleOptions, holdout
from fastvid.methods import get_method
from fastvid.plot import CURVES, METRICS, plot_run, read_metrics
from fastvid.run_config import load_config
from fastvid.train import train
from fastvid.validation import KNN_VIEW, Validation, batch_statistics, build_validation, validate
from tests.train_helpers import CPU, TINY

SEGMENT, HOP = SampleOptions.segment, SampleOptions.hop


def frames(key: str) -> tuple[str, range]:
    """The source clip of a sample piece and the frames it covers (`fastvid.data.sample`: piece k starts at k hop)."""
    source, k = key.rsplit("_", 1)
    return source, range(int(k) * HOP, int(k) * HOP + SEGMENT)


def test_holdout_takes_the_end_of_each_source_and_no_overlapping_piece():
    keys = [f"bikes_bikes_{k:02d}" for k in range(28)] + [f"car_car_{k:02d}" for k in range(12)]
    train_keys, val_keys = holdout(keys, 5)
    # bikes 28 pieces: at most 7 held out; car 12: at most 3; taken in turn from the ends: 3 + 2.
    assert val_keys == ["bikes_bikes_25", "bikes_bikes_26", "bikes_bikes_27", "car_car_10", "car_car_11"]
    # Pieces 22-24 and 7-9 overlap a validation piece (32 frames from 8k): in neither set.
    assert train_keys == [f"bikes_bikes_{k:02d}" for k in range(22)] + [f"car_car_{k:02d}" for k in range(7)]
    assert holdout(keys[28:], 100)[1] == ["car_car_09", "car_car_10", "car_car_11"]  # a quarter at most


@pytest.mark.parametrize("method", ["video_simclr", "gdt"])
def test_the_demo_validation_pass_sees_no_training_clip(method, shards, audio_shards):
    """The clips the validation batches hold are the held-out ones, and none shares a frame with a clip the
    training loader reads."""
    cfg = load_config(method, None, [f"data.shards={audio_shards if method == 'gdt' else shards}", *CPU,
                                     *TINY[method], "data.val_split=holdout", "data.val_clips=8"])
    model = get_method(method)(cfg.model)
    loader = build_loader(cfg.data, model.views())
    train_keys, held_out = holdout(loader.key_index, cfg.data.val_clips)
    loader.keep_only(train_keys)
    val = build_validation(cfg.data, model, loader, held_out, 0, 1, torch.device("cpu"))
    by_position = {p: k for k, p in build_loader(cfg.data, model.views()).key_index.items()}
    seen = {by_position[i] for b in val.pretext for i in b["index"].tolist()}
    assert seen and seen <= set(held_out) and len(seen) == len(val.pretext) * len(val.pretext[0]["index"])
    read = {by_position[i] for b in loader for i in b["index"].tolist()}  # one epoch of training
    assert read and read <= set(train_keys)
    for v in seen:
        for t in read:
            (vs, vf), (ts, tf) = frames(v), frames(t)
            assert vs != ts or not set(vf) & set(tf), (v, t)


def nt_xent_by_hand(p_i: torch.Tensor, p_j: torch.Tensor, tau: float) -> tuple[float, float]:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1) and the pretext top-1, written out row by row."""
    z = F.normalize(torch.cat([p_i, p_j]), dim=1).double()
    n = p_i.shape[0]
    losses, hits = [], 0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        sims = {b: (z[a] @ z[b]).item() / tau for b in range(2 * n) if b != a}
        losses.append(-sims[pos] + math.log(sum(math.exp(s) for s in sims.values())))
        hits += max(sims, key=sims.get) == pos
    return sum(losses) / len(losses), hits / (2 * n)


def knn_by_hand(q: torch.Tensor, g: torch.Tensor, g_labels: list[int], k: int) -> list[int]:
    """The majority label of the k most cosine-similar gallery rows; a tie goes to the class seen first."""
    sims = F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    out = []
    for row in sims:
        near = [g_labels[j] for j in row.argsort(descending=True, stable=True)[:k].tolist()]
        counts = Counter(near)
        out.append(max(counts, key=lambda c: (counts[c], -near.index(c))))
    return out


def test_validation_metrics_equal_a_direct_computation_and_leave_training_state_alone():
    cfg = load_config("video_simclr", None, TINY["video_simclr"] + ["data.shards=/x"])
    torch.manual_seed(0)
    method = get_method("video_simclr")(cfg.model)
    gen = torch.Generator().manual_seed(1)

    def clips(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 4, 32, 32, generator=gen)  # (N, C, T, H, W)

    pretext = [{"clip_i": clips(4), "clip_j": clips(4), KNN_VIEW: clips(4), "label": torch.tensor(l),
                "index": torch.arange(4)} for l in ([0, 1, 2, 0], [1, 1, 2, 0])]
    gallery = [{KNN_VIEW: clips(6), "label": torch.tensor([0, 1, 2, 0, 1, 2]), "index": torch.arange(6)}
               for _ in range(2)]
    val = Validation(pretext, gallery, "video", 3, "test")
    method.train()
    rng = torch.get_rng_state()
    running = [b.clone() for n, b in method.named_buffers() if "running" in n]  # BN's, which validation keeps
    got = validate(method, val, Accelerator(cpu=True))
    assert method.training and method.want_metrics and torch.equal(torch.get_rng_state(), rng)

    method.eval()
    with torch.no_grad():
        with batch_statistics(method):  # the pretext loss: BN on the batch's own statistics, as in training
            both = [method.embed(torch.cat([b["clip_i"], b["clip_j"]])) for b in pretext]  # one pass, as forward
        direct = [nt_xent_by_hand(z[:4], z[4:], cfg.model.temperature) for z in both]
        q = torch.cat([method.encoder(b[KNN_VIEW]) for b in pretext])
        g = torch.cat([method.encoder(b[KNN_VIEW]) for b in gallery])
    labels = torch.cat([b["label"] for b in gallery]).tolist()
    predicted = knn_by_hand(q, g, labels, 10)
    truth = torch.cat([b["label"] for b in pretext]).tolist()
    assert got["loss"] == pytest.approx(sum(d[0] for d in direct) / 2, rel=1e-5)
    assert got["acc"] == pytest.approx(sum(d[1] for d in direct) / 2)
    assert got["knn_top1"] == pytest.approx(sum(p == t for p, t in zip(predicted, truth)) / len(truth))
    assert got["seconds"] > 0
    assert all(torch.equal(a, b) for a, b in zip(running, [b for n, b in method.named_buffers() if "running" in n]))


def test_a_resumed_run_validates_to_the_same_numbers(sample_cache, tmp_path, monkeypatch):
    """The demo's held-out clips, validated every step: the run resumed after step 1 logs at step 2 what the
    uninterrupted run logs, and keeps it in its checkpoint and encoders."""
    monkeypatch.setenv("FASTVID_CACHE", str(sample_cache))
    args = [*CPU, *TINY["video_moco"], "train.val_every=1", "data.val_clips=4", "data.val_gallery=8"]

    def run(out, steps, resume=False):
        cfg = load_config("video_moco", out / "config.yaml", [f"train.max_steps={steps}"]) if resume else \
            load_config("video_moco", None, [f"output={out}", f"train.max_steps={steps}", *args], demo=True)
        train(cfg, resume=resume)
        return read_metrics(out)

    whole = run(tmp_path / "whole", 2)
    run(tmp_path / "split", 1)
    resumed = run(tmp_path / "split", 2, resume=True)
    for name in ("val/loss", "val/acc", "val/knn_top1"):
        assert whole[name][0] == resumed[name][0] == [0, 1, 2]
        assert resumed[name][1] == pytest.approx(whole[name][1], rel=1e-5, abs=1e-6), name
    assert whole["val/loss"][1][0] > 0
    state = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_00000002")
    assert state["objects"]["progress"]["val"]["loss"] == pytest.approx(whole["val/loss"][1][2], rel=1e-5)


def test_plot_draws_the_last_value_of_each_step(tmp_path):
    rows = [{"step": 0, "val/loss": 2.7, "val/acc": 0.1}, {"step": 2, "loss/loss": 2.6, "pretext/acc": 0.2,
            "lr": 0.1, "clips_per_s": 3.0, "data_wait_fraction": 0.5},
            {"step": 2, "loss/loss": 2.5, "pretext/acc": 0.3, "lr": 0.1, "clips_per_s": 4.0,
             "data_wait_fraction": 0.4}]  # a resumed run redid step 2
    (tmp_path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # killed
    series = read_metrics(tmp_path)
    assert series["loss/loss"] == ([2], [2.5]) and series["val/loss"] == ([0], [2.7])
    assert plot_run(tmp_path) == tmp_path / CURVES and (tmp_path / CURVES).stat().st_size > 1000


def test_fastvid_plot_command(tmp_path, capsys):
    from fastvid.cli import main

    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"fastvid plot: error: {tmp_path / METRICS}: no such file; is "
                                               f"{tmp_path} a run folder of `fastvid train`?")
    (tmp_path / METRICS).write_text(json.dumps({"step": 1, "loss/loss": 2.0, "val/loss": 2.1}) + "\n")
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / CURVES) and (tmp_path / CURVES).is_file()


def test_with_data_the_val_split_is_read_and_named(shards, tmp_path):
    """--data: data.val_split=auto finds the shards' "val" split and reads val_clips of it spread over the split;
    none turns validation off; a split the shards lack is a one-line LoaderError naming the splits there are."""
    manifest = json.loads(open(shards).read())
    folder = Path(shards).parent
    val = [dict(s, split="val") for s in manifest["shards"]]
    for s in manifest["shards"]:
        for name in (s["tar"], s["index"]):
            (tmp_path / name).symlink_to(folder / name)
    manifest |= {"shards": manifest["shards"] + val, "splits": {"train": 53, "val": 53}}
    manifest["crc32"] = json_checksum(manifest)  # an edited dataset.json is refused unless its checksum follows
    (tmp_path / "dataset.json").write_text(json.dumps(manifest))
    cfg = load_config("video_simclr", None, [f"data.shards={tmp_path}", *CPU, *TINY["video_simclr"],
                                             "data.val_clips=4", "data.val_gallery=8"])
    model = get_method("video_simclr")(cfg.model)
    loader = build_loader(cfg.data, model.views())
    got = build_validation(cfg.data, model, loader, None, 0, 1, torch.device("cpu"))
    assert got.source == "split 'val'" and len(got.pretext) == 1 and len(got.gallery) == 2
    positions = sorted(loader.key_index.values())  # the val split holds the same samples in the same order
    assert got.pretext[0]["index"].tolist() == [positions[i] for i in (0, 17, 35, 52)]  # 4 spread over 53
    assert build_validation(replace(cfg.data, val_split="none"), model, loader, None, 0, 1, "cpu") is None
    with pytest.raises(LoaderError, match=r"no shards of split 'valid' \(splits: \['train', 'val'\]\)"):
        build_validation(replace(cfg.data, val_split="valid"), model, loader, None, 0, 1, "cpu")
