"""fastvid: a GPU video data loader (NVIDIA DALI) and a compact trainer for self-supervised video learning."""

__version__ = "0.1.0"
