"""Frame differences (Cross and Learn's stack of differences, SOD), fused with normalisation and channel
splitting.

Maths. For a clip x (N, T, H, W, C) or (N, C, T, H, W), uint8 in [0, 255] or float:

    out[n, c, t] = (x[n, t + 1, k] - x[n, t, k]) / (range * std[k]),  k = channel[n] if splitting else c,

for t < T - 1, written as (N, C, T - 1, H, W) in the model's dtype; range = 255 for uint8, else 1. A per-channel
mean cancels in the difference, so normalising (x - mean) / std only needs the std. Channel splitting (OPN,
used by Cross and Learn) copies one colour channel per sample into every output channel.

The naive version reads each frame twice and writes a float copy per step (convert, normalise, subtract,
permute: ~5 full passes). The kernels read every input byte once and write every output element once:
each program walks the time axis of one (sample, channel, pixel block), keeping the previous frame in
registers. Triton on CUDA tensors (`frame_diff_triton`), Numba `@njit(parallel=True)` on CPU tensors, and
`frame_diff_reference` (plain PyTorch) as the oracle.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numba
import numpy as np
import torch
from torch import Tensor

LAYOUTS = ("NTHWC", "NCTHW")


@functools.cache
def _numba_kernel(sx_p: int) -> Callable:
    """The CPU kernel for one pixel stride (C for NTHWC, 1 for NCTHW), compiled once per stride: a constant stride
    lets LLVM vectorise the inner loop (interleaved loads), about 2x the bandwidth of a runtime stride."""

    @numba.njit(parallel=True, cache=True)
    def kernel(x, out, scale, channel, sx_n, sx_c, sx_t):  # pragma: no cover - compiled
        """x: the clip's flat buffer; out: (N, C, T - 1, H*W) float32; scale (C,); channel (N, C); element strides.
        One (sample, frame pair) per parallel step; each output row is one unit-stride store stream."""
        n_, c_, t1, hw = out.shape
        for nt in numba.prange(n_ * t1):
            n, t = nt // t1, nt % t1
            for c in range(c_):
                k = channel[n, c]
                prev = x[n * sx_n + k * sx_c + t * sx_t:]  # frame t, channel k onwards
                nxt = x[n * sx_n + k * sx_c + (t + 1) * sx_t:]
                row = out[n, c, t]  # (H*W,)
                s = scale[k]
                for p in range(hw):
                    row[p] = (np.float32(nxt[p * sx_p]) - np.float32(prev[p * sx_p])) * s

    return kernel


def _plan(
    clip: Tensor, layout: str, std: Sequence[float] | None, channel: Tensor | None
) -> tuple[tuple[int, int, int, int, int], tuple[int, int, int, int], Tensor, Tensor]:
    """Validate; return sizes (N, C, T, H, W), element strides (n, c, t, pixel), scale (C,), channel table (N, C)."""
    if layout not in LAYOUTS:
        raise ValueError(f"frame_diff: layout must be one of {LAYOUTS}, got {layout!r}")
    if clip.ndim != 5:
        raise ValueError(f"frame_diff: clip must be 5-D {layout}, got shape {tuple(clip.shape)}")
    if clip.dtype != torch.uint8 and not clip.dtype.is_floating_point:
        raise TypeError(f"frame_diff: clip must be uint8 or floating point, got {clip.dtype}")
    if layout == "NTHWC":
        n, t, h, w, c = clip.shape
        sn, st, sh, sw, sc = clip.stride()
    else:
        n, c, t, h, w = clip.shape
        sn, sc, st, sh, sw = clip.stride()
    if t < 2:
        raise ValueError(f"frame_diff: need at least 2 frames, got {t}")
    if sh != w * sw:
        raise ValueError("frame_diff: the H and W axes of the clip must be contiguous with each other")
    std_t = torch.ones(c, dtype=torch.float64) if std is None else torch.as_tensor(std, dtype=torch.float64)
    if std_t.shape != (c,) or (std_t <= 0).any():
        raise ValueError(f"frame_diff: std must hold {c} positive values, got {list(std_t.tolist())}")
    scale = (1.0 / ((255.0 if clip.dtype == torch.uint8 else 1.0) * std_t)).float()
    if channel is None:
        table = torch.arange(c, dtype=torch.int32).expand(n, c)
    else:
        if channel.shape != (n,) or channel.min() < 0 or channel.max() >= c:
            raise ValueError(f"frame_diff: channel must be ({n},) with values in [0, {c}), got {channel.tolist()}")
        table = channel.to("cpu", torch.int32)[:, None].expand(n, c)
    return (n, c, t, h, w), (sn, sc, st, sw), scale, table.contiguous()


def frame_diff(
    clip: Tensor,
    *,
    layout: str = "NTHWC",
    std: Sequence[float] | None = None,
    channel: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Successive frame differences (N, C, T - 1, H, W) in `dtype` from a clip (N, T, H, W, C) or (N, C, T, H, W).

    std: per-channel std of the normalisation (uint8 is first mapped to [0, 1]); channel: (N,) int64, the colour
    channel copied into every output channel of each sample (channel splitting), or None. out: a contiguous
    (N, C, T - 1, H, W) buffer of `dtype` to fill and return (a loader's reused, e.g. pinned, batch buffer), or None.
    backend: "auto" (Triton for CUDA tensors, Numba otherwise), "triton" (CPU tensors run under
    TRITON_INTERPRET=1) or "numba" (CPU tensors).
    """
    if backend not in ("auto", "triton", "numba"):
        raise ValueError(f"frame_diff: backend must be 'auto', 'triton' or 'numba', got {backend!r}")
    (n, c, t, h, w), strides, scale, table = _plan(clip, layout, std, channel)
    if out is None:
        out = torch.empty((n, c, t - 1, h, w), dtype=dtype, device=clip.device)
    elif out.shape != (n, c, t - 1, h, w) or out.dtype != dtype or out.device != clip.device or not out.is_contiguous():
        raise ValueError(f"frame_diff: out must be a contiguous {dtype} tensor of shape {(n, c, t - 1, h, w)} on "
                         f"{clip.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    rows = out.view(n, c, t - 1, h * w)  # (N, C, T - 1, H*W)
    if backend == "triton" or (backend == "auto" and clip.is_cuda):
        from fastvid.kernels.frame_diff_triton import frame_diff_launch

        frame_diff_launch(clip, rows, scale.to(clip.device), table.to(clip.device), strides)
        return out
    if clip.is_cuda:
        raise ValueError("frame_diff: the numba backend takes CPU tensors")
    x = clip if clip.dtype in (torch.uint8, torch.float32, torch.float64) else clip.float()  # Numba has no fp16
    flat = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size() - x.storage_offset(),), (1,),
                            x.storage_offset())  # the 1-D buffer the strides index into
    dst = rows if dtype == torch.float32 else torch.empty(rows.shape)  # Numba writes float32 only
    _numba_kernel(strides[3])(flat.numpy(), dst.numpy(), scale.numpy(), table.numpy(), *strides[:3])
    if dst is not rows:
        rows.copy_(dst)  # extra pass only for other output dtypes
    return out


def frame_diff_reference(
    clip: Tensor, *, layout: str = "NTHWC", std: Sequence[float] | None = None, channel: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The naive formula in float64: normalise, split channels, subtract neighbours; (N, C, T - 1, H, W)."""
    x = clip.double() / (255.0 if clip.dtype == torch.uint8 else 1.0)
    if layout == "NTHWC":
        x = x.permute(0, 4, 1, 2, 3)  # (N, C, T, H, W)
    c = x.shape[1]
    if std is not None:
        x = x / torch.as_tensor(std, dtype=torch.float64, device=x.device)[None, :, None, None, None]
    if channel is not None:
        x = x[torch.arange(x.shape[0]), channel][:, None].expand(-1, c, -1, -1, -1)  # (N, C, T, H, W)
    return (x[:, :, 1:] - x[:, :, :-1]).to(dtype)
