"""Shared pytest configuration for speechbrain-mamba's tests.

Hardware markers (registered in pyproject.toml; ``--strict-markers`` rejects
misspelt ones). They are the only way a test says what it needs; the skip
happens here, in :func:`pytest_collection_modifyitems`:

* ``@pytest.mark.gpu``: needs an NVIDIA GPU. Skipped without one, and
  under Triton's CPU interpreter (``TRITON_INTERPRET=1``), where the
  kernels run on CPU tensors instead of compiled for the GPU.
* ``@pytest.mark.triton``: runs Triton kernels, so it needs Triton and
  either a GPU or Triton's interpreter (tests/test_triton_interpreted.py
  runs the Triton test files under the interpreter on CPU).
* ``@pytest.mark.mamba_ssm``: compares with mamba_ssm's own CUDA kernels
  or modules, so it needs mamba_ssm and a GPU.
"""

import importlib
import os
from typing import Optional

import pytest
import torch

import speechbrain_mamba  # noqa: F401  (makes `import speechbrain` work)

torch.set_num_threads(int(os.environ.get("SBMAMBA_TEST_THREADS", "2")))


def triton_interpreted() -> bool:
    """Whether Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True


def _skip_reason(marker: str) -> Optional[str]:
    """Why a test with this hardware marker cannot run here (None: it can)."""
    gpu = torch.cuda.is_available()
    if marker == "gpu":
        if gpu and triton_interpreted():
            return "needs an NVIDIA GPU (skipped under TRITON_INTERPRET=1)"
        return None if gpu else "needs an NVIDIA GPU"
    if marker == "triton":
        if (gpu or triton_interpreted()) and _imports("triton"):
            return None
        return "needs Triton and an NVIDIA GPU, or Triton's interpreter"
    if marker == "mamba_ssm":
        if gpu and _imports("mamba_ssm.ops.selective_scan_interface"):
            return None
        return "needs an NVIDIA GPU with mamba_ssm installed"
    return None


HARDWARE_MARKERS = ("gpu", "triton", "mamba_ssm")


def pytest_collection_modifyitems(config, items):
    reasons = {}
    for item in items:
        for marker in HARDWARE_MARKERS:
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = _skip_reason(marker)
            if reasons[marker] is not None:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))
                break


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
