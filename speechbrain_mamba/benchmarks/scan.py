"""CPU benchmark of the selective scan and of a BiMamba layer.

Times, side by side in one run, for d_model 256 (d_inner 512), d_state 16:

- ``sequential``: a straightforward step-by-step PyTorch loop,
- ``mambapy``: mambapy's parallel (Blelloch) scan, when installed,
- ``blocked``: this package's blocked pure-PyTorch scan (training path),
- ``numba``: this package's fused numba kernel (CPU inference path),

forward and forward+backward, and a full BiMamba layer, for 1k / 8k / 32k
frames. Ratios are reported against the sequential loop.

Usage::

    python -m speechbrain_mamba.benchmarks.scan [--lengths 1000 8000 32000]
        [--threads 2] [--json results.json]

Author
------
speechbrain-mamba developers
"""

import argparse
import json
from typing import Dict, List

import torch
import torch.nn.functional as F

from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.nnet import BiMamba
from speechbrain_mamba.ops import numba_scan
from speechbrain_mamba.ops.selective_scan import selective_scan_torch


def sequential_scan(u, delta, A, B, C, D, z):
    """The textbook loop (channels first, softplus already applied)."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[..., t, None] * A) * h + (
            delta[..., t, None] * u[..., t, None] * B[:, None, :, t]
        )
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, -1) + D[:, None] * u) * F.silu(z)


def mambapy_scan(u, delta, A, B, C, D, z):
    """mambapy's parallel scan (materialises [b, time, d, n])."""
    from mambapy.pscan import pscan

    dA = torch.exp(delta.transpose(1, 2)[..., None] * A)
    BX = (delta * u).transpose(1, 2)[..., None] * B.transpose(1, 2)[:, :, None]
    hs = pscan(dA, BX)
    y = (hs @ C.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)
    return (y + D[:, None] * u) * F.silu(z)


def blocked_scan(u, delta, A, B, C, D, z):
    return selective_scan_torch(u, delta, A, B, C, D, z)


def numba_kernel(u, delta, A, B, C, D, z):
    return numba_scan.selective_scan_numba(u, delta, A, B, C, D, z)


def operands(time: int, d_inner: int = 512, d_state: int = 16, grad=False):
    torch.manual_seed(0)
    u = torch.randn(1, d_inner, time)
    delta = F.softplus(torch.randn(1, d_inner, time) - 4)
    A = -torch.arange(1, d_state + 1.0).repeat(d_inner, 1)
    B, C = torch.randn(2, 1, d_state, time).unbind(0)
    D, z = torch.ones(d_inner), torch.randn(1, d_inner, time)
    tensors = [u, delta, A, B, C, D, z]
    if grad:
        tensors = [t.requires_grad_() for t in tensors]
    return tensors


def run(
    lengths: List[int], budget_s: float, reference_max_frames: int = 8000
) -> List[Dict]:
    scans = {"sequential": sequential_scan, "blocked": blocked_scan}
    try:
        import mambapy  # noqa: F401

        scans["mambapy"] = mambapy_scan
    except ImportError:
        print("mambapy not installed: pip install mambapy to compare with it")
    if numba_scan.available():
        scans["numba"] = numba_kernel
    rows = []
    for time in lengths:
        for mode in ("forward", "forward+backward"):
            grad = mode != "forward"
            for name, scan in scans.items():
                if grad and name == "numba":
                    continue  # inference-only kernel
                if name == "sequential" and time > reference_max_frames:
                    continue  # minutes per call; linear in time
                if name == "mambapy" and grad and time > reference_max_frames:
                    continue
                tensors = operands(time, grad=grad)

                def step(scan=scan, tensors=tensors, grad=grad):
                    if grad:
                        scan(*tensors).sum().backward()
                    else:
                        with torch.no_grad():
                            scan(*tensors)

                result = measure(step, repeats=3, budget_s=budget_s)
                rows.append(
                    {
                        "what": "scan",
                        "impl": name,
                        "frames": time,
                        "mode": mode,
                        **result,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        layer = BiMamba(256, d_state=16, backend="torch")
        x = torch.randn(1, time, 256)
        for mode in ("forward", "forward+backward"):

            def layer_step(mode=mode, layer=layer, x=x):
                if mode == "forward":
                    with torch.no_grad():
                        layer(x)
                else:
                    layer(x.requires_grad_()).sum().backward()

            result = measure(layer_step, repeats=3, budget_s=budget_s)
            rows.append(
                {
                    "what": "BiMamba layer",
                    "impl": "speechbrain_mamba",
                    "frames": time,
                    "mode": mode,
                    **result,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: List[Dict]) -> str:
    """Markdown table with speed-ups against the sequential loop."""
    base = {
        (r["frames"], r["mode"]): r["seconds"]
        for r in rows
        if r["impl"] == "sequential"
    }
    lines = [
        "| what | impl | frames | mode | seconds | x vs sequential |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base.get((r["frames"], r["mode"]))
        ratio = f"{ref / r['seconds']:.1f}" if ref and r["seconds"] else "-"
        seconds = "OOM" if r["oom"] else f"{r['seconds']:.3f}"
        lines.append(
            f"| {r['what']} | {r['impl']} | {r['frames']} | {r['mode']} | "
            f"{seconds} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1000, 8000, 32000]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds of repeats per measurement",
    )
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument(
        "--reference-max-frames",
        type=int,
        default=8000,
        help="longest input for the slow sequential loop",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.lengths, args.budget, args.reference_max_frames)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
