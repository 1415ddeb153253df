"""The row-statistics mechanism (fastvid.kernels.contrastive): Triton kernels (interpreter on the CPU) and the
tiled PyTorch twin against the full-matrix formula, values and gradients, on shapes that leave tiles partly
filled."""
import pytest
import torch
import torch.nn.functional as F

from fastvid.kernels import contrastive
from fastvid.kernels.contrastive import RowStats, row_stats
from tests.kernels.poison import poisoned_empty  # noqa: F401  (fixture)

BACKENDS = ["torch", "triton"]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles smaller than the test shapes, so every test crosses tile borders and ends on a partial tile."""
    monkeypatch.setattr(contrastive, "CPU_BLOCK", (16, 8))
    monkeypatch.setattr(contrastive, "TRITON_BLOCK", (16, 16))


def naive_row_stats(a, b, beta, la, lb, exclude_diag, normalize) -> RowStats:
    """The definitions, with the whole (M, K) logit matrix."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    s = a @ b.T * beta  # (M, K)
    w = torch.ones_like(s, dtype=torch.bool)
    if exclude_diag:
        w &= ~torch.eye(a.shape[0], dtype=torch.bool)
    p = w & (la[:, None] == lb[None, :])
    ninf = float("-inf")
    return RowStats(
        torch.logsumexp(s.masked_fill(~w, ninf), 1), torch.logsumexp(s.masked_fill(~p, ninf), 1),
        (s * p).sum(1), p.sum(1).to(s.dtype),
    )


def weighted_sum(st: RowStats, weights: torch.Tensor) -> torch.Tensor:
    """A scalar that sends a different gradient into lse, plse and psum (plse only where it is finite)."""
    plse = torch.where(st.npos > 0, st.plse, 0.0)
    return (weights[0] * st.lse + weights[1] * plse + weights[2] * st.psum).sum()


def make_case(m, k, d, *, same, dtype=torch.float64, labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=torch.float64)
    b = a if same else torch.randn(k, d, generator=g, dtype=torch.float64)
    la = torch.randint(0, labels, (m,), generator=g)
    lb = la if same else torch.randint(0, labels, (k,), generator=g)
    beta = torch.rand(k, generator=g, dtype=torch.float64) * 4 + 2  # per-column 1/temperature in [2, 6]
    return a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_() if not same else None, beta, la, lb


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,d,same,normalize", [
    (37, 29, 20, False, True),  # partial row, column and feature tiles
    (5, 70, 3, False, False),  # fewer rows than a tile, many column tiles, unnormalised
    (33, 33, 16, True, True),  # a against itself, self-pairs excluded (NT-Xent, MIL-NCE)
])
def test_matches_full_matrix_float64(backend, m, k, d, same, normalize, poisoned_empty):  # noqa: F811
    a, b, beta, la, lb = make_case(m, k, d, same=same)
    b_in = a if same else b
    st = row_stats(a, b_in, beta, la, lb, exclude_diag=same, normalize=normalize, with_plse=True, backend=backend)
    ref = naive_row_stats(a, b_in, beta, la, lb, same, normalize)
    for got, want in zip(st, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.randn(3, m, dtype=torch.float64)
    inputs = (a,) if same else (a, b)
    got = torch.autograd.grad(weighted_sum(st, weights), inputs)
    want = torch.autograd.grad(weighted_sum(ref, weights), inputs)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    a, b, beta, la, lb = make_case(6, 5, 4, same=False, labels=2, seed=3)
    weights = torch.randn(3, 6, dtype=torch.float64)

    def fn(a, b):
        return weighted_sum(row_stats(a, b, beta, la, lb, with_plse=True, backend=backend), weights)

    assert torch.autograd.gradcheck(fn, (a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_only_where_needed(backend):
    """A detached candidate set (MoCo queue, centroids) gets no gradient and the kernel for it is skipped."""
    a, b, beta, la, lb = make_case(20, 40, 8, same=False)
    st = row_stats(a, b.detach(), beta, backend=backend)
    assert st.plse is None and (st.npos == 0).all() and (st.psum == 0).all()  # no labels: no positives
    (ga,) = torch.autograd.grad(st.lse.sum(), (a,))
    (want,) = torch.autograd.grad(naive_row_stats(a, b.detach(), beta, la, lb, False, True).lse.sum(), (a,))
    torch.testing.assert_close(ga, want)


LOW_PRECISION = [
    ("torch", torch.float16, 2e-3),
    ("torch", torch.bfloat16, 2e-2),
    ("torch", torch.float32, 1e-5),
    ("triton", torch.float16, 2e-3),
    ("triton", torch.float32, 1e-5),
    # bfloat16 tl.dot is silently wrong under the interpreter: checked on a GPU only (test_cuda_matches_oracle).
]


@pytest.mark.parametrize("backend,dtype,tol", LOW_PRECISION)
def test_low_precision_inputs_accumulate_in_float32(backend, dtype, tol, poisoned_empty):  # noqa: F811
    a, b, beta, la, lb = make_case(40, 50, 24, same=False)
    a16, b16 = a.detach().to(dtype).requires_grad_(), b.detach().to(dtype).requires_grad_()
    st = row_stats(a16, b16, beta, la, lb, with_plse=True, backend=backend)
    assert st.lse.dtype == torch.float32
    ref = naive_row_stats(a16.double(), b16.double(), beta, la, lb, False, True)  # same rounded inputs
    for got, want in zip(st, ref):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 10)
    ga, gb = torch.autograd.grad(st.lse.sum() + st.psum.sum(), (a16, b16))
    assert ga.dtype == dtype and gb.dtype == dtype
    a64, b64 = a16.detach().double().requires_grad_(), b16.detach().double().requires_grad_()
    ref = naive_row_stats(a64, b64, beta, la, lb, False, True)
    wa, wb = torch.autograd.grad(ref.lse.sum() + ref.psum.sum(), (a64, b64))
    torch.testing.assert_close(ga.double(), wa, rtol=tol * 10, atol=tol * 10)
    torch.testing.assert_close(gb.double(), wb, rtol=tol * 10, atol=tol * 10)


def test_bad_inputs_are_named():
    a = torch.randn(4, 8)
    with pytest.raises(ValueError, match="b \\(K, D\\)"):
        row_stats(a, torch.randn(4, 7), 1.0)
    with pytest.raises(ValueError, match="labels_a and labels_b"):
        row_stats(a, a, 1.0, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="exclude_diag"):
        row_stats(a, torch.randn(5, 8), 1.0, exclude_diag=True)
    with pytest.raises(TypeError, match="dtype"):
        row_stats(a, a.double(), 1.0)
    with pytest.raises(ValueError, match="backend"):
        row_stats(a, a, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="with_plse needs labels"):
        row_stats(a, a, 1.0, with_plse=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plse_only_when_asked(backend):
    """Without with_plse the tiles skip the positive log-sum-exp; the other statistics are unchanged."""
    a, b, beta, la, lb = make_case(37, 29, 20, same=False)
    full = row_stats(a, b, beta, la, lb, with_plse=True, backend=backend)
    lean = row_stats(a, b, beta, la, lb, backend=backend)
    assert lean.plse is None and full.plse is not None
    for got, want in zip((lean.lse, lean.psum, lean.npos), (full.lse, full.psum, full.npos)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_matches_oracle(dtype):
    """Compiled kernels on a GPU (default tiles) against the tiled PyTorch oracle on the same device."""
    contrastive.TRITON_BLOCK = (64, 64)
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(1000, 128, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.randn(777, 128, device="cuda", generator=g).to(dtype).requires_grad_()
    la = torch.randint(0, 50, (1000,), device="cuda", generator=g)
    lb = torch.randint(0, 50, (777,), device="cuda", generator=g)
    outs = []
    for backend in BACKENDS:
        st = row_stats(a, b, 10.0, la, lb, with_plse=True, backend=backend)
        grads = torch.autograd.grad(st.lse.sum() + st.psum.sum(), (a, b))
        outs.append((*st, *grads))
    for got, want in zip(*outs):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
