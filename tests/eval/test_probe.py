"""The motion probe's clips: pans move content by the stated pixels, zooms scale it, static holds still,
arrow clips run backwards, labels are independent of the source, folds split by video."""
import numpy as np
import pytest

from fastvid.eval.probe import (MOTIONS, ClipSpec, ProbeConfig, class_names, decode_video, grouped_folds,
                                make_clip, make_probe_set)
from tests.clips import frame_index, marked_frame, write_marked_clip

H, W = 160, 240
CLIP = ClipSpec(frames=6, stride=1, size=64)
CFG = ProbeConfig(window=0.5, pan_speed=3.0, zoom=1.5)  # window side 80 source px -> 1.25 source px per output px


def _ramp_video(n: int = 8) -> np.ndarray:
    """(n, H, W, 3) uint8 still frames: R = x, G = y, so a pixel's value says where it came from."""
    frame = np.zeros((H, W, 3), np.uint8)
    frame[..., 0] = np.arange(W)[None, :]
    frame[..., 1] = np.arange(H)[:, None]
    return np.repeat(frame[None], n, axis=0)


def _source_xy(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean source x and y of every frame (T,), and the source pixels per output pixel (T,) in x."""
    r, g = clip[..., 0].astype(np.float64), clip[..., 1].astype(np.float64)
    slope = (r[:, :, -8:].mean((1, 2)) - r[:, :, :8].mean((1, 2))) / (clip.shape[2] - 8)
    return r.mean((1, 2)), g.mean((1, 2)), slope


@pytest.mark.parametrize("motion, dx, dy", [("static", 0, 0), ("pan_left", -1, 0), ("pan_right", 1, 0),
                                            ("pan_up", 0, -1), ("pan_down", 0, 1)])
def test_pans_move_the_scene_by_pan_speed_output_pixels(motion, dx, dy):
    clip = make_clip(_ramp_video(), "motion", MOTIONS.index(motion), CLIP, CFG, np.random.default_rng(0))
    assert clip.shape == (6, 64, 64, 3)
    x, y, slope = _source_xy(clip)
    np.testing.assert_allclose(slope, 1.25, atol=0.02)  # no zoom: 80 source px over 64 output px
    # The window moves by pan_speed output pixels (x 1.25 source px) per frame, so the scene moves
    # the other way in the clip: pan_right -> content slides left.
    np.testing.assert_allclose(np.diff(x), dx * 3.0 * 1.25, atol=0.05)
    np.testing.assert_allclose(np.diff(y), dy * 3.0 * 1.25, atol=0.05)
    if motion == "static":
        assert (clip == clip[0]).all()


@pytest.mark.parametrize("motion, growth", [("zoom_in", 1.5), ("zoom_out", 1 / 1.5)])
def test_zooms_scale_the_scene_about_a_fixed_centre(motion, growth):
    clip = make_clip(_ramp_video(), "motion", MOTIONS.index(motion), CLIP, CFG, np.random.default_rng(1))
    x, y, slope = _source_xy(clip)
    # Apparent size of the scene = 1 / (source px per output px); it changes by `zoom` end to end,
    # by the same factor each frame, and the centre stays put.
    assert slope[0] / slope[-1] == pytest.approx(growth, rel=0.02)
    np.testing.assert_allclose(slope[:-1] / slope[1:], growth ** (1 / 5), rtol=0.02)
    np.testing.assert_allclose(x, x[0], atol=0.3)
    np.testing.assert_allclose(y, y[0], atol=0.3)


def test_clips_take_consecutive_strided_frames_and_arrow_reverses_them():
    video = np.stack([marked_frame(i, 96, 128) for i in range(40)])
    clip = ClipSpec(frames=5, stride=3, size=32)
    fwd = make_clip(video, "arrow", 0, clip, ProbeConfig(window=0.6), np.random.default_rng(2))
    idx = [frame_index(f) for f in fwd]
    assert np.diff(idx).tolist() == [3, 3, 3, 3]
    back = make_clip(video, "arrow", 1, clip, ProbeConfig(window=0.6), np.random.default_rng(2))
    assert [frame_index(f) for f in back] == idx[::-1]


def test_labels_are_drawn_independently_of_the_source():
    videos = [_ramp_video(12), 255 - _ramp_video(12)]
    clips, labels, groups = make_probe_set(videos, "motion", ClipSpec(4, 2, 32),
                                           ProbeConfig(window=0.5, clips_per_video=70), seed=3)
    assert clips.shape == (140, 4, 32, 32, 3) and groups.tolist() == [0] * 70 + [1] * 70
    for v in (0, 1):
        counts = np.bincount(labels[groups == v], minlength=7)
        assert (counts > 0).all()  # every class occurs in every video
    assert not np.array_equal(labels[:70], labels[70:])


def test_grouped_folds_hold_whole_videos_and_cover_every_clip():
    groups = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4])
    folds = grouped_folds(groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(9))
    for test in folds:
        assert not set(groups[test]) & set(np.delete(groups, test))
    with pytest.raises(ValueError, match="at least 2 source videos"):
        grouped_folds(np.zeros(4, np.int64), 3, 0)


def test_decode_video_scales_and_names_bad_input(tmp_path):
    path = write_marked_clip(tmp_path / "a.mp4", 10, height=96, width=128)
    video = decode_video(path, 48, 6)
    assert video.shape == (6, 48, 64, 3)
    assert [frame_index(f) for f in video] == list(range(6))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        decode_video(bad, 48, 6)


def test_pan_that_leaves_the_frame_is_refused():
    with pytest.raises(ValueError, match="leaves a 240x160 source"):
        make_clip(_ramp_video(40), "motion", MOTIONS.index("pan_right"), ClipSpec(40, 1, 16),
                  ProbeConfig(window=0.9, pan_speed=4.0), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown probe task"):
        class_names("colour")
