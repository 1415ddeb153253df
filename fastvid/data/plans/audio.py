"""Audio views of KEY.flac (GDT): (N, 1, F_mel, T_mel) log-mel spectrograms of the window that starts with
the first frame of the video view they follow, reversed with it, with volume jitter (DALI) and SpecAugment
masks set to the spectrogram's mean (torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastvid.data import dali
from fastvid.data.plans.base import Decode, DrawContext, GraphContext, Member, Plan, SampleDraws
from fastvid.data.sampling import audio_frames, hop_samples


@dataclass(frozen=True)
class AudioDraw:
    """`start` (1,) int32: the window's first sample; `gain` float32 (volume jitter); `reverse` int32: the
    waveform runs backwards (its video does); `masks` (2k,) float32: (start, width) per frequency mask, then
    per time mask, in mel bins and spectrogram frames."""

    start: np.ndarray
    gain: np.ndarray
    reverse: np.ndarray
    masks: np.ndarray


class AudioMember(Member):
    """KEY.flac, passed to DALI's audio decoder as it is."""

    ext = "flac"

    def media(self, decode: Decode) -> list[tuple[str, str]]:
        return [("flac", "")]

    def read(self, data: bytes, draws: SampleDraws, decode: Decode, where: str
             ) -> tuple[SampleDraws, list[np.ndarray]]:
        return draws, [np.frombuffer(data, np.uint8)]

    def graph(self, named: dict[str, Any], ctx: GraphContext) -> dict[str, Any]:
        outputs = {}
        for plan in self.plans:
            outputs.update(plan.graph(named["flac"], plan.args(named, ctx.decode), ctx))
        return outputs


class AudioPlan(Plan):
    """The sound of a video view (`AudioSpec.follow`)."""

    Draw = AudioDraw
    Member = AudioMember
    draw_after = 1  # after the video view it follows

    def check(self, names: list[str]) -> None:
        super().check(names)
        if self.view.audio is None:
            raise ValueError(f"view {self.name!r}: an audio view needs an AudioSpec")
        if self.view.audio.follow not in names:
            raise ValueError(f"audio view {self.name!r} follows unknown view {self.view.audio.follow!r}")

    def draw(self, ctx: DrawContext) -> AudioDraw:
        spec, rng = self.view.audio, ctx.rng
        followed = ctx.draws[spec.follow]
        rate = int(ctx.meta["audio_rate"])
        start = round(followed.first / float(ctx.meta["fps"]) * rate)
        masks = []
        for count, limit, extent in ((spec.freq_masks, spec.freq_mask_max, spec.mel_bins),
                                     (spec.time_masks, spec.time_mask_max, audio_frames(spec, rate))):
            for _ in range(count):
                width = int(rng.integers(min(limit, extent) + 1))
                masks += [int(rng.integers(extent - width + 1)), width]
        return AudioDraw(start=np.array([start], np.int32), gain=np.array(rng.uniform(*spec.volume), np.float32),
                         reverse=np.array(int(followed.reversed), np.int32), masks=np.array(masks, np.float32))

    def wire_fields(self, decode: Decode) -> tuple[str, ...]:
        return ("start", "gain", "reverse", "masks")

    def outputs(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}.masks")

    def graph(self, media: Any, args, ctx: GraphContext) -> dict[str, Any]:
        """(F_mel, T_mel) float32 log-mel spectrogram of the (reversed) window, and the masks for torch."""
        spec, rate = self.view.audio, ctx.audio_rate
        window = dali.audio_window(media, rate, args.start, round(spec.seconds * rate), args.gain, args.reverse,
                                   ctx.device)
        mel = dali.log_mel(window, rate, round(spec.window_ms * rate / 1000), hop_samples(spec, rate), spec.mel_bins)
        return {self.name: mel, f"{self.name}.masks": args.masks}

    def finish(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return finish_audio(out[self.name], out[f"{self.name}.masks"], self.view.audio.freq_masks).to(self.dtype)


def finish_audio(spec: torch.Tensor, masks: torch.Tensor, freq_masks: int) -> torch.Tensor:
    """(N, F, T) log-mel -> (N, 1, F, T) with SpecAugment masks set to the spectrogram's mean.
    masks (N, 2k): (start, width) per frequency mask, then per time mask."""
    n, f, t = spec.shape
    fill = spec.mean(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    bins = torch.arange(f, device=spec.device).view(1, f, 1)
    steps = torch.arange(t, device=spec.device).view(1, 1, t)
    pairs = masks.view(n, -1, 2)  # (N, masks, 2)
    masked = torch.zeros_like(spec, dtype=torch.bool)
    for k in range(pairs.shape[1]):
        start = pairs[:, k, 0].view(-1, 1, 1)
        width = pairs[:, k, 1].view(-1, 1, 1)
        axis = bins if k < freq_masks else steps
        masked |= (axis >= start) & (axis < start + width)
    return torch.where(masked, fill, spec).unsqueeze(1)  # (N, 1, F, T)
