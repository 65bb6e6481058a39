"""The Triton kernels on CPU: runs tests/test_triton_bimamba.py,
tests/test_triton_mamba.py and tests/test_triton_mamba_step.py in a
subprocess under Triton's interpreter (``TRITON_INTERPRET=1`` must be set
before Triton is imported, so not in this process), where their small cases
compare every kernel path (BiMamba scan forward and backward, inference
scan, bidirectional convolution, the lean layer function, the forward-only
scan and causal convolution of Mamba, CrossMamba and MambaStack, the fused
decoding step, the fused residual add + norm) with the PyTorch references,
gradients and padded items included. On a GPU machine the subprocess
hides the GPU, so the same small cases run (the files also run their
compiled-kernel cases there directly)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_mamba.ops.triton import bidirectional_scan

TESTS = Path(__file__).resolve().parent
FILES = (
    "test_triton_bimamba.py",
    "test_triton_mamba.py",
    "test_triton_mamba_step.py",
    "test_add_norm.py",
)

#: Tests of FILES that run under the interpreter (so that a change which
#: skips them all cannot pass here).
INTERPRETED_TESTS = 62


@pytest.mark.skipif(
    not bidirectional_scan.available(),
    reason="needs Triton (pip install triton)",
)
@pytest.mark.skipif(
    bidirectional_scan.interpreted(),
    reason="already under the interpreter: the files run in this session",
)
def test_triton_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", SBMAMBA_BACKEND="")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU cases, on any machine
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, *(str(TESTS / name) for name in FILES)],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == INTERPRETED_TESTS, tail
