"""The numpy draws: each temporal transform picks the frames the thesis/papers describe."""
import numpy as np
import pytest

from fastvid.data.sampling import RGB_TO_YIQ, YIQ_TO_RGB, SampleDrawer, anchor_start, colour, crop_box, view_frames
from fastvid.data.spec import AudioSpec, SpatialSpec, TemporalSpec, ViewSpec
from fastvid.data.views import Vi2CLRViews, vi2clr_views


def rng(seed=0):
    return np.random.default_rng(seed)


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


def test_shift_stays_within_s_of_the_shared_anchor():
    t = TemporalSpec(frames=4, shift=4)
    starts = {view_frames(t, 10, 40, rng(s))[1] for s in range(200)}
    assert starts == set(range(6, 15))  # every step in [-4, 4] occurs, no other


def test_frame_drop_keeps_even_or_odd_of_2m():
    seen = set()
    for s in range(40):
        idx, _, _ = view_frames(TemporalSpec(frames=4, drop=True), 3, 40, rng(s))
        assert idx.tolist() in ([3, 5, 7, 9], [4, 6, 8, 10])
        seen.add(idx[0])
    assert seen == {3, 4}


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
        frames = d["frames"][d["frames.order"]]
        first = int(frames.min())
        assert d["a.start"][0] == round(first / 25.0 * 24000)
        assert d["a.reverse"] == int(frames[0] > frames[-1])  # reversed with its video


def test_vi2clr_middle_frame_follows_a_looped_clip():
    views = vi2clr_views(Vi2CLRViews(frames=32))
    drawer = SampleDrawer(views, seed=0)
    for n in (12, 20, 40):  # shorter than the 32-frame clip: it loops, and so does its middle
        meta = {"key": "k", "num_frames": n, "width": 80, "height": 64}
        for epoch in range(5):
            drawer.epoch = epoch
            d = drawer.draw(meta, 0)
            frames = d["frames"][d["frames.order"]]  # clip1 (32), frame1 (1), clip2 (32), frame2 (1)
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
