"""Fused vs naive contrastive losses (time and peak memory of forward + backward) and frame-difference bandwidth.

    python benchmarks/losses.py                      # CPU: tiled PyTorch vs naive, Numba frame differences
    python benchmarks/losses.py --device cuda        # GPU: Triton kernels, bf16 by default

Every loss sees N anchors against N candidates (K = N for the queue and the centroids), D = 128. Peak memory is
the extra memory above the inputs during forward + backward: torch.cuda.max_memory_allocated on a GPU, the
process RSS sampled every millisecond on the CPU (large blocks are returned to the OS at once because the
script fixes glibc's mmap threshold). Times are the best of --repeats runs: the development machines are
shared, and the minimum is the least disturbed by other tenants. Frame differences are compared with a plain
copy of as many bytes (read + written); both write into a buffer reused across calls (as a loader reuses its
batch buffers), so both measure memory bandwidth rather than the page faults of a fresh allocation (which the
mmap threshold above would add to every call). Writes losses.json, losses.md and losses.png under --output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # must be in place before the allocator starts: re-exec once
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

import torch  # noqa: E402
from machine_info import cpu_name  # noqa: E402

import fastvid.losses as fused  # noqa: E402
from fastvid.kernels.frame_diff import frame_diff  # noqa: E402
from fastvid.losses import reference  # noqa: E402

TAU = 0.1


def make_case(name: str, n: int, d: int, dtype: torch.dtype, device: str) -> tuple[Callable, Callable, list]:
    """(fused fn, naive fn, inputs) for one loss at size n; each fn maps the inputs to a scalar."""
    g = torch.Generator(device=device).manual_seed(0)

    def feats(rows: int, grad: bool = True) -> torch.Tensor:
        return torch.randn(rows, d, generator=g, device=device).to(dtype).requires_grad_(grad)

    if name == "nt_xent":
        return (lambda a, b: fused.nt_xent(a, b, TAU), lambda a, b: reference.nt_xent(a, b, TAU), [feats(n), feats(n)])
    if name == "info_nce_queue":
        args = [feats(n), feats(n, False), feats(n, False)]
        return (lambda *x: fused.info_nce_queue(*x, TAU), lambda *x: reference.info_nce_queue(*x, TAU), args)
    if name == "gdt_loss":  # Table 1 row (l): sample distinctive, time reversal invariant, time shift distinctive
        idx = torch.arange(n, device=device)
        factors = torch.stack([idx // 4, idx % 2, idx // 2 % 2], 1)
        inv = [False, True, False]
        return (lambda v, a: fused.gdt_loss(v, a, factors, inv, TAU),
                lambda v, a: reference.gdt_loss(v, a, factors, inv, TAU), [feats(n), feats(n)])
    if name == "mil_nce":
        ids = torch.randint(0, max(n // 8, 1), (n,), generator=g, device=device)
        return (lambda z: fused.mil_nce(z, ids, TAU), lambda z: reference.mil_nce(z, ids, TAU), [feats(n)])
    if name == "center_nce":
        ids = torch.randint(0, n, (n,), generator=g, device=device)
        conc = torch.rand(n, generator=g, device=device) * 0.1 + 0.05
        return (lambda z, c: fused.center_nce(z, ids, c, conc), lambda z, c: reference.center_nce(z, ids, c, conc),
                [feats(n), feats(n, False)])
    if name == "cross_and_learn":
        pair = lambda: torch.randn(n, 2, d, generator=g, device=device).to(dtype).requires_grad_()  # noqa: E731
        return (lambda r, f: fused.cross_and_learn_loss(r, f)["loss"],
                lambda r, f: reference.cross_and_learn_loss(r, f)["loss"], [pair(), pair()])
    raise ValueError(f"unknown loss {name!r}")


class PeakMemory:
    """Extra memory (bytes) above the level at entry: the CUDA allocator's peak, or sampled RSS on the CPU."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.001)

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self._stop = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()  # sync: the kernels must have finished before reading the peak
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def fwd_bwd(fn: Callable, inputs: list) -> None:
    loss = fn(*inputs)
    params = [x for x in inputs if x.requires_grad]
    torch.autograd.grad(loss, params)


def measure(fn: Callable, inputs: list, device: str, repeats: int) -> dict:
    """Best forward + backward seconds over `repeats` runs after one warm-up, and the peak extra memory."""
    fwd_bwd(fn, inputs)  # warm-up: compilation, autotuning, allocator
    with PeakMemory(device) as mem:
        fwd_bwd(fn, inputs)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fwd_bwd(fn, inputs)
        if device == "cuda":
            torch.cuda.synchronize()  # sync: time the kernels, not the launches
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "peak_bytes": mem.peak}


def bench_losses(args: argparse.Namespace, dtype: torch.dtype) -> list[dict]:
    rows = []
    for name in args.losses:
        for n in args.sizes:
            fused_fn, naive_fn, inputs = make_case(name, n, args.dim, dtype, args.device)
            impls = {"fused": fused_fn}
            if n <= args.max_naive:
                impls["naive"] = naive_fn
            if n <= args.max_compiled:
                impls["naive_compiled"] = torch.compile(naive_fn)
            for impl, fn in impls.items():
                try:
                    r = measure(fn, inputs, args.device, args.repeats)
                except torch.OutOfMemoryError:  # a result too: the naive loss cannot run at this N
                    torch.cuda.empty_cache()
                    rows.append({"loss": name, "n": n, "impl": impl, "seconds": None, "peak_bytes": None,
                                 "error": "out of memory"})
                    print(f"{name:16s} N={n:6d} {impl:15s} out of memory", flush=True)
                    continue
                rows.append({"loss": name, "n": n, "impl": impl, **r})
                print(f"{name:16s} N={n:6d} {impl:15s} {r['seconds'] * 1e3:10.2f} ms "
                      f"{r['peak_bytes'] / 2**20:10.1f} MiB", flush=True)
            del inputs
    return rows


def bench_frame_diff(args: argparse.Namespace) -> list[dict]:
    """Frame differences as Cross and Learn takes them (a normalised float32 (N, C, T, H, W) batch -> its
    dtype), fused vs the plain slice-and-subtract vs a plain copy of as many bytes."""
    rows = []
    for n, t, hw in [(8, 16, 112), (32, 16, 112), (16, 16, 224)]:
        x = torch.randn(n, 3, t, hw, hw, device=args.device)  # (N, C, T, H, W), the loader's "sod" view
        moved = x.numel() * 4 + n * 3 * (t - 1) * hw * hw * 4  # bytes read + bytes written
        src, dst = (torch.ones(moved // 2, dtype=torch.uint8, device=args.device) for _ in range(2))  # touched pages
        for impl, fn in {
            "fused": lambda: frame_diff(x),
            "naive": lambda: x[:, :, 1:] - x[:, :, :-1],
            "copy": lambda: dst.copy_(src),
        }.items():
            r = time_only(fn, args.device, repeats=max(args.repeats, 20))  # ms per call: many samples are cheap
            rows.append({"shape": [n, 3, t, hw, hw], "impl": impl, "seconds": r, "GBps": moved / r / 1e9})
            print(f"frame_diff {n}x3x{t}x{hw}x{hw} {impl:6s} {r * 1e3:9.3f} ms {moved / r / 1e9:8.2f} GB/s", flush=True)
    return rows


def time_only(fn: Callable, device: str, repeats: int) -> float:
    """Best seconds of `repeats` calls after one warm-up (no memory sampling)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def write_outputs(out: Path, meta: dict, losses: list[dict], diffs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "losses.json").write_text(json.dumps({"meta": meta, "losses": losses, "frame_diff": diffs}, indent=1))
    lines = [f"# Losses, forward + backward, {meta['device']} {meta['dtype']}, D={meta['dim']}", "",
             "| loss | N | impl | ms | peak MiB | time / fused | memory / fused |", "|---|---|---|---|---|---|---|"]
    for r in losses:
        if r["seconds"] is None:
            lines.append(f"| {r['loss']} | {r['n']} | {r['impl']} | {r['error']} | | | |")
            continue
        f = next(x for x in losses if x["loss"] == r["loss"] and x["n"] == r["n"] and x["impl"] == "fused")
        ratio_t = r["seconds"] / f["seconds"]
        ratio_m = r["peak_bytes"] / max(f["peak_bytes"], 1)
        lines.append(f"| {r['loss']} | {r['n']} | {r['impl']} | {r['seconds'] * 1e3:.2f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {ratio_t:.2f} | {ratio_m:.1f} |")
    lines += ["", meta["note"], "", "| frame_diff shape | impl | ms | GB/s |", "|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['impl']} | {r['seconds'] * 1e3:.3f} | {r['GBps']:.2f} |" for r in diffs]
    (out / "losses.md").write_text("\n".join(lines) + "\n")
    names = sorted({r["loss"] for r in losses})
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        for impl in ("fused", "naive", "naive_compiled"):
            pts = [r for r in losses if r["loss"] == name and r["impl"] == impl and r["seconds"] is not None]
            if pts:
                axes[0, col].loglog([p["n"] for p in pts], [p["seconds"] for p in pts], "o-", label=impl)
                axes[1, col].loglog([p["n"] for p in pts], [max(p["peak_bytes"], 1) / 2**20 for p in pts], "o-")
        axes[0, col].set_title(name)
        axes[1, col].set_xlabel("N")
    axes[0, 0].set_ylabel("fwd+bwd seconds")
    axes[1, 0].set_ylabel("peak extra MiB")
    axes[0, 0].legend()
    fig.suptitle(f"{meta['device']} {meta['dtype']} D={meta['dim']}")
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--sizes", type=int, nargs="+", help="default: 1K..64K on cuda, 1K..8K on cpu")
    p.add_argument("--max-naive", type=int, help="largest N for the naive loss (default: 64K cuda, 8K cpu)")
    p.add_argument("--max-compiled", type=int, help="largest N for torch.compile (default: 16K cuda, 1K cpu; 0: none)")
    p.add_argument("--losses", nargs="+", default=[
        "nt_xent", "info_nce_queue", "gdt_loss", "mil_nce", "center_nce", "cross_and_learn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--out", dest="output", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    args.sizes = args.sizes or ([2**k for k in range(10, 17)] if gpu else [1024, 2048, 4096, 8192])
    args.max_naive = args.max_naive if args.max_naive is not None else (65536 if gpu else 8192)
    args.max_compiled = args.max_compiled if args.max_compiled is not None else (16384 if gpu else 1024)
    note = (f"Naive runs up to N={args.max_naive}, torch.compile up to N={args.max_compiled}, fused up to "
            f"N={max(args.sizes)}." + ("" if gpu else " On the CPU a naive step at N=16K would hold several 1 GiB "
                                       "N x N matrices (4 GiB for NT-Xent's 2N x 2N) and take minutes on 2 cores."))
    print(note)
    meta = {"device": torch.cuda.get_device_name() if gpu else f"{cpu_name()} x{torch.get_num_threads()} threads",
            "dtype": str(dtype).removeprefix("torch."), "dim": args.dim, "note": note, "torch": torch.__version__}
    losses = bench_losses(args, dtype)
    diffs = bench_frame_diff(args)
    write_outputs(args.output, meta, losses, diffs)
    print(f"wrote {args.output}/losses.json, losses.md, losses.png")


if __name__ == "__main__":
    main()
