"""View plans as the extension point: a new RGB augmentation is one subclass of `RGBClipPlan` (its draw, its
wired fields, its step in the graph), given to `build_loader` in place of the view's spec."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from nvidia.dali import fn, types

from fastvid.data import SpatialSpec, TemporalSpec, ViewSpec, build_loader
from fastvid.data.plans import SampleDrawer, ViewPlans, compile_views
from fastvid.data.plans.base import DrawContext
from fastvid.data.plans.rgb import RGBClipPlan, RGBDraw
from tests.data.test_loader import cfg, metas, pixels


class SolarisePlan(RGBClipPlan):
    """A random solarise (as in BYOL's augmentations): with probability `p`, every 0-255 value at or above a
    threshold drawn in `thresholds` becomes 255 - value; after the colour map, before normalisation."""

    @dataclass(frozen=True)
    class Draw(RGBDraw):
        threshold: np.ndarray  # () float32; 256: not solarised

    def __init__(self, view: ViewSpec, p: float = 1.0, thresholds: tuple[int, int] = (64, 192)) -> None:
        super().__init__(view)
        self.p, self.thresholds = p, thresholds

    def draw(self, ctx: DrawContext) -> Draw:
        base = super().draw(ctx)  # the view's usual draws first: the same crops as without solarise
        solarise = ctx.rng.random() < self.p
        threshold = ctx.rng.integers(self.thresholds[0], self.thresholds[1] + 1) if solarise else 256
        return self.Draw(**vars(base), threshold=np.array(threshold, np.float32))

    def wire_fields(self, decode):
        return super().wire_fields(decode) + ("threshold",)

    def photometric(self, frames, args, planes: bool):
        x = fn.cast(super().photometric(frames, args, planes), dtype=types.FLOAT)
        return fn.cast(x + (x >= args.threshold) * (255.0 - 2.0 * x), dtype=types.UINT8)


def test_a_solarise_plan_is_one_class(vp9_shards):
    view = ViewSpec("v", temporal=TemporalSpec(frames=3),
                    spatial=SpatialSpec(size=(32, 32), normalize=False, scale=(0.3, 0.8), jitter=0.5))
    plain = next(iter(build_loader(cfg(vp9_shards), [view])))
    solarised = next(iter(build_loader(cfg(vp9_shards), [SolarisePlan(view)])))
    assert plain["index"].tolist() == solarised["index"].tolist()
    loader = build_loader(cfg(vp9_shards), [view])
    by_key, key_of = metas(vp9_shards), {i: k for k, i in loader.key_index.items()}
    drawer = SampleDrawer([SolarisePlan(view)], seed=0)
    changed = 0
    for n, index in enumerate(plain["index"].tolist()):
        threshold = float(drawer.draw(by_key[key_of[index]], index)["v"].threshold)
        before = np.round(pixels(plain["v"][n]))  # (T, H, W, 3) 0-255
        want = np.where(before >= threshold, 255 - before, before)
        np.testing.assert_array_equal(np.round(pixels(solarised["v"][n])), want)
        changed += int((want != before).sum())
    assert changed > 0


def test_a_plan_wiring_an_unknown_field_fails_when_compiled():
    class Misspelt(RGBClipPlan):
        def wire_fields(self, decode):
            return super().wire_fields(decode) + ("treshold",)

    with pytest.raises(TypeError, match=r"Misspelt wires \['treshold'\], not fields of RGBDraw"):
        ViewPlans([Misspelt(ViewSpec("v"))])


@pytest.mark.parametrize("view, reason", [
    (ViewSpec("a", "audio"), "an audio view needs an AudioSpec"),
    (ViewSpec("f", "frame", TemporalSpec(frames=2)), "a frame view takes temporal.frames=1"),
    (ViewSpec("o", "flow", spatial=SpatialSpec(per_frame=True)), "frame-wise crops would give each flow frame"),
])
def test_each_plan_refuses_a_view_it_cannot_make(view, reason):
    with pytest.raises(ValueError, match=reason):
        ViewPlans([view])


def test_a_view_of_unknown_modality_is_named_when_the_views_compile():
    view = replace(ViewSpec("clip"), modality="depth")
    with pytest.raises(ValueError, match=r"views \['clip'\]: unknown modality \(one of audio, diff, flow, frame, rgb\)"):
        compile_views([view])
