"""Every fused loss equals its paper's naive formula (fastvid.losses.reference) in float64, values and
gradients; the references themselves are checked against independent formulations and hand-worked values."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastvid.losses as fused
from fastvid.kernels import contrastive
from fastvid.losses import reference as ref

BACKENDS = ["torch", "triton"]
F64 = torch.float64


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles smaller than the batches below, so the losses run over several partly filled tiles."""
    monkeypatch.setattr(contrastive, "CPU_BLOCK", (16, 8))
    monkeypatch.setattr(contrastive, "TRITON_BLOCK", (16, 16))


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).requires_grad_()


def assert_same_loss(fused_fn, ref_fn, inputs, grad_inputs):
    """Values and gradients with respect to `grad_inputs` agree to float64 round-off."""
    got, want = fused_fn(*inputs), ref_fn(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, grad_inputs), torch.autograd.grad(want, grad_inputs)):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


# --- fused == reference ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_nt_xent(backend, normalize):
    za, zb = rand(21, 12, seed=1), rand(21, 12, seed=2)
    assert_same_loss(lambda a, b: fused.nt_xent(a, b, 0.1, normalize=normalize, backend=backend),
                     lambda a, b: ref.nt_xent(a, b, 0.1, normalize=normalize), (za, zb), (za, zb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_info_nce_queue(backend):
    q, k, queue = rand(19, 10, seed=1), rand(19, 10, seed=2), rand(45, 10, seed=3)
    assert_same_loss(lambda *x: fused.info_nce_queue(*x, 0.07, backend=backend),
                     lambda *x: ref.info_nce_queue(*x, 0.07), (q, k, queue), (q,))
    loss = fused.info_nce_queue(q, k, queue, 0.07, backend=backend)
    assert torch.autograd.grad(loss, (k, queue), allow_unused=True) == (None, None)  # momentum side: no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_mil_nce_with_singleton_clusters(backend):
    z = rand(30, 9, seed=4)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 5] * 3) + torch.arange(30) // 10 * 6  # clusters of 1-3 rows
    assert_same_loss(lambda z: fused.mil_nce(z, ids, 0.08, backend=backend),
                     lambda z: ref.mil_nce(z, ids, 0.08), (z,), (z,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_center_nce(backend):
    z, cent = rand(26, 8, seed=5), rand(11, 8, seed=6)
    ids = torch.randint(0, 11, (26,), generator=torch.Generator().manual_seed(0))
    conc = torch.rand(11, dtype=F64, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.05
    assert_same_loss(lambda z: fused.center_nce(z, ids, cent, conc, backend=backend),
                     lambda z: ref.center_nce(z, ids, cent, conc), (z,), (z,))


def test_cross_and_learn():
    rgb, flow = rand(7, 2, 16, seed=7), rand(7, 2, 16, seed=8)
    for opts in [{}, {"use_cross": False}, {"use_div": False}, {"eps": 1e-2}]:
        got = fused.cross_and_learn_loss(rgb, flow, **opts)
        want = ref.cross_and_learn_loss(rgb, flow, **opts)
        for key in ("loss", "cross", "div"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12)
        g = torch.autograd.grad(got["loss"], (rgb, flow))
        w = torch.autograd.grad(want["loss"], (rgb, flow))
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# GDT Table 1: (time reversal, time shift) per row, "d" distinctive, "i" invariant, "." not sampled (one
# value). Rows a-d are video only: the second "modality" is a second augmentation draw and w is SimCLR's
# delta(T != T'); rows e-m are cross-modal, w = delta(m != m').
GDT_TABLE1 = {"a": "..", "b": "i.", "c": ".i", "d": "ii",
              "e": "..", "f": "i.", "g": ".i", "h": "ii", "i": "d.", "j": ".d", "k": "di", "l": "id", "m": "dd"}


def gdt_batch(row: str, k_i: int = 5):
    """GDT's hierarchical sampling: K_i samples x K_tr x K_ts with K = 2 for sampled factors, 1 for '.'."""
    sizes = [k_i] + [1 if c == "." else 2 for c in GDT_TABLE1[row]]
    factors = torch.tensor(list(itertools.product(*[range(s) for s in sizes])))  # (N, 3): i, reversal, shift
    invariant = [False] + [c == "i" for c in GDT_TABLE1[row]]  # data sampling is always distinctive
    return factors, invariant


@pytest.mark.parametrize("row", list(GDT_TABLE1))
def test_gdt_every_table1_row(row):
    factors, invariant = gdt_batch(row)
    cross_modal = row not in "abcd"
    n = factors.shape[0]
    v, a = rand(n, 8, seed=9), rand(n, 8, seed=10)
    assert_same_loss(
        lambda v, a: fused.gdt_loss(v, a, factors, invariant, 0.1, cross_modal=cross_modal, backend="torch"),
        lambda v, a: ref.gdt_loss(v, a, factors, invariant, 0.1, cross_modal=cross_modal), (v, a), (v, a))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdt_row_a_is_nt_xent(backend):
    """Table 1 row (a), "SimCLR-like": K_i videos x K_g = 2 augmentations, w = delta(T != T'), is NT-Xent on
    the same embeddings (the cross-draw-only weights gave a different, smaller value)."""
    factors, invariant = gdt_batch("a", k_i=7)
    v, a = rand(7, 8, seed=21), rand(7, 8, seed=22)
    want = ref.nt_xent(v, a, 0.5)
    torch.testing.assert_close(ref.gdt_loss(v, a, factors, invariant, 0.5, cross_modal=False), want)
    torch.testing.assert_close(fused.gdt_loss(v, a, factors, invariant, 0.5, cross_modal=False, backend=backend),
                               want, rtol=1e-10, atol=1e-12)
    assert abs(ref.gdt_loss(v, a, factors, invariant, 0.5, cross_modal=True).item() - want.item()) > 0.1


@pytest.mark.parametrize("backend", ["triton"])
def test_gdt_triton_backend(backend):
    factors, invariant = gdt_batch("l", k_i=6)  # N = 24: two row tiles
    v, a = rand(24, 8, seed=11), rand(24, 8, seed=12)
    assert_same_loss(lambda v, a: fused.gdt_loss(v, a, factors, invariant, 0.1, backend=backend),
                     lambda v, a: ref.gdt_loss(v, a, factors, invariant, 0.1), (v, a), (v, a))


@pytest.mark.parametrize("name", ["nt_xent", "info_nce_queue", "gdt_loss", "mil_nce", "center_nce"])
def test_gradcheck_tiny(name):
    x = rand(6, 4, seed=13)
    other = rand(6, 4, seed=14).detach()
    gdt_factors = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 1], [1, 1, 1], [2, 0, 0], [2, 1, 1]])
    concentration = other.new_tensor([0.3, 0.5, 0.7])
    calls = {
        "nt_xent": lambda x: fused.nt_xent(x, other, 0.5),
        "info_nce_queue": lambda x: fused.info_nce_queue(x, other, rand(9, 4, seed=15).detach(), 0.5),
        "gdt_loss": lambda x: fused.gdt_loss(x, other, gdt_factors, [False, True, False], 0.5),
        "mil_nce": lambda x: fused.mil_nce(x, torch.tensor([0, 0, 1, 1, 1, 2]), 0.5),
        "center_nce": lambda x: fused.center_nce(x, torch.tensor([0, 2, 1, 1, 0, 2]), other[:3], concentration),
    }
    assert torch.autograd.gradcheck(calls[name], (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    """16-bit features give the float64 loss of the same rounded values, to float32 accumulation accuracy."""
    za, zb = rand(40, 32, seed=16).detach().to(dtype), rand(40, 32, seed=17).detach().to(dtype)
    got = fused.nt_xent(za, zb, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.nt_xent(za.double(), zb.double(), 0.1), rtol=1e-5, atol=1e-5)


# --- the references against independent formulations -------------------------------------------------------

def test_reference_nt_xent_is_cross_entropy_over_2n():
    za, zb = rand(8, 5, seed=18), rand(8, 5, seed=19)
    z = F.normalize(torch.cat([za, zb]), dim=1)
    logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(8, 16), torch.arange(8)])
    torch.testing.assert_close(ref.nt_xent(za, zb, 0.2), F.cross_entropy(logits, target))


def test_reference_info_nce_is_moco_logits():
    q, k, queue = (F.normalize(rand(6, 5, seed=s).detach(), dim=1) for s in (20, 21, 22))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.07
    want = F.cross_entropy(logits, torch.zeros(6, dtype=torch.int64))
    torch.testing.assert_close(ref.info_nce_queue(q, k, queue, 0.07), want)


def test_reference_mil_nce_with_pairs_is_nt_xent():
    """Clusters that hold exactly the two views of each clip reduce eq. (2) to eq. (1)."""
    za, zb = rand(7, 6, seed=23), rand(7, 6, seed=24)
    ids = torch.arange(14) % 7
    torch.testing.assert_close(ref.mil_nce(torch.cat([za, zb]), ids, 0.3), ref.nt_xent(za, zb, 0.3))


def test_reference_gdt_with_only_sample_factor_is_symmetric_cross_modal_nce():
    """Table 1 row (e): distinctive to the sample only, so each clip's one positive is its other modality."""
    v, a = rand(9, 4, seed=25), rand(9, 4, seed=26)
    logits = F.normalize(v, dim=1) @ F.normalize(a, dim=1).T / 0.1  # (N, N) video x audio
    want = (F.cross_entropy(logits, torch.arange(9)) + F.cross_entropy(logits.T, torch.arange(9))) / 2
    factors = torch.arange(9)[:, None]
    torch.testing.assert_close(ref.gdt_loss(v, a, factors, [False], 0.1), want)


def test_reference_center_nce_is_cross_entropy_with_per_cluster_temperature():
    z, cent = rand(5, 3, seed=27), rand(4, 3, seed=28)
    phi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    ids = torch.tensor([3, 0, 1, 1, 2])
    logits = F.normalize(z, dim=1) @ F.normalize(cent, dim=1).T / phi
    torch.testing.assert_close(ref.center_nce(z, ids, cent, phi), F.cross_entropy(logits, ids))


def test_reference_cross_and_learn_hand_values():
    """f = g within each pair and orthogonal pairs: d_cross = 0, d_div = 1, so loss = 0 - 1 = -1."""
    e1, e2 = torch.tensor([3.0, 0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    rgb = torch.stack([e1, e2])[None]  # (1, 2, 2)
    out = ref.cross_and_learn_loss(rgb, rgb.clone(), eps=0.0)
    assert out["cross"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["div"].item() == pytest.approx(-1.0)
    assert out["loss"].item() == pytest.approx(-1.0)
    eps_out = ref.cross_and_learn_loss(rgb, rgb.clone(), eps=1.0)  # eps inside the root: 1 - 9/(sqrt(10)^2)
    assert eps_out["cross"].item() == pytest.approx(0.5 * ((1 - 9 / 10) + (1 - 4 / 5)))


def test_gdt_rejects_mismatched_invariant():
    with pytest.raises(ValueError, match="invariant"):
        fused.gdt_loss(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, 2, dtype=torch.int64), [True], 0.1)


# --- pretext accuracy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude_diag", [False, True])
def test_top1_accuracy_equals_the_full_matrix_argmax(monkeypatch, exclude_diag):
    monkeypatch.setattr("fastvid.losses.contrastive.ACCURACY_ROWS", 7)  # several partial row blocks
    a = rand(23, 5, seed=31).detach()
    b = a.clone() + 0.3 * rand(23, 5, seed=32).detach() if exclude_diag else rand(19, 5, seed=32).detach()
    la, lb = torch.arange(23) % 4, torch.arange(b.shape[0]) % 4
    beta = torch.linspace(0.5, 2.0, b.shape[0], dtype=F64)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T * beta  # (23, K)
    if exclude_diag:
        s.fill_diagonal_(float("-inf"))
    want = (lb[s.argmax(1)] == la).float().mean()
    got = fused.top1_accuracy(a, b, la, lb, beta=beta, exclude_diag=exclude_diag)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item())


def test_top1_accuracy_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.1, 3.0]])  # cosine: rows 0, 1 pick their own; row 2 picks b_1 (0.730 > 0.707)
    assert fused.top1_accuracy(a, b, torch.tensor([0, 1, 0]), torch.tensor([0, 1])).item() == pytest.approx(2 / 3)
