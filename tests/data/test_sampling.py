"""The numpy draws: each temporal transform picks the frames the thesis/papers describe."""
import numpy as np
import pytest

from fastvid.data.plans import SampleDrawer, SampleDraws
from fastvid.data.sampling import RGB_TO_YIQ, YIQ_TO_RGB, anchor_start, colour, crop_box, view_frames
from fastvid.data.spec import AudioSpec, SpatialSpec, TemporalSpec, ViewSpec
from fastvid.data.views import GDTViews, VideoContrastViews, Vi2CLRViews, gdt_views, video_simclr_views, vi2clr_views


def rng(seed=0):
    return np.random.default_rng(seed)


def selected(d: SampleDraws) -> np.ndarray:
    """The RGB views' frames, concatenated in view order, as the decoded selection gives them back."""
    return d.selections["mp4"].frames[d.selections["mp4"].order]


def test_random_m_is_consecutive_and_inside_the_video():
    t = TemporalSpec(frames=8, stride=2)
    for seed in range(50):
        g = rng(seed)
        start = anchor_start(t, 40, None, g)
        idx, first, rev = view_frames(t, start, 40, g)
        assert 0 <= start <= 40 - 15 and first == start and not rev
        assert np.array_equal(idx, start + 2 * np.arange(8))


def test_random_m_loops_short_clips():
    idx, _, _ = view_frames(TemporalSpec(frames=16), 0, 12, rng())
    assert idx.tolist() == list(range(12)) + [0, 1, 2, 3]


def test_shift_stays_within_s_of_the_unshifted_clip():
    t = TemporalSpec(frames=4, shift=4)
    assert t.span() == 4 + 2 * 4  # the anchor window leaves s frames on each side of the unshifted clip
    starts = {view_frames(t, 10, 40, rng(s))[1] for s in range(200)}
    assert starts == set(range(10, 19))  # the unshifted clip starts at 10 + 4: every step in [-4, 4] occurs


def simclr_frames(temporal: str, draws: int, num_frames: int = 200, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clip_i, clip_j) frame indices of `draws` samples of videoSimCLR's views preset."""
    views = video_simclr_views(VideoContrastViews(temporal=temporal, **kw))
    drawer = SampleDrawer(views, seed=0)
    meta = {"key": "k", "num_frames": num_frames, "width": 80, "height": 64}
    out = []
    for epoch in range(draws):
        drawer.epoch = epoch
        d = drawer.draw(meta, 0)
        frames = selected(d)  # clip_i then clip_j
        m = len(frames) // 2
        out.append((frames[:m], frames[m:]))
    return out


def test_shift_moves_both_versions_a_triangular_distance_apart():
    """Thesis sec. 3, Fig. 3 (clip_i shifted -1, clip_j +3) and its code: each version takes its own
    RandomShift [-s, s] of the sampled clip, so their offset d = r_j - r_i has P(d) = (2s + 1 - |d|) / (2s + 1)^2
    over [-2s, 2s]."""
    s, draws = 8, 4000
    pairs = simclr_frames("shift", draws, frames=16, shift=8)
    for i, j in pairs:
        assert np.array_equal(i, i[0] + np.arange(16)) and np.array_equal(j, j[0] + np.arange(16))
    offsets = np.array([int(j[0]) - int(i[0]) for i, j in pairs])
    assert offsets.min() == -2 * s and offsets.max() == 2 * s
    observed = np.bincount(offsets + 2 * s, minlength=4 * s + 1) / draws
    d = np.arange(-2 * s, 2 * s + 1)
    expected = (2 * s + 1 - np.abs(d)) / (2 * s + 1) ** 2
    assert np.abs(observed - expected).max() < 0.015
    assert (offsets == 0).mean() < 0.08  # not the old one-sided shift (uniform, 1/17 at 0) nor a shared start
    # both versions move: each clip's start, relative to the shared window, is uniform over [0, 2s]
    assert np.abs(offsets).mean() == pytest.approx(np.sum(np.abs(d) * expected), abs=0.3)


def test_drop_versions_are_complementary():
    """Thesis sec. 3 and its code (`get_temporal_subsample`): of the sampled 2m frames one version keeps the
    even and the other the odd ones, which one at random: never the same frames."""
    pairs = simclr_frames("drop", 2000, frames=8)
    i_even = []
    for i, j in pairs:
        window = np.sort(np.concatenate([i, j]))
        assert np.array_equal(window, window[0] + np.arange(16))  # together: the 2m consecutive frames
        assert not np.array_equal(i, j)
        assert np.all(np.diff(i) == 2) and np.all(np.diff(j) == 2) and abs(int(i[0]) - int(j[0])) == 1
        i_even.append(i[0] == window[0])  # clip_i took the even positions of the window
    assert 0.45 < np.mean(i_even) < 0.55


def test_frame_drop_keeps_even_or_odd_of_2m():
    for parity in (0, 1):
        idx, _, _ = view_frames(TemporalSpec(frames=4, drop=True), 3, 40, rng(), parity)
        assert idx.tolist() == ([3, 5, 7, 9], [4, 6, 8, 10])[parity]
        idx, _, _ = view_frames(TemporalSpec(frames=4, drop=True, phase=1), 3, 40, rng(), parity)
        assert idx.tolist() == ([4, 6, 8, 10], [3, 5, 7, 9])[parity]  # phase 1: the other half


def test_reverse_and_shuffle():
    idx, first, rev = view_frames(TemporalSpec(frames=5, reverse=1.0), 2, 40, rng())
    assert rev and idx.tolist() == [6, 5, 4, 3, 2] and first == 2
    idx, _, _ = view_frames(TemporalSpec(frames=8, shuffle=True), 2, 40, rng())
    assert sorted(idx.tolist()) == list(range(2, 10)) and idx.tolist() != list(range(2, 10))


def test_flow_window_drawn_in_proportion_to_magnitude():
    mag = [0.0] * 30
    mag[20] = 3.0  # only windows covering flow frame 20 move
    t = TemporalSpec(frames=10, start="flow", window=10)
    starts = [anchor_start(t, 30, mag, rng(s)) for s in range(300)]
    assert set(starts) <= set(range(11, 21)) and len(set(starts)) > 5
    mag2 = [1.0] * 30
    mag2[0:10] = [9.0] * 10  # the first window has ~9x the weight of windows far from it
    starts = np.array([anchor_start(t, 30, mag2, rng(s)) for s in range(2000)])
    weights = np.array([np.mean(mag2[s:s + 10]) for s in range(21)])
    expected = weights / weights.sum()
    observed = np.bincount(starts, minlength=21) / len(starts)
    assert np.abs(observed - expected).max() < 0.03


@pytest.mark.parametrize("crop", ["random_resized", "resize_crop", "center"])
def test_crop_boxes_lie_inside_the_frame(crop):
    s = SpatialSpec(size=(32, 32), crop=crop, short_side=40, scale=(0.3, 0.9))
    for seed in range(100):
        x0, y0, w, h = crop_box(s, 80, 64, rng(seed))
        assert 0 <= x0 and 0 <= y0 and x0 + w <= 80 + 1e-6 and y0 + h <= 64 + 1e-6
        if crop == "random_resized":
            assert 0.3 * 80 * 64 * 0.9 <= w * h <= 0.9 * 80 * 64 * 1.1
        else:
            assert w == pytest.approx(32 * 64 / 40) and h == pytest.approx(32 * 64 / 40)


def test_audio_window_starts_at_the_followed_views_first_frame():
    views = [ViewSpec("v", temporal=TemporalSpec(frames=8, reverse=0.5)),
             ViewSpec("a", "audio", audio=AudioSpec(follow="v"))]
    drawer = SampleDrawer(views, seed=3)
    meta = {"key": "k", "num_frames": 40, "width": 80, "height": 64, "fps": 25.0, "audio_rate": 24000}
    for epoch in range(10):
        drawer.epoch = epoch
        d = drawer.draw(meta, 0)
        frames = selected(d)
        first = int(frames.min())
        assert d["a"].start[0] == round(first / 25.0 * 24000)
        assert d["a"].reverse == int(frames[0] > frames[-1])  # reversed with its video


def test_vi2clr_middle_frame_follows_a_looped_clip():
    views = vi2clr_views(Vi2CLRViews(frames=32))
    drawer = SampleDrawer(views, seed=0)
    for n in (12, 20, 40):  # shorter than the 32-frame clip: it loops, and so does its middle
        meta = {"key": "k", "num_frames": n, "width": 80, "height": 64}
        for epoch in range(5):
            drawer.epoch = epoch
            d = drawer.draw(meta, 0)
            frames = selected(d)  # clip1 (32), frame1 (1), clip2 (32), frame2 (1)
            for k in (0, 33):
                clip, middle = frames[k:k + 32], frames[k + 32]
                assert np.array_equal(clip, (clip[0] + np.arange(32)) % n) and middle == clip[16], (n, epoch)


def test_hue_follows_torchvisions_unit_a_fraction_of_a_turn():
    s = SpatialSpec(jitter=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1, grayscale=0.0, blur=0.0)
    angles = []
    for seed in range(400):
        m, sigma = colour(s, rng(seed))
        turn = RGB_TO_YIQ @ m[:, :3] @ YIQ_TO_RGB  # rotation of the (I, Q) plane, luma kept
        assert np.allclose(turn[0], [1, 0, 0], atol=1e-5) and np.allclose(m[:, 3], 0) and sigma == 0
        angles.append(np.degrees(np.arctan2(turn[2, 1], turn[1, 1])))
    assert 34.0 < max(angles) <= 36.0 and -36.0 <= min(angles) < -34.0  # ColorJitter(hue=0.1): +-36 degrees


def test_grayscale_and_channel_split_are_colour_maps():
    grey, _ = colour(SpatialSpec(jitter=0.0, grayscale=1.0), rng())
    assert np.allclose(grey[:, :3], np.tile([0.299, 0.587, 0.114], (3, 1)), atol=1e-5)  # luma in every channel
    split, _ = colour(SpatialSpec(jitter=0.0, grayscale=0.0, channel_split=True), rng())
    kept = np.flatnonzero(np.abs(split[0, :3]) > 1e-5)
    assert len(kept) == 1 and np.allclose(split[:, :3], np.eye(3)[[kept[0]] * 3], atol=1e-5)


def gdt_draws(draws: int) -> list[SampleDraws]:
    """`draws` samples of GDT's views preset on a 320x240, 300-frame video with sound."""
    drawer = SampleDrawer(gdt_views(GDTViews()), seed=0)
    meta = {"key": "k", "num_frames": 300, "width": 320, "height": 240, "fps": 30.0, "audio_rate": 24000}
    out = []
    for epoch in range(draws):
        drawer.epoch = epoch
        out.append(drawer.draw(meta, 0))
    return out


def test_gdt_reversals_are_the_same_frames_each_with_its_own_spatial_draw():
    """GDT sec. 3.3, x(T) = g(r(m(x))): each reversal of a shift is augmented on its own (K_g = 1), so the
    pair (r_0, r_1) is the same frames backwards under two independent crops, flips and colour draws."""
    draws = gdt_draws(2000)
    same_flip, x0 = [], []
    for d in draws:
        frames = selected(d).reshape(4, 30)  # video1, video1_rev, video2, video2_rev
        for k in (0, 2):
            assert np.array_equal(frames[k + 1], frames[k][::-1])
        for k in (1, 2):
            fwd, rev = d[f"video{k}"].roi[0], d[f"video{k}_rev"].roi[0]
            assert not np.array_equal(fwd, rev) and not np.array_equal(d[f"video{k}"].colour, d[f"video{k}_rev"].colour)
            same_flip.append((fwd[3] < fwd[1]) == (rev[3] < rev[1]))  # x1 < x0: a mirrored region
            x0.append((min(fwd[1], fwd[3]), min(rev[1], rev[3])))
        # the audio of each reversal: the same window, reversed, with its own gain and masks
        assert d["audio1"].start == d["audio1_rev"].start and (d["audio1"].reverse, d["audio1_rev"].reverse) == (0, 1)
        assert d["audio1"].gain != d["audio1_rev"].gain
    assert 0.45 < np.mean(same_flip) < 0.55  # independent flips agree half the time
    x0 = np.array(x0)
    assert abs(np.corrcoef(x0[:, 0], x0[:, 1])[0, 1]) < 0.1  # independent crop positions


def test_gdt_rescale_and_colour_jitter_follow_the_authors():
    """The authors' g: short side rescaled to round(uniform(128, 160)), a 112 crop, and ColorJitter's
    brightness, contrast and saturation in [0.6, 1.4] on every clip, no hue, no grayscale."""
    spatial = gdt_views(GDTViews())[0].spatial
    g = rng(0)
    shorts = []
    for _ in range(4000):
        _, _, w, h = crop_box(spatial, 320, 240, g)
        assert w == pytest.approx(h)
        shorts.append(112 * 240 / w)  # the short side the 240 px frame was rescaled to
    shorts = np.array(shorts)
    assert np.allclose(shorts, np.round(shorts)) and shorts.min() == 128 and shorts.max() == 160
    counts = np.bincount(np.round(shorts).astype(int) - 128, minlength=33) / len(shorts)
    assert np.abs(counts[1:-1] - 1 / 32).max() < 0.012 and np.abs(counts[[0, -1]] - 1 / 64).max() < 0.008
    factors = []
    for seed in range(3000):
        m, sigma = colour(spatial, rng(seed))
        c = 1 - m[0, 3] / 128  # contrast: the offset 128 (1 - c) pivots on mid-grey
        bc = m[0, :3].sum()  # grey is kept in direction: M (1, 1, 1) = b c (1, 1, 1)
        chroma = RGB_TO_YIQ @ (m[:, :3] / bc) @ YIQ_TO_RGB  # diag(1, sat, sat): no hue turn
        assert np.allclose(chroma, np.diag([1.0, chroma[1, 1], chroma[1, 1]]), atol=1e-5) and sigma == 0
        factors.append((bc / c, c, chroma[1, 1]))
    factors = np.array(factors)  # (draws, 3): brightness, contrast, saturation
    assert (factors.min(0) >= 0.6 - 1e-4).all() and (factors.max(0) <= 1.4 + 1e-4).all()
    assert (factors.min(0) < 0.62).all() and (factors.max(0) > 1.38).all()  # jittered on every draw, full range
