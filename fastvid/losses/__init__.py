"""Contrastive losses: pure functions with shapes in their docstrings.

The public names are the fused implementations (Triton kernels for CUDA tensors, tiled PyTorch on the CPU,
L2 normalisation fused unless normalize=False); `fastvid.losses.reference` holds the papers' naive formulas.
"""
from fastvid.losses.contrastive import center_nce, gdt_loss, info_nce_queue, mil_nce, nt_xent
from fastvid.losses.cross_and_learn import cross_and_learn_loss

__all__ = ["nt_xent", "info_nce_queue", "cross_and_learn_loss", "gdt_loss", "mil_nce", "center_nce"]
