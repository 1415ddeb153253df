"""Contrastive losses: pure functions with shapes in their docstrings (see `reference` for the formulas).

The public names are the fused implementations; `fastvid.losses.reference` holds the naive formulas.
"""
from fastvid.losses.reference import (
    center_nce,
    cross_and_learn_loss,
    gdt_loss,
    info_nce_queue,
    mil_nce,
    nt_xent,
)

__all__ = ["nt_xent", "info_nce_queue", "cross_and_learn_loss", "gdt_loss", "mil_nce", "center_nce"]
