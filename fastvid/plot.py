"""A run's curves: `RUN/curves.png` from `RUN/metrics.jsonl`, written at the end of `fastvid train` and by
`fastvid plot RUN`.

The trainer appends one JSON line per logged step ({"step", "loss/loss", "pretext/acc", "lr", "clips_per_s",
"data_wait_fraction", ...}) and one per validation ({"step", "val/loss", "val/acc", "val/knn_top1", ...}),
the same values it sends to TensorBoard; a plain file needs no TensorBoard reader and survives a killed run
line by line. A resumed run appends again from its checkpoint's step: the last line written for a step wins.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastvid.errors import InputError, MissingFile

METRICS, CURVES = "metrics.jsonl", "curves.png"


def read_metrics(run: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} from RUN/metrics.jsonl, in step order; a later line for a step replaces an
    earlier one (a resumed run redoes the steps after its checkpoint)."""
    path = Path(run) / METRICS
    if not path.is_file():
        raise MissingFile(f"{path}: no such file; is {run} a run folder of `fastvid train`?")
    series: dict[str, dict[int, float]] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line of a killed run: cut short
                break
            raise InputError(f"{path}:{n}: not a JSON line") from None
        step = int(row.pop("step"))
        for name, value in row.items():
            series.setdefault(name, {})[step] = float(value)
    return {name: (sorted(v), [v[s] for s in sorted(v)]) for name, v in series.items()}


# One panel per quantity: its title and the metrics drawn in it (those present).
PANELS = (
    ("loss", ("loss/loss", "val/loss")),
    ("pretext top-1", ("pretext/acc", "val/acc", "val/knn_top1")),
    ("learning rate", ("lr",)),
    ("clips/s", ("clips_per_s",)),
    ("data wait (fraction of the time)", ("data_wait_fraction",)),
)


def _panels(series: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, list[str]]]:
    """PANELS with the metrics this run logged; a method's other pretext accuracies (`*_acc`) and loss terms
    join the top-1 and loss panels."""
    out = []
    for title, names in PANELS:
        extra = []
        if title == "pretext top-1":
            extra = sorted(n for n in series if n.endswith("_acc") and n not in names)
        shown = [n for n in (*names, *extra) if n in series]
        if shown:
            out.append((title, shown))
    return out


def plot_run(run: str | Path) -> Path:
    """Write RUN/curves.png (train and validation against optimiser steps) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    series = read_metrics(run)
    panels = _panels(series)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            steps, values = series[name]
            style = {"marker": "o", "linestyle": "--"} if name.startswith("val/") else {}
            ax.plot(steps, values, label=name, **style)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(str(run))
    fig.tight_layout()
    out = Path(run) / CURVES
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
