"""Views compiled into typed plans, one class per modality, and the compiled set a loader runs.

`compile_views` turns each `ViewSpec` into the plan of its modality (`PLANS`); a `Plan` instance may be
given in its place (a plan of one's own: a new augmentation is a subclass). `ViewPlans` holds them grouped
by the member file they read and is the one place the loader asks what a sample's draws are
(`SampleDrawer`), what the worker sends (`wire_names`, `wire`), what the pipeline returns (`output_names`,
from the same plans that build it) and how a batch is finished in torch (`finish`).
"""
from __future__ import annotations

import numpy as np
import torch

from fastvid.data.plans.audio import AudioPlan
from fastvid.data.plans.base import Decode, DrawContext, Member, Plan, SampleDraws, Selection
from fastvid.data.plans.flow import FlowPlan
from fastvid.data.plans.rgb import RGBClipPlan, RGBFramePlan
from fastvid.data.plans.video import VideoPlan
from fastvid.data.spec import ViewSpec

PLANS: dict[str, type[Plan]] = {"rgb": RGBClipPlan, "frame": RGBFramePlan, "diff": RGBClipPlan, "flow": FlowPlan,
                                "audio": AudioPlan}


def compile_views(views: list[ViewSpec | Plan]) -> list[Plan]:
    """One plan per view, in drawing order (views that follow another after the video views, else as given)."""
    unknown = [v.name for v in views if not isinstance(v, Plan) and v.modality not in PLANS]
    if unknown:
        raise ValueError(f"views {unknown}: unknown modality (one of {', '.join(sorted(PLANS))})")
    plans = [v if isinstance(v, Plan) else PLANS[v.modality](v) for v in views]
    names = [p.name for p in plans]
    if len(set(names)) != len(names) or {"label", "index"} & set(names):
        raise ValueError(f"view names must be unique and not 'label'/'index': {names}")
    for p in plans:
        p.check(names)
    return sorted(plans, key=lambda p: p.draw_after)


class ViewPlans:
    """The plans of a loader's views, grouped into `members` (one per file read, in order of first use)."""

    def __init__(self, views: list[ViewSpec | Plan]) -> None:
        self.plans = compile_views(views)
        groups: dict[type[Member], list[Plan]] = {}
        for p in self.plans:
            groups.setdefault(p.Member, []).append(p)
        self.members: list[Member] = [member(plans) for member, plans in groups.items()]
        self.output_names = ["label", "index"] + [n for m in self.members for p in m.plans for n in p.outputs()]

    @property
    def exts(self) -> list[str]:
        """The members a sample must have besides KEY.json."""
        return [m.ext for m in self.members]

    def wire_names(self, decode: Decode) -> list[str]:
        """Names of `wire`'s arrays, in its order."""
        return (["label", "index"] + [f"{m.ext}.{f}" for m in self.members for f in m.wire_fields(decode)]
                + [f"{p.name}.{f}" for p in self.plans for f in p.wire_fields(decode)])

    def wire(self, draws: SampleDraws, decode: Decode) -> list[np.ndarray]:
        """The arrays the pipeline reads from a sample's draws (`wire_names`)."""
        return ([np.array(draws.label, np.int64), np.array(draws.index, np.int64)]
                + [np.asarray(getattr(draws.selections[m.ext], f)) for m in self.members for f in m.wire_fields(decode)]
                + [a for p in self.plans for a in p.wire(draws[p.name], decode)])

    def media(self, decode: Decode) -> list[tuple[str, str]]:
        """(name, layout) of the members' arrays the worker sends after the draws."""
        return [item for m in self.members for item in m.media(decode)]

    def finish(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pipeline outputs (on the training device) -> the batch: one tensor per view, label, index."""
        batch = {"label": out["label"].long(), "index": out["index"].long()}
        for p in self.plans:
            batch[p.name] = p.finish(out)
        return batch


class SampleDrawer:
    """`draw(meta, index)`: a sample's KEY.json and dataset position -> its `SampleDraws` for epoch `epoch`,
    from a generator seeded by (seed, epoch, index): the same whatever the order, rank or batch."""

    def __init__(self, views: ViewPlans | list[ViewSpec | Plan], seed: int, epoch: int = 0) -> None:
        self.plans = views if isinstance(views, ViewPlans) else ViewPlans(views)
        self.seed, self.epoch = seed, epoch
        video = [p for p in self.plans.plans if isinstance(p, VideoPlan)]
        self.lag = max((p.lag for p in video), default=0)
        # An anchor shared with a flow view is drawn over the n - 1 flow frames (flow i: frame i -> i+1).
        self.anchor_lag: dict[str, int] = {}
        for p in video:
            self.anchor_lag[p.view.temporal.anchor] = max(self.anchor_lag.get(p.view.temporal.anchor, 0), p.lag)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def draw(self, meta: dict, index: int) -> SampleDraws:
        n = int(meta["num_frames"])
        if n < 1 + self.lag:  # a flow frame needs two video frames
            raise ValueError(f"num_frames {n} is too few for these views")
        ctx = DrawContext(meta, self.rng(index), {a: n - lag for a, lag in self.anchor_lag.items()})
        for p in self.plans.plans:
            ctx.draws[p.name] = p.draw(ctx)
        selections = {m.ext: s for m in self.plans.members if (s := m.select(ctx.draws)) is not None}
        return SampleDraws(meta, int(meta.get("label_index", -1)), index, dict(ctx.draws), selections)


__all__ = ["PLANS", "Plan", "SampleDrawer", "SampleDraws", "Selection", "ViewPlans", "compile_views"]
