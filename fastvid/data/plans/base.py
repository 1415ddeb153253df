"""What every view plan is: a `Plan` per view (its draws, what the worker does to them, its part of the DALI
graph, its outputs and its finishing step in torch), and a `Member` per file of a sample that plans read
(the worker's reading and decoding of it, shared by the plans that read it).

The draws of one sample travel from the worker to DALI as named arrays, "VIEW.FIELD" for the fields a plan
wires (`Plan.wire_fields`, fields of its `Draw`), so the pipeline and the source agree by construction.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fastvid.data.spec import ViewSpec

Decode = Literal["pyav", "dali"]  # frames decoded in the workers (4:2:0 planes), or by DALI's decoder
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Selection:
    """The frames of one video member its views read: the sorted distinct indices `frames` (F,) int32
    (decoded once each, in order: going back costs a seek) and `order` (sum of T,) int32, the positions in
    them of each view's frames, the views concatenated in plan order."""

    frames: np.ndarray
    order: np.ndarray


@dataclass(frozen=True)
class SampleDraws:
    """Every draw of one sample: its KEY.json `meta`, label and dataset position, one `Plan.Draw` per view (by
    name) and one `Selection` per video member (by extension)."""

    meta: dict
    label: int
    index: int
    views: dict[str, Any]
    selections: dict[str, Selection] = field(default_factory=dict)

    def __getitem__(self, view: str) -> Any:
        return self.views[view]


@dataclass
class DrawContext:
    """What the views of one sample share while they draw: the sample's metadata, one generator (so the
    draws depend only on (seed, epoch, index)), per anchor its start and its drop parity, per spatial
    group its crop and flip, and the draws made so far (an audio view follows a video view's)."""

    meta: dict
    rng: np.random.Generator
    anchor_frames: dict[str, int]  # frames an anchor's window is drawn over
    anchors: dict[str, int] = field(default_factory=dict)
    parities: dict[str, int] = field(default_factory=dict)
    groups: dict[str, tuple[tuple[float, float, float, float], bool]] = field(default_factory=dict)
    draws: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphContext:
    """What the DALI graph of every plan depends on besides its draws."""

    device: Literal["cpu", "mixed"]
    decode: Decode
    audio_rate: int


class Plan(abc.ABC):
    """One view compiled for its modality. Subclasses set `Draw` (a frozen dataclass) and `Member`."""

    Draw: ClassVar[type]
    Member: ClassVar[type[Member]]
    draw_after: ClassVar[int] = 0  # plans draw in this order (then view order): followers after the followed

    def __init__(self, view: ViewSpec) -> None:
        self.view = view
        self.name = view.name

    @abc.abstractmethod
    def draw(self, ctx: DrawContext) -> Any:
        """This view's `Draw` for the sample of `ctx`."""

    @abc.abstractmethod
    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        """The `Draw` attributes the DALI graph reads (sent as arrays "VIEW.FIELD")."""

    @abc.abstractmethod
    def graph(self, media: Any, args: SimpleNamespace, ctx: GraphContext) -> dict[str, Any]:
        """DALI outputs by name (`outputs()`), from the member's decoded `media` for this view and `args`, the
        wired draws as DALI nodes (`args.FIELD`)."""

    def outputs(self) -> tuple[str, ...]:
        """Names of this plan's pipeline outputs: the view, then what its finishing step needs."""
        return (self.name,)

    @abc.abstractmethod
    def finish(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch tensor of this view from its pipeline outputs (on the training device)."""

    def args(self, named: dict[str, Any], decode: Decode) -> SimpleNamespace:
        """The wired draws among the source's outputs `named`, as attributes."""
        return SimpleNamespace(**{f: named[f"{self.name}.{f}"] for f in self.wire_fields(decode)})

    def wire(self, draw: Any, decode: Decode) -> list[np.ndarray]:
        return [np.asarray(getattr(draw, f)) for f in self.wire_fields(decode)]

    def check(self, names: list[str]) -> None:
        """Fail at compile time, not in a DALI worker, when a wired field is not an attribute of `Draw` (or,
        in subclasses, when the view cannot be what the plan makes; `names`: every view of the loader)."""
        known = {f.name for f in fields(self.Draw)} | {n for n in dir(self.Draw) if isinstance(getattr(self.Draw, n), property)}
        for decode in ("pyav", "dali"):
            if missing := set(self.wire_fields(decode)) - known:
                raise TypeError(f"{type(self).__name__} wires {sorted(missing)}, not fields of {self.Draw.__name__}")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.view.dtype]


class Member(abc.ABC):
    """One file of a sample (`ext`) and the plans that read it: the worker reads and decodes it once for all
    of them, and its DALI graph hands each plan its part."""

    ext: ClassVar[str]

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = plans

    def select(self, draws: dict[str, Any]) -> Selection | None:
        """The frames the plans' `draws` need from this member (None: not a video member)."""
        return None

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        """The `Selection` fields the graph reads (sent as "EXT.FIELD")."""
        return ()

    @abc.abstractmethod
    def media(self, decode: Decode) -> list[tuple[str, str]]:
        """(name, DALI layout) of the arrays `read` returns: decoded planes carry "FHWC"."""

    @abc.abstractmethod
    def read(self, data: bytes, draws: SampleDraws, decode: Decode, where: str
             ) -> tuple[SampleDraws, list[np.ndarray]]:
        """The member's bytes -> the sample's draws as this member leaves them (new objects) and its media
        arrays (`media`). Raises ValueError naming `where` when the member does not decode."""

    @abc.abstractmethod
    def graph(self, named: dict[str, Any], ctx: GraphContext) -> dict[str, Any]:
        """DALI outputs by name of every plan of this member, from the source's outputs `named`."""


def with_views(draws: SampleDraws, views: dict[str, Any], selection: tuple[str, Selection] | None = None
               ) -> SampleDraws:
    """`draws` with some views' draws (and a member's selection) replaced."""
    selections = draws.selections if selection is None else {**draws.selections, selection[0]: selection[1]}
    return replace(draws, views={**draws.views, **views}, selections=selections)
