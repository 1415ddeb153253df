"""Root conftest: decides, before anything imports Triton, whether its kernels run on a GPU or in the
interpreter. TRITON_INTERPRET must be set before the first `import triton` in the process."""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without CUDA, skip the tests marked `gpu`. With CUDA, Triton compiles for the GPU and cannot take
    the CPU tensors of the interpreter tests (backend="triton", not marked `gpu`): skip those there, the
    `gpu` tests check the compiled kernels."""
    for item in items:
        on_gpu = "gpu" in item.keywords
        interpreted = getattr(item, "callspec", None) is not None and item.callspec.params.get("backend") == "triton"
        if not HAS_CUDA and on_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        elif HAS_CUDA and interpreted and not on_gpu:
            item.add_marker(pytest.mark.skip(reason="Triton interpreter test (CPU tensors); compiled kernels: gpu tests"))
