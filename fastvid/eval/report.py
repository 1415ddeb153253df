"""What an evaluation leaves behind: a console table, a JSON file, and a PNG of retrieval examples
(query frames beside their nearest training clips, like the thesis's Figure 4)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


# Columns that are counts or bounds, not scores: shown, but no gain is computed for them.
NOT_SCORES = {"n", "correct", "videos", "chance", "ci_low", "ci_high", "l2", "first_loss", "last_loss"}


def table(results: dict[str, dict[str, Any]]) -> str:
    """Rows = encoders ("pretrained", "random"), columns = their numeric metrics, plus a gain row
    (pretrained minus random) for the score columns."""
    rows = list(results)
    cols = [c for c, v in results[rows[0]].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = [f"{'encoder':<12}" + "".join(f"{c:>12}" for c in cols)]
    for r in rows:
        lines.append(f"{r:<12}" + "".join(f"{_fmt(results[r].get(c)):>12}" for c in cols))
    if {"pretrained", "random"} <= set(rows):
        gain = [None if c in NOT_SCORES else results["pretrained"][c] - results["random"][c] for c in cols]
        lines.append(f"{'gain':<12}" + "".join(f"{_fmt(g, signed=True):>12}" for g in gain))
    return "\n".join(lines)


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{value:+d}" if signed else str(value)


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write the report (plain data only) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def retrieval_figure(path: str | Path, examples: dict[str, Any], class_names: list[str]) -> Path:
    """One row per query: its three frames, then each neighbour's three frames, titled by class and
    cosine similarity (green title: same class as the query)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q_thumbs = examples["query_thumbs"].numpy()  # (Q, 3, S, S, 3)
    n_thumbs = examples["neighbour_thumbs"].numpy()  # (Q, K, 3, S, S, 3)
    q_lab, n_lab = examples["query_labels"].tolist(), examples["neighbour_labels"].tolist()
    sims = examples["similarity"].tolist()
    rows, k = n_thumbs.shape[:2]
    fig, axes = plt.subplots(rows, k + 1, figsize=(2.4 * (k + 1), 1.1 * rows + 0.4), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(np.concatenate(list(q_thumbs[r]), axis=1))
        axes[r, 0].set_title(f"query: {class_names[q_lab[r]]}", fontsize=7)
        for j in range(k):
            ax = axes[r, j + 1]
            ax.imshow(np.concatenate(list(n_thumbs[r, j]), axis=1))
            same = n_lab[r][j] == q_lab[r]
            ax.set_title(f"{class_names[n_lab[r][j]]} ({sims[r][j]:.2f})", fontsize=7,
                         color="green" if same else "red")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
