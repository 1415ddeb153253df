"""Frame differences: Numba and Triton (interpreter on the CPU, poisoned outputs) against the float64 reference,
and the reference against hand-computed values."""
import pytest
import torch

from fastvid.kernels import frame_diff_triton
from fastvid.kernels.frame_diff import frame_diff, frame_diff_reference
from tests.kernels.poison import poisoned_empty  # noqa: F401  (fixture)

STD = [0.229, 0.224, 0.225]


def clip(layout: str, dtype: torch.dtype, n=2, t=5, h=7, w=9, c=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, t, h, w, c), generator=g, dtype=torch.uint8)
    x = x if dtype == torch.uint8 else (x.to(dtype) / 255)
    return x if layout == "NTHWC" else x.permute(0, 4, 1, 2, 3).contiguous()


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """7 x 9 = 63 pixels over blocks of 16: three full blocks and one partial one."""
    monkeypatch.setattr(frame_diff_triton, "BLOCK", 16)


@pytest.mark.parametrize("backend", ["numba", "triton"])
@pytest.mark.parametrize("layout", ["NTHWC", "NCTHW"])
@pytest.mark.parametrize("in_dtype,out_dtype,tol", [
    (torch.uint8, torch.float32, 1e-6),
    (torch.uint8, torch.float16, 2e-3),
    (torch.float32, torch.float32, 1e-6),
    (torch.float16, torch.bfloat16, 1e-2),
])
@pytest.mark.parametrize("split", [False, True])
def test_matches_reference(backend, layout, in_dtype, out_dtype, tol, split, poisoned_empty):  # noqa: F811
    x = clip(layout, in_dtype)
    channel = torch.tensor([2, 0]) if split else None
    got = frame_diff(x, layout=layout, std=STD, channel=channel, dtype=out_dtype, backend=backend)
    want = frame_diff_reference(x, layout=layout, std=STD, channel=channel, dtype=torch.float64)
    assert got.shape == (2, 3, 4, 7, 9) and got.dtype == out_dtype
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 5)


@pytest.mark.parametrize("backend", ["numba", "triton"])
def test_strided_view_is_read_in_place(backend):
    """A permuted (non-contiguous) view of an NTHWC buffer is read through its strides, no copy."""
    x = clip("NTHWC", torch.uint8).permute(0, 4, 1, 2, 3)  # (N, C, T, H, W) view
    got = frame_diff(x, layout="NCTHW", backend=backend)
    torch.testing.assert_close(got.double(), frame_diff_reference(x, layout="NCTHW", dtype=torch.float64))


def test_reference_hand_values():
    """Frame t filled with the value 10 t in channel c + 1 (c = 0, 1, 2): every difference is 10 (c + 1) / 255."""
    t = torch.arange(4, dtype=torch.uint8)[:, None, None, None] * 10  # (T, 1, 1, 1)
    x = (t * torch.tensor([1, 2, 3], dtype=torch.uint8)).expand(4, 2, 2, 3)[None]  # (1, T, H, W, C)
    out = frame_diff_reference(x, dtype=torch.float64)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((3, 2, 2), 10 * (c + 1) / 255, dtype=torch.float64))
    split = frame_diff_reference(x, std=[0.5, 1.0, 0.25], channel=torch.tensor([2]), dtype=torch.float64)
    assert torch.allclose(split, torch.full((1, 3, 3, 2, 2), 30 / 255 / 0.25, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 4])
def test_numba_kernel_per_pixel_stride(channels):
    """The CPU kernel is compiled per pixel stride (C in NTHWC): other channel counts get their own, correct one,
    interleaved with the 3-channel one."""
    for c in (channels, 3):
        x = clip("NTHWC", torch.uint8, c=c, seed=c)
        want = frame_diff_reference(x, std=[0.5] * c, dtype=torch.float64)
        torch.testing.assert_close(frame_diff(x, std=[0.5] * c, backend="numba").double(), want)


@pytest.mark.parametrize("backend", ["numba", "triton"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_fills_given_buffer(backend, out_dtype):
    """out= is filled in place (every element: it starts as NaN) and returned."""
    x = clip("NTHWC", torch.uint8)
    buf = torch.full((2, 3, 4, 7, 9), float("nan"), dtype=out_dtype)
    got = frame_diff(x, std=STD, dtype=out_dtype, out=buf, backend=backend)
    assert got is buf
    want = frame_diff_reference(x, std=STD, dtype=torch.float64)
    torch.testing.assert_close(buf.double(), want, rtol=2e-3, atol=1e-2)


def test_bad_inputs_are_named():
    x = clip("NTHWC", torch.uint8)
    with pytest.raises(ValueError, match="layout"):
        frame_diff(x, layout="NHWC")
    with pytest.raises(ValueError, match="std"):
        frame_diff(x, std=[1.0, 2.0])
    with pytest.raises(ValueError, match="channel"):
        frame_diff(x, channel=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="2 frames"):
        frame_diff(x[:, :1])
    with pytest.raises(TypeError, match="uint8 or floating"):
        frame_diff(x.to(torch.int32))
    with pytest.raises(ValueError, match="out must be"):
        frame_diff(x, out=torch.empty(2, 3, 5, 7, 9))


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_numba(out_dtype):
    frame_diff_triton.BLOCK = 1024
    x = clip("NTHWC", torch.uint8, n=4, t=16, h=112, w=112)
    got = frame_diff(x.cuda(), std=STD, dtype=out_dtype).cpu()
    torch.testing.assert_close(got, frame_diff(x, std=STD, dtype=out_dtype))
