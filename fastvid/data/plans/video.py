"""What every video view shares: its frames (an anchor's window, shift, drop, reverse, shuffle), its crop
and flip (one region, or one per frame), and a video member that decodes the frames its views need once.

The numbers come from `fastvid.data.sampling`; this module decides which of them a view draws, in which
order (so a seed gives the same batches), and how the worker moves them with the decoded box.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fastvid.data import dali
from fastvid.data.pyav import cut_member
from fastvid.data.plans.base import Decode, DrawContext, GraphContext, Member, Plan, SampleDraws, Selection, with_views
from fastvid.data.sampling import affine, anchor_start, colour, crop_box, roi, view_frames


@dataclass(frozen=True)
class VideoDraw:
    """The draws every video view has. `frames` (T,) int32: the view's frames in the member, in view order;
    `first`: its first frame in time order and `reversed`: whether it runs backwards (audio follows both);
    `roi` (R, 4) float32: the `resize` region (y0, x0, y1, x1) in the decoded frames' pixels, R = T in
    frame-wise mode (x1 < x0: mirrored), else 1; `affine` (T, 2, 3) float32: the same regions as
    warp_affine matrices, frame-wise mode only."""

    frames: np.ndarray
    first: int
    reversed: bool
    roi: np.ndarray
    affine: np.ndarray | None

    def moved(self, x0: int, y0: int) -> VideoDraw:
        """The regions in a frame cut to a box whose top-left corner was at (x0, y0)."""
        shifted = None if self.affine is None else self.affine - np.array([[0, 0, x0], [0, 0, y0]], np.float32)
        return replace(self, roi=self.roi - np.array([y0, x0, y0, x0], np.float32), affine=shifted)


@dataclass(frozen=True)
class Spatial:
    """A view's spatial draws before its plan picks what it uses: regions (R, 4), colour maps (R, 3, 4) with
    blur sigmas (R,), and the temporal-flip coin."""

    roi: np.ndarray
    colours: np.ndarray
    sigmas: np.ndarray
    time_flip: bool


class VideoPlan(Plan):
    """A view of a video member: draws its frames and geometry; the subclass adds what its modality uses."""

    lag: ClassVar[int] = 0  # frames of the video per member frame minus one (flow frame i: video i -> i+1)

    def draw(self, ctx: DrawContext) -> VideoDraw:
        frames, first, reversed_ = self._frames(ctx)
        spatial = self._spatial(ctx)
        s = self.view.spatial
        return self.typed(ctx, spatial, frames=frames, first=first, reversed=reversed_, roi=spatial.roi,
                          affine=np.stack([affine(r, s.size) for r in spatial.roi]) if s.per_frame else None)

    @abc.abstractmethod
    def typed(self, ctx: DrawContext, spatial: Spatial, **common: Any) -> VideoDraw:
        """This plan's `Draw` from the `VideoDraw` fields `common` and the spatial draws it uses."""

    def _frames(self, ctx: DrawContext) -> tuple[np.ndarray, int, bool]:
        """(T,) frame indices, the first in time, and whether reversed: the anchor's window (drawn by the
        first view of the anchor, over the frames every view of it can read), then this view's own draws."""
        t, n = self.view.temporal, int(ctx.meta["num_frames"])
        if t.anchor not in ctx.anchors:
            magnitude = (ctx.meta.get("flow") or {}).get("magnitude")
            ctx.anchors[t.anchor] = anchor_start(t, ctx.anchor_frames[t.anchor], magnitude, ctx.rng)
        if t.drop and t.anchor not in ctx.parities:
            ctx.parities[t.anchor] = int(ctx.rng.integers(2))
        return view_frames(t, ctx.anchors[t.anchor], n - self.lag, ctx.rng, ctx.parities.get(t.anchor, 0))

    def _spatial(self, ctx: DrawContext) -> Spatial:
        """Crop, flip and colour per frame in frame-wise mode, else once; views of one `group` share the crop
        and flip. Every video view draws a colour and the temporal-flip coin, used or not: a view's stream of
        draws is the same whatever its modality, and a seed gives the batches it gave before the plans."""
        s, rng = self.view.spatial, ctx.rng
        width, height = int(ctx.meta["width"]), int(ctx.meta["height"])
        regions, colours, sigmas = [], [], []
        for i in range(self.view.temporal.frames if s.per_frame else 1):
            if s.group is not None and s.group in ctx.groups and not s.per_frame:
                box, flip = ctx.groups[s.group]
            else:
                box, flip = crop_box(s, width, height, rng), bool(rng.random() < s.flip)
                if s.group is not None and i == 0:
                    ctx.groups[s.group] = (box, flip)
            regions.append(roi(box, flip))
            c, sigma = colour(s, rng)
            colours.append(c)
            sigmas.append(sigma)
        time_flip = bool(rng.random() < s.flow_flip)
        return Spatial(np.stack(regions), np.stack(colours), np.array(sigmas), time_flip)

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        return ("affine",) if self.view.spatial.per_frame else ("roi",)

    def resample(self, frames, args, scale: float = 1.0):
        """(T, h, w, C) frames of the view's size, cropped, resized and flipped as drawn."""
        s = self.view.spatial
        if s.per_frame:
            return dali.resample(frames, s.size, affine=args.affine, scale=scale)
        return dali.resample(frames, s.size, roi=args.roi, scale=scale)


class VideoMember(Member):
    """A video file of the sample: the distinct frames its views read, decoded once, in order."""

    plans: list[VideoPlan]

    def part(self, meta: dict) -> dict:
        """The member's entry of KEY.json (fps, keyframes)."""
        return meta

    def select(self, draws: dict[str, Any]) -> Selection:
        unique, order = np.unique(np.concatenate([draws[p.name].frames for p in self.plans]), return_inverse=True)
        return Selection(unique.astype(np.int32), order.astype(np.int32))

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        return ("order", "frames") if decode == "dali" else ("order",)

    def media(self, decode: Decode) -> list[tuple[str, str]]:
        return [(self.ext, "")] if decode == "dali" else self.planes()

    @abc.abstractmethod
    def planes(self) -> list[tuple[str, str]]:
        """(name, layout) of what `decode` returns."""

    def read(self, data: bytes, draws: SampleDraws, decode: Decode, where: str
             ) -> tuple[SampleDraws, list[np.ndarray]]:
        meta = draws.meta
        keys = self.part(meta).get("keyframes")
        if not keys:
            raise ValueError(f"{where}: KEY.json lists no keyframes for this member")
        length = int(meta["num_frames"]) - self.plans[0].lag  # the frames drawn from: checked on opening
        selection = draws.selections[self.ext]
        if decode == "pyav":
            return self.decode(data, draws, keys, length, where)
        # DALI decodes from the first frame: hand it only the GOPs needed, and their frame numbers there
        cut, frames = cut_member(data, selection.frames, keys, float(meta["fps"]), where=where, length=length)
        return with_views(draws, {}, (self.ext, replace(selection, frames=frames))), [np.frombuffer(cut, np.uint8)]

    @abc.abstractmethod
    def decode(self, data: bytes, draws: SampleDraws, keyframes: list[int], length: int, where: str
               ) -> tuple[SampleDraws, list[np.ndarray]]:
        """Decode the selected frames in the worker (`decode="pyav"`)."""

    def decoded(self, named: dict[str, Any], ctx: GraphContext) -> list:
        """The selected frames as the graph first has them: the worker's planes, or DALI's decode."""
        if ctx.decode == "pyav":
            return [named[name] for name, _ in self.planes()]
        return [dali.decode_video(named[self.ext], named[f"{self.ext}.frames"], ctx.device)]

    def frames(self, decoded: list) -> list:
        """The frames each plan takes a run of (the member's own layout, such as flow's u | v halves)."""
        return decoded

    def graph(self, named: dict[str, Any], ctx: GraphContext) -> dict[str, Any]:
        order = named[f"{self.ext}.order"]
        decoded = self.frames([dali.rearrange(x, order) for x in self.decoded(named, ctx)])  # (F_views, H, W, C)
        outputs, first = {}, 0
        for plan in self.plans:  # each view is a fixed-length run of the one decode
            frames = [x[first:first + plan.view.temporal.frames] for x in decoded]
            first += plan.view.temporal.frames
            outputs.update(plan.graph(frames, plan.args(named, ctx.decode), ctx))
        return outputs
