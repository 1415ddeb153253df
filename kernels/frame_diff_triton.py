"""Triton kernel for frame differences; the maths and the public function are in `fastvid.kernels.frame_diff`."""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024  # pixels per program


@triton.jit
def _frame_diff_kernel(
    X,  # input clip (N, C, T, H, W), float, any strides below (H and W contiguous with each other)
    OUT,  # (N, C, T - 1, H*W) contiguous output in the model's dtype
    T, C, HW,
    sx_n, sx_c, sx_t, sx_p,  # element strides of X along sample, channel, time and pixel (h * W + w)
    BLOCK: tl.constexpr,
):
    nc = tl.program_id(0)
    n, c = (nc // C).to(tl.int64), (nc % C).to(tl.int64)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = pix < HW
    src = X + n * sx_n + c * sx_c + pix.to(tl.int64) * sx_p
    dst = OUT + nc.to(tl.int64) * (T - 1) * HW + pix
    prev = tl.load(src, mask=ok, other=0).to(tl.float32)  # frame t - 1 stays in registers
    for t in tl.range(1, T):
        cur = tl.load(src + t * sx_t, mask=ok, other=0).to(tl.float32)
        tl.store(dst + (t - 1) * HW, (cur - prev).to(OUT.dtype.element_ty), mask=ok)
        prev = cur


def frame_diff_launch(x: Tensor, out: Tensor, strides: tuple[int, ...]) -> None:
    """Fill out (N, C, T - 1, H*W) from x; one program per (sample, channel, BLOCK pixels)."""
    n, c, t1, hw = out.shape
    grid = (n * c, triton.cdiv(hw, BLOCK))
    _frame_diff_kernel[grid](x, out, t1 + 1, c, hw, *strides, BLOCK=BLOCK)
