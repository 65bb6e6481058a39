"""GPU benchmark of BiMamba's bidirectional scan: Triton against mamba_ssm.

Times, side by side in one run, the scan of both directions of one BiMamba
layer with gating (what a training step runs per layer), forward alone and
forward + backward, for the paper's shapes:

- ``separation``: one 60 s sequence of Mamba-TasNet frames (60000 frames,
  d_inner 512, d_state 16),
- ``asr``: 8 x 320 s of ConMamba frames (8 x 8000 frames, d_inner 1024),
- ``asr_40s`` and ``separation_8s``: the short ends of both studies,

on this package's Triton kernels
(:func:`speechbrain_mamba.ops.triton.bidirectional_scan.bidirectional_scan`)
and on mamba_ssm's ``selective_scan_fn`` with both directions as one call
(the backward direction as extra channels with its own B/C group, gate
inside), bf16 inputs. Ratios are mamba_ssm time / Triton time (> 1: Triton
faster). Needs an NVIDIA GPU; mamba_ssm is optional (its rows are skipped).

Usage::

    python -m speechbrain_mamba.benchmarks.gpu_scan [--shapes separation asr]
        [--repeats 7] [--json results.json]

Author
------
speechbrain-mamba developers
"""

import argparse
import json
from typing import Callable, Dict, List

import torch

from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.ops.backend import cuda_kernels
from speechbrain_mamba.ops.triton.bidirectional_scan import (
    ScanInputs,
    bidirectional_scan,
)
from speechbrain_mamba.utils.atomic import atomic_write_text

#: name -> (batch, frames, d_inner, d_state)
SHAPES = {
    "separation": (1, 60000, 512, 16),
    "asr": (8, 8000, 1024, 16),
    "asr_40s": (8, 1000, 1024, 16),
    "separation_8s": (1, 8000, 512, 16),
}


def _triton_step(batch: int, time: int, d_inner: int, d_state: int):
    """Leaves and the callable of the Triton scan (both directions)."""

    def make(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    x_dbl = [make(batch, time, 2 * d_state) for _ in range(2)]
    leaves = [
        make(batch, time, 2 * d_inner),
        make(batch, time, 2 * d_inner),
        make(batch, time, d_inner),
        -torch.rand(2 * d_inner, d_state, device="cuda"),
        *x_dbl,
        torch.randn(2 * d_inner, device="cuda"),
        torch.randn(2 * d_inner, device="cuda") - 2.0,
    ]
    for leaf in leaves:
        leaf.requires_grad_()
    lengths = torch.full((batch,), time, device="cuda")

    def forward():
        u, delta_raw, z, A, xf, xb, D, bias = leaves
        inputs = ScanInputs(
            u, delta_raw, z, A, *xf.split(d_state, -1),
            *xb.split(d_state, -1), D, bias, lengths,
        )  # fmt: skip
        return bidirectional_scan(inputs, 0.5)

    return leaves, forward


def _mamba_ssm_step(batch: int, time: int, d_inner: int, d_state: int):
    """Leaves and the callable of one mamba_ssm call for both directions."""

    def make(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    leaves = [
        make(batch, 2 * d_inner, time),
        make(batch, 2 * d_inner, time),
        -torch.rand(2 * d_inner, d_state, device="cuda"),
        make(batch, 2, d_state, time),
        make(batch, 2, d_state, time),
        torch.randn(2 * d_inner, device="cuda"),
        make(batch, 2 * d_inner, time),
        torch.randn(2 * d_inner, device="cuda") - 2.0,
    ]
    for leaf in leaves:
        leaf.requires_grad_()
    scan = cuda_kernels().selective_scan_fn

    def forward():
        u, delta, A, B, C, D, z, bias = leaves
        return scan(
            u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True
        )

    return leaves, forward


def _timings(leaves: List[torch.Tensor], forward: Callable, repeats: int):
    """Forward (no gradient) and forward + backward medians, in ms."""
    weights = None

    def train():
        nonlocal weights
        out = forward()
        if weights is None:
            weights = torch.randn_like(out)
        torch.autograd.grad((out * weights).sum(), leaves)

    def infer():
        with torch.no_grad():
            forward()

    return {
        "forward_ms": measure(infer, "cuda", repeats, warmup=2)["seconds"]
        * 1e3,
        "train_ms": measure(train, "cuda", repeats, warmup=2)["seconds"] * 1e3,
    }


def run(shapes: List[str], repeats: int = 7) -> List[Dict]:
    """Times both implementations for each shape.

    Arguments
    ---------
    shapes : list of str
        Keys of ``SHAPES``.
    repeats : int
        Timed calls (median reported).

    Returns
    -------
    list of dict
        One row per shape: Triton and mamba_ssm times and their ratios
        (mamba_ssm columns None without mamba_ssm).

    Example
    -------
    >>> if torch.cuda.is_available():
    ...     rows = run(["separation_8s"], repeats=1)
    ...     assert rows[0]["triton_train_ms"] > 0
    """
    rows = []
    for name in shapes:
        sizes = SHAPES[name]
        row = {"shape": name, "batch_frames_dinner_dstate": sizes}
        for label, build in (
            ("triton", _triton_step),
            ("mamba_ssm", _mamba_ssm_step),
        ):
            if label == "mamba_ssm" and cuda_kernels() is None:
                row.update(mamba_ssm_forward_ms=None, mamba_ssm_train_ms=None)
                continue
            timings = _timings(*build(*sizes), repeats)
            row.update({f"{label}_{k}": v for k, v in timings.items()})
            torch.cuda.empty_cache()
        for kind in ("forward", "train"):
            other = row[f"mamba_ssm_{kind}_ms"]
            row[f"{kind}_ratio"] = (
                None if other is None else other / row[f"triton_{kind}_ms"]
            )
        rows.append(row)
    return rows


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", nargs="+", default=["separation", "asr"], choices=SHAPES
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_scan needs an NVIDIA GPU (torch.cuda)")
    rows = run(args.shapes, args.repeats)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
