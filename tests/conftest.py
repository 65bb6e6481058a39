"""Shared pytest configuration for speechbrain-mamba's tests."""

import os

import pytest
import torch

import speechbrain_mamba  # noqa: F401  (makes `import speechbrain` work)

torch.set_num_threads(int(os.environ.get("SBMAMBA_TEST_THREADS", "2")))


def cuda_kernels_available() -> bool:
    """True on a machine with a GPU and the mamba_ssm kernels."""
    from speechbrain_mamba.ops.backend import cuda_kernels

    return torch.cuda.is_available() and cuda_kernels() is not None


requires_cuda = pytest.mark.skipif(
    not cuda_kernels_available(),
    reason="needs an NVIDIA GPU with mamba_ssm installed",
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
