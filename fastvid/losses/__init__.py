"""Contrastive losses: pure functions with shapes in their docstrings.

The public names are the fused implementations (Triton kernels for CUDA tensors, tiled PyTorch on the CPU,
L2 normalisation fused unless normalize=False); `fastvid.losses.reference` holds the papers' naive formulas.
`top1_accuracy` (and GDT's `gdt_top1_accuracy`) is the pretext accuracy each method logs beside its loss.
"""
from fastvid.losses.contrastive import (center_nce, gdt_loss, gdt_top1_accuracy, info_nce_queue, mil_nce, nt_xent,
                                        top1_accuracy)
from fastvid.losses.cross_and_learn import cross_and_learn_loss

__all__ = ["nt_xent", "info_nce_queue", "cross_and_learn_loss", "gdt_loss", "mil_nce", "center_nce",
           "top1_accuracy", "gdt_top1_accuracy"]
