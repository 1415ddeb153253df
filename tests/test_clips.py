"""The frame-marked clips every loader test relies on decode back to their own indices."""
import av
import pytest

from tests.clips import frame_index, marked_frame, ramp_direction, write_marked_clip


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("vp9", ".mp4"), ("mjpeg", ".avi")])
def test_indices_survive_coding(tmp_path, codec, suffix):
    path = write_marked_clip(tmp_path / f"clip{suffix}", 37, codec=codec)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [frame_index(f) for f in frames] == list(range(37))


def test_crop_and_flip_are_readable():
    frame = marked_frame(201, 64, 80)
    assert frame_index(frame[10:30, 40:70]) == 201
    assert ramp_direction(frame) == 1 and ramp_direction(frame[:, ::-1]) == -1
