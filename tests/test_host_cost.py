"""The host-cost benchmark (speechbrain_mamba.benchmarks.host_cost): run
under Triton's interpreter in a subprocess (it must be chosen before Triton
is imported), it writes a row per layer and mode with the kernel launches
and ATen operations of one call, and a summary whose ratios come from the
rows; without the interpreter it refuses with the reason."""

import csv
import os
import subprocess
import sys

import pytest

from speechbrain_mamba.benchmarks import host_cost
from speechbrain_mamba.ops.triton import bidirectional_scan


@pytest.mark.skipif(
    not bidirectional_scan.available(), reason="needs Triton installed"
)
def test_rows_and_summary_under_the_interpreter(tmp_path):
    out = tmp_path / "host"
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable, "-m", "speechbrain_mamba.benchmarks.host_cost",
        "--out", str(out), "--repeats", "3", "--d-model", "16",
        "--frames", "4",
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "rows.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    assert [(r["layer"], r["mode"]) for r in rows] == [
        (label, mode)
        for label, _, _ in host_cost.LAYERS
        for mode in ("train", "infer")
    ]
    by = {(r["layer"], r["mode"]): r for r in rows}
    lean, keep, mamba, peer = (label for label, _, _ in host_cost.LAYERS)
    # inference: the fused convolution, the scan's two passes and the
    # carry between chunks, the gating, and the two add + norm kernels
    assert int(by[(lean, "infer")]["kernel_launches"]) == 7
    assert int(by[(peer, "train")]["kernel_launches"]) == 0
    # recomputing in backward launches the convolution and the gating once
    # more
    assert int(by[(lean, "train")]["kernel_launches"]) == (
        int(by[(keep, "train")]["kernel_launches"]) + 2
    )
    assert int(by[(lean, "train")]["aten_ops"]) > int(
        by[(keep, "train")]["aten_ops"]
    )
    assert all(float(r["host_us"]) > 0 for r in rows)
    summary = (out / "summary.md").read_text().splitlines()
    for line, row in zip(summary[2:], rows):
        ratio = float(by[(peer, row["mode"])]["host_us"]) / float(
            row["host_us"]
        )
        assert line.endswith(f"| {ratio:.2f} |"), line


@pytest.mark.skipif(
    bidirectional_scan.interpreted(), reason="under the interpreter"
)
def test_refuses_without_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        host_cost.host_rows(8, 4, 1)
