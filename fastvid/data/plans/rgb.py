"""RGB views of KEY.mp4: clips (N, 3, T, H, W), single frames (N, 3, H, W) and the frames that frame
differences are taken of (the model takes the differences). The worker decodes the box their crops cover as
4:2:0 planes and folds YUV -> RGB into each view's colour map; DALI resizes each plane, blurs, applies the
colour map and normalises."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fastvid.data import dali
from fastvid.data.plans.base import Decode, DrawContext, GraphContext, SampleDraws, with_views
from fastvid.data.plans.video import Spatial, VideoDraw, VideoMember, VideoPlan
from fastvid.data.pyav import decode_frames, yuv_to_rgb
from fastvid.data.spec import RGB_MEAN, RGB_STD

YUV_TO_RGB = {full: yuv_to_rgb(full) for full in (False, True)}  # by range: computed once, used per sample
CROP_MARGIN = 8  # pixels kept around the views' regions: the resize filter's support at a 4x downscale


@dataclass(frozen=True)
class RGBDraw(VideoDraw):
    """`colour` (R, 3, 4) float32: colour map [M | t] of 0-255 RGB (colour jitter, grayscale, channel split;
    after the worker's decode, of 0-255 YUV); `sigma` (R,) float32 blur sigmas (a tiny one for frames without
    blur: DALI's window then has one tap); `blur`: whether any frame is blurred."""

    colour: np.ndarray
    sigma: np.ndarray
    blur: bool

    def in_yuv(self, full_range: bool) -> RGBDraw:
        """The colour map taking YUV (limited or full range) rather than RGB: M' = M K, t' = M k + t for
        (Y, U, V) -> RGB = K (Y, U, V) + k. One map per pixel either way; the intermediate RGB is not clamped."""
        k = YUV_TO_RGB[full_range]
        c = self.colour.astype(np.float64)  # (R, 3, 4)
        m = c[:, :, :3]
        return replace(self, colour=np.concatenate([m @ k[:, :3], m @ k[:, 3:] + c[:, :, 3:]], axis=2).astype(np.float32))


class RGBMember(VideoMember):
    """KEY.mp4, decoded in the worker to the box the views' crops cover (4:2:0 luma and chroma planes)."""

    ext = "mp4"
    plans: list[RGBClipPlan]

    def planes(self) -> list[tuple[str, str]]:
        return [("luma", "FHWC"), ("chroma", "FHWC")]

    def decode(self, data: bytes, draws: SampleDraws, keyframes: list[int], length: int, where: str
               ) -> tuple[SampleDraws, list[np.ndarray]]:
        """Only the box the views read is passed on (~60% of the frame for videoSimCLR's two crops); the views'
        regions move into it and their colour maps take the decoded YUV."""
        meta, selection = draws.meta, draws.selections[self.ext]
        x0, y0, x1, y1 = self.box([draws[p.name] for p in self.plans], int(meta["width"]), int(meta["height"]))
        planes = decode_frames(data, selection.frames, keyframes, float(meta["fps"]), where=where,
                               box=(x0, y0, x1, y1), length=length)
        moved = {p.name: draws[p.name].moved(x0, y0).in_yuv(planes.full_range) for p in self.plans}
        return with_views(draws, moved), [planes.luma, planes.chroma]

    @staticmethod
    def box(views: list[RGBDraw], width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the union of the views' regions plus a margin for the resize filter, on even
        pixels (4:2:0 chroma), inside the frame."""
        regions = np.concatenate([d.roi for d in views])  # (R, 4): y0, x0, y1, x1
        ys, xs = regions[:, 0::2], regions[:, 1::2]  # x1 < x0 where a region is mirrored
        x0, y0 = (max(int(np.floor(v.min())) - CROP_MARGIN, 0) // 2 * 2 for v in (xs, ys))
        x1, y1 = (min(-(-(int(np.ceil(v.max())) + CROP_MARGIN) // 2) * 2, limit)
                  for v, limit in ((xs, width), (ys, height)))
        return x0, y0, x1, y1


class RGBClipPlan(VideoPlan):
    """(N, 3, T, H, W) in the view's dtype. Also the plan of frame-difference views ("diff"): they deliver
    their frames like a clip, the model takes the differences."""

    Draw = RGBDraw
    Member = RGBMember

    def typed(self, ctx: DrawContext, spatial: Spatial, **common: Any) -> RGBDraw:
        return RGBDraw(**common, colour=spatial.colours,
                         sigma=np.maximum(spatial.sigmas.astype(np.float32), 1e-3), blur=bool(spatial.sigmas.max() > 0))

    def has_colour(self) -> bool:
        """Whether any draw of the view's colour map can differ from the identity."""
        s = self.view.spatial
        return s.jitter > 0 or s.grayscale > 0 or s.channel_split

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        wired = super().wire_fields(decode)
        if decode == "pyav" or self.has_colour():  # planes always take the map: it holds YUV -> RGB
            wired += ("colour",)
        if self.view.spatial.blur > 0:
            wired += ("blur", "sigma")
        return wired

    def graph(self, media: list, args, ctx: GraphContext) -> dict[str, Any]:
        """[luma, chroma] 4:2:0 planes (each resized to the output size, then joined into YUV pixels) or one
        (T, H, W, 3) RGB array -> (3, T, h, w) float. Crop + resize + flip first, so the rest runs on the small
        output frames."""
        if len(media) == 2:
            out = dali.join_planes(self.resample(media[0], args), self.resample(media[1], args, 0.5))
        else:
            out = self.resample(media[0], args)
        out = self.photometric(out, args, planes=len(media) == 2)
        s = self.view.spatial
        mean, std = (RGB_MEAN, RGB_STD) if s.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        return {self.name: dali.normalise(out, mean, std, half=self.view.dtype == "float16")}

    def photometric(self, frames, args, planes: bool):
        """(T, h, w, 3) uint8 -> uint8 RGB: blur only in the samples that drew it (a conditional splits the
        batch: DALI's CPU blur with a one-tap window still costs over half of a real one); colour jitter,
        grayscale, channel splitting and YUV -> RGB as one affine colour map, skipped where it is the identity
        (DALI's costliest CPU op here). One draw per view, or per frame in frame-wise mode."""
        frame_wise = self.view.spatial.per_frame
        if self.view.spatial.blur > 0:
            if args.blur:
                frames = dali.blur(frames, dali.per_frame(args.sigma, frame_wise))
        if planes or self.has_colour():
            colour = args.colour  # (R, 3, 4): [M | t] on the 0-255 pixels (YUV from planes) -> RGB
            frames = dali.colour_map(frames, dali.per_frame(colour[:, :, 0:3], frame_wise),
                                     dali.per_frame(colour[:, :, 3], frame_wise))
        return frames

    def finish(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out[self.name].to(self.dtype)


class RGBFramePlan(RGBClipPlan):
    """(N, 3, H, W): a clip of one frame, without its time axis."""

    def check(self, names: list[str]) -> None:
        super().check(names)
        if self.view.temporal.frames != 1:
            raise ValueError(f"view {self.name!r}: a frame view takes temporal.frames=1")

    def finish(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().finish(out)[:, :, 0]
