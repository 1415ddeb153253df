"""Each packaged config's spatial draws against its source: the hue span of its colour jitter (torchvision's
unit, a fraction of a full turn) and the crop areas of videoSimCLR/videoMoCo (thesis sec. 5.1, and MoCo v1's
[0.2, 1] from the thesis's v1 code)."""
import numpy as np
import pytest

from fastvid.data.sampling import RGB_TO_YIQ, YIQ_TO_RGB, colour, crop_box
from fastvid.data.spec import SpatialSpec
from fastvid.methods import get_method
from fastvid.run_config import load_config

# (method, overrides) -> largest hue shift in degrees: SimCLR's strength-0.5 jitter (hue 0.1 -> +-36) for
# videoSimCLR, videoMoCo v2 and Vi2CLR; MoCo v1's ColorJitter(0.4, 0.4, 0.4, 0.4) (+-144); no hue in GDT (the
# authors' colour jitter is brightness, contrast and saturation only) and no colour jitter in Cross and Learn
# (sec. 4.1: channel splitting instead).
HUE_SPAN = {("video_simclr", ()): 36.0, ("video_moco", ()): 36.0, ("video_moco", ("model.version=v1",)): 144.0,
            ("vi2clr", ()): 36.0, ("gdt", ()): 0.0, ("cross_and_learn", ()): 0.0}


def packaged_views(method: str, overrides: tuple[str, ...]):
    cfg = load_config(method, None, list(overrides))
    return get_method(method)(cfg.model).views()


def hue_angles(s: SpatialSpec, draws: int = 3000) -> np.ndarray:
    """Degrees by which each colour draw turns the (I, Q) chroma plane (grayscale draws left out)."""
    angles = []
    for seed in range(draws):
        m, _ = colour(s, np.random.default_rng(seed))
        turn = RGB_TO_YIQ @ m[:, :3] @ YIQ_TO_RGB  # b c sat R(hue) on the chroma plane
        if np.hypot(turn[1, 1], turn[2, 1]) > 1e-6:
            angles.append(np.degrees(np.arctan2(turn[2, 1], turn[1, 1])))
    return np.array(angles)


@pytest.mark.parametrize("method,overrides", list(HUE_SPAN))
def test_hue_span_of_each_config(method, overrides):
    span = HUE_SPAN[(method, overrides)]
    for view in packaged_views(method, overrides):
        if view.modality in ("flow", "audio"):
            continue
        if span == 0:  # no colour jitter draw, or one without a hue turn
            assert view.spatial.jitter == 0.0 or np.abs(hue_angles(view.spatial, draws=300)).max() < 1e-3, view.name
            continue
        widest = np.abs(hue_angles(view.spatial)).max()
        assert 0.97 * span < widest <= span + 1e-3, (view.name, widest)


# (method, overrides) -> crop area range: "a crop of random size in [0.08, 1] uniform in area" (thesis sec. 5.1)
# for videoSimCLR and videoMoCo v2 ("the same stronger spatial augmentation applied for videoSimCLR", sec. 3);
# MoCo v1's [0.2, 1] (the thesis's v1 code, main_moco.py: RandomResizedCrop(scale=(0.2, 1.))).
CROP_SCALE = {("video_simclr", ()): (0.08, 1.0), ("video_moco", ()): (0.08, 1.0),
              ("video_moco", ("model.version=v1",)): (0.2, 1.0)}


@pytest.mark.parametrize("method,overrides", list(CROP_SCALE))
def test_crop_areas_are_drawn_in_the_sources_range(method, overrides):
    low, high = CROP_SCALE[(method, overrides)]
    width, height = 320, 240
    for view in packaged_views(method, overrides):
        assert view.spatial.crop == "random_resized" and view.spatial.scale == (low, high)
        rng = np.random.default_rng(0)
        areas = np.array([w * h for _, _, w, h in (crop_box(view.spatial, width, height, rng) for _ in range(4000))])
        areas /= width * height
        assert areas.min() >= 0.95 * low and areas.max() <= high  # up to the rounding of w and h to pixels
        assert (areas < 1.25 * low).mean() > 0.005  # the low end is used


def test_hue_outside_torchvisions_range_is_refused():
    with pytest.raises(ValueError, match="fraction of a full turn"):
        SpatialSpec(hue=0.8)
