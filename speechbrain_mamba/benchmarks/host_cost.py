"""Host cost of one eager layer call, Mamba beside SpeechBrain's transformer.

On short inputs an eager training step waits on the host: Python, autograd
and the operator dispatcher prepare every GPU kernel, and a layer whose GPU
work takes microseconds costs what its host side costs. This benchmark
measures that host side on the CPU, with no GPU: the layers run on small
tensors (their arithmetic is negligible) with this package's Triton kernels
under Triton's interpreter, each kernel launch replaced by a no-op that
only counts it (the defaults, 8 frames of width 32, keep the arithmetic of
the PyTorch operations to a few percent: the host work of a call does not
depend on the sizes). Per call it reports the median wall time, the kernel
launches and the ATen operations dispatched, for

- one bidirectional layer of Mamba-TasNet's stack (:class:`MambaStack`
  of one :class:`BiMamba` block with its norm), recomputing its activations
  in backward (``low_memory``, the default) and keeping them,
- one unidirectional Mamba layer (VALL-M's AR model, CrossMamba's self
  part),
- one layer of SepFormer's ``SBTransformerBlock`` (the peer, norm first,
  8 heads, feed-forward 4 x d_model),

in training (forward and backward) and inference (no gradients, eval
mode). The ratio is peer time / Mamba time (> 1: the Mamba layer costs the
host less). Host costs on the GPU machine add each kernel launch's driver
cost (a few microseconds, plus Triton's launcher for its kernels), which is
why the launches are counted.

Usage (Triton's interpreter must be chosen before Triton is imported)::

    TRITON_INTERPRET=1 python -m speechbrain_mamba.benchmarks.host_cost \\
        --out results/host_cost [--d-model 32] [--frames 8] [--repeats 200]

It writes ``rows.csv`` and ``summary.md`` to ``--out``.

Author
------
speechbrain-mamba developers
"""

import argparse
import collections
import contextlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from speechbrain_mamba.benchmarks.timing import measure
from speechbrain_mamba.ops.triton import bidirectional_scan
from speechbrain_mamba.utils.atomic import atomic_write_csv, atomic_write_text
from speechbrain_mamba.utils.cli import positive_int

#: (label, role, kind of :func:`build_layer`).
LAYERS = (
    ("MambaStack layer, BiMamba, recomputes", "mamba", "bimamba_lean"),
    ("MambaStack layer, BiMamba, keeps activations", "mamba", "bimamba_keep"),
    ("MambaStack layer, Mamba (unidirectional)", "mamba", "mamba"),
    ("SBTransformerBlock layer (SepFormer)", "peer", "transformer"),
)


def build_layer(kind: str, d_model: int) -> torch.nn.Module:
    """One layer of the compared stacks.

    Arguments
    ---------
    kind : str
        "bimamba_lean", "bimamba_keep", "mamba" or "transformer".
    d_model : int
        Model width.

    Returns
    -------
    torch.nn.Module
        Takes and returns [batch, time, d_model].

    Example
    -------
    >>> layer = build_layer("transformer", 16)
    >>> layer(torch.randn(1, 5, 16)).shape
    torch.Size([1, 5, 16])
    """
    if kind == "transformer":
        from speechbrain.lobes.models.dual_path import SBTransformerBlock

        return SBTransformerBlock(
            num_layers=1,
            d_model=d_model,
            nhead=8 if d_model % 8 == 0 else 1,
            d_ffn=4 * d_model,
            dropout=0.0,
            use_positional_encoding=False,
            norm_before=True,
        )
    from speechbrain_mamba.nnet import MambaStack

    if kind not in ("bimamba_lean", "bimamba_keep", "mamba"):
        raise ValueError(f"unknown layer kind {kind!r}")
    mixer = {}
    if kind != "mamba":
        mixer["low_memory"] = kind == "bimamba_lean"
    return MambaStack(
        d_model,
        1,
        bidirectional=kind != "mamba",
        backend="triton",
        cuda_graphs=False,
        **mixer,
    )


class _CountOps(TorchDispatchMode):
    """Counts the ATen operations dispatched (inside launches: none)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def stubbed_launches() -> Iterator[collections.Counter]:
    """Replaces every Triton kernel launch (under the interpreter) by a
    no-op that counts it, by kernel name; the launches run again after the
    context.

    Yields
    ------
    collections.Counter
        Launches per kernel, filled while the context is active.

    Raises
    ------
    RuntimeError
        If Triton's interpreter is not active.

    Example
    -------
    >>> if bidirectional_scan.interpreted():
    ...     with stubbed_launches() as launches:
    ...         x = torch.ones(2, 4, 8)
    ...         y = bidirectional_scan.gate_directions(x, x[..., :4], 1.0)
    ...     assert sum(launches.values()) == 1  # the gating kernel
    """
    if not bidirectional_scan.interpreted():
        raise RuntimeError(
            "the host-cost benchmark needs Triton's interpreter: run it with "
            "TRITON_INTERPRET=1 set before Python starts"
        )
    from triton.runtime.interpreter import InterpretedFunction

    launches: collections.Counter = collections.Counter()
    original = InterpretedFunction.__getitem__

    def launcher(kernel, grid):
        def launch(*args, **kwargs):
            launches[kernel.fn.__name__] += 1

        return launch

    InterpretedFunction.__getitem__ = launcher
    try:
        yield launches
    finally:
        InterpretedFunction.__getitem__ = original


def _step(layer: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable:
    if mode == "infer":
        layer.eval()

        def infer():
            with torch.no_grad():
                layer(x)

        return infer
    layer.train()
    x = x.clone().requires_grad_()

    def train():
        layer(x).sum().backward()

    return train


def host_rows(
    d_model: int, frames: int, repeats: int, batch: int = 1
) -> List[Dict]:
    """Measures every layer of :data:`LAYERS` in both modes.

    Arguments
    ---------
    d_model : int
        Model width.
    frames : int
        Frames of the input (small: the arithmetic must not count).
    repeats : int
        Timed calls per measurement (the median is reported).
    batch : int
        Batch size.

    Returns
    -------
    list of dict
        One per (layer, mode): ``layer``, ``role``, ``mode``, ``d_model``,
        ``frames``, ``host_us`` (median per call), ``kernel_launches`` and
        ``aten_ops`` (per call).

    Raises
    ------
    RuntimeError
        If Triton's interpreter is not active (see the module docstring).

    Example
    -------
    >>> if bidirectional_scan.interpreted():
    ...     rows = host_rows(8, 4, 1)
    ...     assert {r["role"] for r in rows} == {"mamba", "peer"}
    """
    rows = []
    torch.manual_seed(0)
    x = torch.randn(batch, frames, d_model)
    with stubbed_launches() as launches:
        for label, role, kind in LAYERS:
            layer = build_layer(kind, d_model)
            for mode in ("train", "infer"):
                step = _step(layer, x, mode)
                for _ in range(3):  # caches, first-call work
                    step()
                launches.clear()
                with _CountOps() as ops:
                    step()
                launched = sum(launches.values())
                timed = measure(step, "cpu", repeats, warmup=0)
                rows.append(
                    {
                        "layer": label,
                        "role": role,
                        "mode": mode,
                        "d_model": d_model,
                        "frames": frames,
                        "host_us": timed["seconds"] * 1e6,
                        "kernel_launches": launched,
                        "aten_ops": ops.count,
                    }
                )
    return rows


def summary(rows: List[Dict]) -> str:
    """A markdown table of the rows, with peer / Mamba host-time ratios.

    Arguments
    ---------
    rows : list of dict
        From :func:`host_rows`.

    Returns
    -------
    str
        The table.

    Example
    -------
    >>> rows = [dict(layer="M", role="mamba", mode="train", host_us=200.0,
    ...              kernel_launches=11, aten_ops=90),
    ...         dict(layer="T", role="peer", mode="train", host_us=100.0,
    ...              kernel_launches=0, aten_ops=60)]
    >>> print(summary(rows).splitlines()[2])
    | M | train | 200 | 11 | 90 | 0.50 |
    """
    peer = {r["mode"]: r["host_us"] for r in rows if r["role"] == "peer"}
    lines = [
        "| layer | mode | host us per call | kernel launches | ATen ops "
        "| peer / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = peer.get(r["mode"], float("nan")) / r["host_us"]
        lines.append(
            f"| {r['layer']} | {r['mode']} | {r['host_us']:.0f} | "
            f"{r['kernel_launches']} | {r['aten_ops']} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/host_cost")
    parser.add_argument("--d-model", type=positive_int, default=32)
    parser.add_argument("--frames", type=positive_int, default=8)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=200)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = host_rows(args.d_model, args.frames, args.repeats, args.batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out / "rows.csv", list(rows[0]), rows)
    text = summary(rows)
    atomic_write_text(out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
