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


@pytest.fixture
def true_fp32():
    """GPU references in true fp32: cuDNN's convolutions (the fallback of
    paths without causal_conv1d) use TF32 by default, about 1e-3 apart."""
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) = saved


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
