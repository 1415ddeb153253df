"""Frame differences: Cross and Learn's stack of differences (SOD) of a normalised clip.

Maths. For a clip x (N, C, T, H, W), float (the loader's normalised frames):

    out[n, c, t] = x[n, c, t + 1] - x[n, c, t],  t < T - 1,

written as (N, C, T - 1, H, W) in the model's dtype. The loader has normalised x, (x - mean) / std; the mean
cancels in the difference, so nothing is left to normalise.

`x[:, :, 1:] - x[:, :, :-1]` reads every frame twice, and a dtype change is another pass. The kernels read
every input element once and write every output element once: each program walks the time axis of one
(sample, channel, pixel block), keeping the previous frame in registers. Triton on CUDA tensors
(`frame_diff_triton`), Numba `@njit(parallel=True)` on CPU tensors, and `frame_diff_reference` (plain
PyTorch) as the oracle.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
import torch
from torch import Tensor


@functools.cache
def _numba_kernel(sx_p: int) -> Callable:
    """The CPU kernel for one pixel stride (1 for a contiguous clip), compiled once per stride: a constant stride
    lets LLVM vectorise the inner loop, about 2x the bandwidth of a runtime stride."""

    @numba.njit(parallel=True, cache=True)
    def kernel(x, out, sx_n, sx_c, sx_t):  # pragma: no cover - compiled
        """x: the clip's flat buffer; out: (N, C, T - 1, H*W) float32; element strides.
        One (sample, frame pair) per parallel step; each output row is one unit-stride store stream."""
        n_, c_, t1, hw = out.shape
        for nt in numba.prange(n_ * t1):
            n, t = nt // t1, nt % t1
            for c in range(c_):
                prev = x[n * sx_n + c * sx_c + t * sx_t:]  # frame t, channel c onwards
                nxt = x[n * sx_n + c * sx_c + (t + 1) * sx_t:]
                row = out[n, c, t]  # (H*W,)
                for p in range(hw):
                    row[p] = np.float32(nxt[p * sx_p]) - np.float32(prev[p * sx_p])

    return kernel


def frame_diff(clip: Tensor, *, dtype: torch.dtype = torch.float32, backend: str = "auto") -> Tensor:
    """Successive frame differences (N, C, T - 1, H, W) in `dtype` of a float clip (N, C, T, H, W).

    backend: "auto" (Triton for CUDA tensors, Numba otherwise), "triton" (CPU tensors run under
    TRITON_INTERPRET=1) or "numba" (CPU tensors)."""
    if backend not in ("auto", "triton", "numba"):
        raise ValueError(f"frame_diff: backend must be 'auto', 'triton' or 'numba', got {backend!r}")
    if clip.ndim != 5 or not clip.dtype.is_floating_point:
        raise ValueError(f"frame_diff: clip must be a float (N, C, T, H, W), got {clip.dtype} {tuple(clip.shape)}")
    n, c, t, h, w = clip.shape
    sn, sc, st, sh, sw = clip.stride()
    if t < 2:
        raise ValueError(f"frame_diff: need at least 2 frames, got {t}")
    if sh != w * sw:
        raise ValueError("frame_diff: the H and W axes of the clip must be contiguous with each other")
    out = torch.empty((n, c, t - 1, h, w), dtype=dtype, device=clip.device)
    rows = out.view(n, c, t - 1, h * w)  # (N, C, T - 1, H*W)
    if backend == "triton" or (backend == "auto" and clip.is_cuda):
        from fastvid.kernels.frame_diff_triton import frame_diff_launch

        frame_diff_launch(clip, rows, (sn, sc, st, sw))
        return out
    if clip.is_cuda:
        raise ValueError("frame_diff: the numba backend takes CPU tensors")
    x = clip if clip.dtype in (torch.float32, torch.float64) else clip.float()  # Numba has no fp16
    flat = torch.as_strided(x, (x.untyped_storage().nbytes() // x.element_size() - x.storage_offset(),), (1,),
                            x.storage_offset())  # the 1-D buffer the strides index into
    dst = rows if dtype == torch.float32 else torch.empty(rows.shape)  # Numba writes float32 only
    sn, sc, st, _, sw = x.stride()  # x's own: a converted copy is contiguous
    _numba_kernel(sw)(flat.numpy(), dst.numpy(), sn, sc, st)
    if dst is not rows:
        rows.copy_(dst)  # extra pass only for other output dtypes
    return out


def frame_diff_reference(clip: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The naive formula in float64: (N, C, T, H, W) -> (N, C, T - 1, H, W)."""
    x = clip.double()
    return (x[:, :, 1:] - x[:, :, :-1]).to(dtype)
