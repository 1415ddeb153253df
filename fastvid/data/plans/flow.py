"""Optical-flow views of KEY.flow.mp4 (Cross and Learn): (N, 2, T, H, W) float32 displacements in output
pixels. The worker decodes the quantised u | v grey levels; DALI crops both halves alike; torch
de-quantises with the sample's bound, rescales to the crop, and applies the mean subtraction and the
temporal flip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastvid.data import dali
from fastvid.data.plans.base import Decode, DrawContext, GraphContext, SampleDraws
from fastvid.data.plans.video import Spatial, VideoDraw, VideoMember, VideoPlan
from fastvid.data.pyav import decode_frames
from fastvid.shard.flow import dequantise


@dataclass(frozen=True)
class FlowDraw(VideoDraw):
    """`scale` (2,): output pixels per source pixel along x (negative when mirrored: u changes sign) and y;
    `time_flip`: the stack is reversed in time; `bound`: what the sample's flow was quantised with (its
    KEY.json's `flow.bound`)."""

    scale: tuple[float, float]
    time_flip: bool
    bound: float

    @property
    def aux(self) -> np.ndarray:
        """(4,) float32 (u scale, v scale, temporal flip, bound): what the finishing step needs, as one array."""
        return np.array([*self.scale, float(self.time_flip), self.bound], np.float32)


class FlowMember(VideoMember):
    """KEY.flow.mp4: flow frame i (the motion from video frame i to i + 1), u | v side by side in the luma."""

    ext = "flow.mp4"

    def part(self, meta: dict) -> dict:
        return meta["flow"]

    def planes(self) -> list[tuple[str, str]]:
        return [("flow", "FHWC")]

    def decode(self, data: bytes, draws: SampleDraws, keyframes: list[int], length: int, where: str
               ) -> tuple[SampleDraws, list[np.ndarray]]:
        """(F, H, 2W, 1) grey levels of the whole frames (chroma is neutral)."""
        frames = draws.selections[self.ext].frames
        grey = decode_frames(data, frames, keyframes, float(draws.meta["fps"]), where=where, chroma=False,
                             length=length).grey()
        return draws, [grey]

    def frames(self, decoded: list) -> list:
        return [dali.flow_planes(decoded[0])]


class FlowPlan(VideoPlan):
    """A stack of flow frames: crop and flip as drawn (no photometric augmentation), finished in torch."""

    Draw = FlowDraw
    Member = FlowMember
    lag = 1

    def check(self, names: list[str]) -> None:
        super().check(names)
        if self.view.spatial.per_frame:
            raise ValueError(f"view {self.name!r}: frame-wise crops would give each flow frame its own scale")

    def typed(self, ctx: DrawContext, spatial: Spatial, **common: Any) -> FlowDraw:
        y0, x0, y1, x1 = spatial.roi[0].tolist()
        size = self.view.spatial.size
        return FlowDraw(**common, scale=(size[1] / (x1 - x0), size[0] / (y1 - y0)), time_flip=spatial.time_flip,
                        bound=float(ctx.meta["flow"]["bound"]))

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        return super().wire_fields(decode) + ("aux",)

    def outputs(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}.aux")

    def graph(self, media: list, args, ctx: GraphContext) -> dict[str, Any]:
        """(T, h, w, 2) uint8 quantised (u, v), and the draws the finishing step reads."""
        return {self.name: self.resample(media[0], args), f"{self.name}.aux": args.aux}

    def finish(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return finish_flow(out[self.name], out[f"{self.name}.aux"], self.view.spatial.flow_mean).to(self.dtype)


def finish_flow(x: torch.Tensor, aux: torch.Tensor, subtract_mean: bool) -> torch.Tensor:
    """(N, T, H, W, 2) uint8 quantised flow -> (N, 2, T, H, W) float32 in output pixels.
    aux (N, 4): `FlowDraw.aux`. A displacement resized with its frame scales with it."""
    flow = dequantise(x.float(), aux[:, 3].view(-1, 1, 1, 1, 1))  # (N, T, H, W, 2) in source pixels
    flow = flow * aux[:, None, None, None, 0:2]  # (N, T, H, W, 2) in output pixels
    if subtract_mean:
        flow = flow - flow.mean(dim=(2, 3), keepdim=True)  # each frame's mean motion (camera)
    # Reversed in time, flow t -> t+1 read backwards is t+1 -> t: each field negates too (Cross and Learn's
    # public code, `rand_timeflip`: s = -s).
    flipped = aux[:, 2] > 0.5
    flow = torch.where(flipped.view(-1, 1, 1, 1, 1), -flow.flip(1), flow)
    return flow.permute(0, 4, 1, 2, 3).contiguous()  # (N, 2, T, H, W)
