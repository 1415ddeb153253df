"""Frame differences: Numba and Triton (interpreter on the CPU, poisoned outputs) against the float64 reference,
and the reference against hand-computed values."""
import pytest
import torch

from fastvid.kernels import frame_diff_triton
from fastvid.kernels.frame_diff import frame_diff, frame_diff_reference
from tests.kernels.poison import poisoned_empty  # noqa: F401  (fixture)


def clip(dtype: torch.dtype, n=2, t=5, h=7, w=9, c=3, seed=0) -> torch.Tensor:
    """(N, C, T, H, W) normalised-looking frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, t, h, w, generator=g).to(dtype)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """7 x 9 = 63 pixels over blocks of 16: three full blocks and one partial one."""
    monkeypatch.setattr(frame_diff_triton, "BLOCK", 16)


@pytest.mark.parametrize("backend", ["numba", "triton"])
@pytest.mark.parametrize("in_dtype,out_dtype,tol", [
    (torch.float32, torch.float32, 1e-6),
    (torch.float32, torch.float16, 2e-3),
    (torch.bfloat16, torch.bfloat16, 1e-2),  # the model's dtype under bf16 (cross_and_learn passes its own)
    (torch.float64, torch.float32, 1e-6),
])
def test_matches_reference(backend, in_dtype, out_dtype, tol, poisoned_empty):  # noqa: F811
    x = clip(in_dtype)
    got = frame_diff(x, dtype=out_dtype, backend=backend)
    assert got.shape == (2, 3, 4, 7, 9) and got.dtype == out_dtype
    torch.testing.assert_close(got.double(), frame_diff_reference(x, dtype=torch.float64), rtol=tol, atol=tol * 5)


@pytest.mark.parametrize("backend", ["numba", "triton"])
@pytest.mark.parametrize("channels", [1, 4])
def test_strided_view_is_read_in_place(backend, channels):
    """A permuted (non-contiguous) view of a (N, T, H, W, C) buffer is read through its strides, no copy; the CPU
    kernel is compiled per pixel stride (C here), each one correct, interleaved with the contiguous one."""
    for c in (channels, 3):
        x = torch.randn(2, 5, 7, 9, c, generator=torch.Generator().manual_seed(c)).permute(0, 4, 1, 2, 3)
        torch.testing.assert_close(frame_diff(x, backend=backend).double(),
                                   frame_diff_reference(x, dtype=torch.float64))
        torch.testing.assert_close(frame_diff(x.contiguous(), backend=backend).double(),
                                   frame_diff_reference(x, dtype=torch.float64))


def test_reference_hand_values():
    """Frame t filled with the value 0.1 t (c + 1) in channel c: every difference is 0.1 (c + 1)."""
    t = torch.arange(4, dtype=torch.float64)[None, :, None, None] * 0.1  # (1, T, 1, 1)
    x = (t * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None, None, None]).expand(3, 4, 2, 2)[None]
    out = frame_diff_reference(x, dtype=torch.float64)  # (1, 3, 3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.full((3, 2, 2), 0.1 * (c + 1), dtype=torch.float64))


def test_bad_inputs_are_named():
    x = clip(torch.float32)
    with pytest.raises(ValueError, match="float"):
        frame_diff(x.to(torch.int32))
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        frame_diff(x[0])
    with pytest.raises(ValueError, match="2 frames"):
        frame_diff(x[:, :, :1])
    with pytest.raises(ValueError, match="backend"):
        frame_diff(x, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_numba(out_dtype):
    frame_diff_triton.BLOCK = 1024
    x = clip(torch.float32, n=4, t=16, h=112, w=112)
    got = frame_diff(x.cuda(), dtype=out_dtype).cpu()
    torch.testing.assert_close(got, frame_diff(x, dtype=out_dtype))
