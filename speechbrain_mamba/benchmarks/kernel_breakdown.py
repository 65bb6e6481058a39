"""Where a step's GPU time goes, by kernel category, for a Mamba model and
its SpeechBrain peer side by side.

The efficiency study (:mod:`speechbrain_mamba.benchmarks.efficiency`) gives
each model's step time; this splits it by what the kernels do (scan,
attention, matrix products, normalisation, ...) from PyTorch's profiler,
and gives the bound that follows from it: the speed ratio the Mamba model
would reach if its own kernels (the selective scan and Mamba's short
convolution) took no time at all, against the peer as measured. When the
parts both models share already cost more than a target allows, no scan
kernel can meet that target.

Usage::

    python -m speechbrain_mamba.benchmarks.kernel_breakdown \\
        --task asr|separation|tts --seconds 40 320 [--batch 8] \\
        [--dtype bfloat16] [--mode train] [--out DIR]

writes ``DIR/kernel_breakdown.json`` and ``DIR/kernel_breakdown.md`` (one
table per duration). Needs an NVIDIA GPU.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import torch

from speechbrain_mamba.benchmarks.efficiency import make_step, model_label
from speechbrain_mamba.benchmarks.models import TASKS
from speechbrain_mamba.utils.atomic import atomic_write_text

#: (category, fragments of kernel names), the first match wins. The first
#: two are the Mamba model's own kernels (this package's Triton kernels and
#: mamba_ssm / causal_conv1d), "attention" is the peer's.
CATEGORIES = (
    (
        "scan",
        (
            "_sequential",
            "_adjoint_summary",
            "_carry_kernel",
            "_gate_kernel",
            "selective_scan",
            "_step_input_kernel",
            "_step_state_kernel",
        ),
    ),
    ("mamba_conv", ("_conv_forward", "_conv_grad_", "causal_conv1d")),
    ("attention", ("flash", "fmha", "sdpa", "attention", "softmax")),
    ("convolution", ("conv", "cudnn")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_")),
    (
        "normalization",
        ("layer_norm", "LayerNorm", "GammaBeta", "group_norm", "batch_norm"),
    ),
    ("reduction", ("reduce_kernel",)),
)
#: Tasks whose models are profiled (for tts: the joint AR + NAR training
#: step or the teacher-forced inference of VALL-M and VALL-E; their AR step
#: is timed by the efficiency study's ``ar-step`` mode).
TASK_NAMES = ("separation", "asr", "tts")
#: Categories of the Mamba model's own kernels, and of the peer's.
MAMBA_OWN = ("scan", "mamba_conv")
PEER_OWN = ("attention",)


def categorize(kernel: str) -> str:
    """The category of a GPU kernel, from its name.

    Arguments
    ---------
    kernel : str
        Kernel name as the profiler reports it.

    Returns
    -------
    str
        One of the names in :data:`CATEGORIES`, else "elementwise".

    Example
    -------
    >>> categorize("_sequential_backward_kernel")
    'scan'
    >>> categorize("cudnn_generated_fort_native_sdpa_sm90_flash_bprop")
    'attention'
    >>> categorize("void at::native::vectorized_elementwise_kernel<8>")
    'elementwise'
    """
    for category, fragments in CATEGORIES:
        if any(fragment in kernel for fragment in fragments):
            return category
    return "elementwise"


def profile_kernels(step, repeats: int = 3) -> Dict[str, Dict[str, float]]:
    """GPU milliseconds and launches per call of ``step``, by kernel.

    Arguments
    ---------
    step : callable
        One step on the GPU (e.g. from
        :func:`~speechbrain_mamba.benchmarks.efficiency.make_step`).
    repeats : int
        Profiled calls (after two warm-up calls); figures are per call.

    Returns
    -------
    dict
        kernel name -> ``{"ms": ..., "launches": ...}`` per call.

    Example
    -------
    >>> if torch.cuda.is_available():
    ...     x = torch.randn(256, 256, device="cuda")
    ...     kernels = profile_kernels(lambda: x @ x, repeats=2)
    ...     assert sum(k["launches"] for k in kernels.values()) == 1
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
    return {
        event.key: {
            "ms": event.self_device_time_total / repeats / 1e3,
            "launches": event.count / repeats,
        }
        for event in prof.key_averages()
        if event.device_type.name == "CUDA"
    }


def by_category(kernels: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Milliseconds per kernel category (:func:`categorize`) and "total".

    Arguments
    ---------
    kernels : dict
        From :func:`profile_kernels`.

    Returns
    -------
    dict
        category -> ms per call, plus "total".

    Example
    -------
    >>> by_category({"_sequential_fwd": {"ms": 2.0, "launches": 1},
    ...              "gemm_a": {"ms": 1.0, "launches": 4},
    ...              "gemm_b": {"ms": 0.5, "launches": 1}})
    {'scan': 2.0, 'gemm': 1.5, 'total': 3.5}
    """
    times = Counter()
    for name, figures in kernels.items():
        times[categorize(name)] += figures["ms"]
    out = dict(times)
    out["total"] = sum(out.values())
    return out


def top_kernels(
    kernels: Dict[str, Dict[str, float]], count: int = 12
) -> List[Dict]:
    """The kernels that take the most GPU time.

    Arguments
    ---------
    kernels : dict
        From :func:`profile_kernels`.
    count : int
        How many.

    Returns
    -------
    list of dict
        ``kernel`` (name, cut to 90 characters), ``category``, ``ms`` and
        ``launches`` per call, longest first.

    Example
    -------
    >>> rows = top_kernels({"a_gemm": {"ms": 1.0, "launches": 2},
    ...                     "_carry_kernel": {"ms": 3.0, "launches": 8}}, 1)
    >>> rows[0]["kernel"], rows[0]["category"]
    ('_carry_kernel', 'scan')
    """
    ranked = sorted(kernels.items(), key=lambda item: -item[1]["ms"])
    return [
        {
            "kernel": name[:90],
            "category": categorize(name),
            "ms": figures["ms"],
            "launches": figures["launches"],
        }
        for name, figures in ranked[:count]
    ]


def own_share(row: Dict[str, float], categories=MAMBA_OWN) -> float:
    """Milliseconds of a row in the given categories."""
    return sum(row.get(name, 0.0) for name in categories)


def free_mixer_ratio(mamba: Dict[str, float], peer: Dict[str, float]) -> float:
    """Peer time over the Mamba model's time without its own kernels: the
    largest speed ratio any scan could give against this peer.

    Arguments
    ---------
    mamba, peer : dict
        Rows of :func:`by_category`.

    Returns
    -------
    float
        ``peer["total"] / (mamba["total"] - scan - mamba_conv)``.

    Example
    -------
    >>> free_mixer_ratio(
    ...     {"total": 55.0, "scan": 20.0, "mamba_conv": 3.0},
    ...     {"total": 33.0, "attention": 2.0},
    ... )
    1.03125
    """
    return peer["total"] / (mamba["total"] - own_share(mamba))


def breakdown(
    task: str,
    seconds: float,
    batch: int,
    dtype: torch.dtype = torch.bfloat16,
    mode: str = "train",
    repeats: int = 3,
) -> Dict:
    """Both models of a task profiled on the same input.

    Arguments
    ---------
    task : str
        "separation", "asr" or "tts" (a key of
        :data:`~speechbrain_mamba.benchmarks.models.TASKS`).
    seconds : float
        Audio duration of each input.
    batch : int
        Batch size.
    dtype : torch.dtype
        Autocast dtype (fp32 runs without autocast).
    mode : str
        "train" (forward + backward) or "infer".
    repeats : int
        Profiled steps per model.

    Returns
    -------
    dict
        ``task, seconds, batch, mode, dtype``, ``models`` (name -> row of
        :func:`by_category`), ``top_kernels`` (name -> :func:`top_kernels`)
        and ``free_mixer_ratio``.

    Example
    -------
    >>> if torch.cuda.is_available():
    ...     out = breakdown("asr", 1, 1, repeats=1)
    ...     assert out["free_mixer_ratio"] > 0
    """
    if task not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {task!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("kernel_breakdown needs an NVIDIA GPU (torch.cuda)")
    mamba_builder, peer_builder, make_input, _ = TASKS[task]
    rows, tops = {}, {}
    for builder in (mamba_builder, peer_builder):
        model = builder().cuda()
        x = make_input(seconds, batch, "cuda")
        step = make_step(model, x, mode, dtype, "cuda")
        kernels = profile_kernels(step, repeats)
        rows[model_label(model)] = by_category(kernels)
        tops[model_label(model)] = top_kernels(kernels)
        del model, step, x
        torch.cuda.empty_cache()
    mamba_row, peer_row = rows.values()
    return {
        "task": task,
        "seconds": seconds,
        "batch": batch,
        "mode": mode,
        "dtype": str(dtype).replace("torch.", ""),
        "models": rows,
        "top_kernels": tops,
        "free_mixer_ratio": free_mixer_ratio(mamba_row, peer_row),
    }


def markdown(result: Dict) -> str:
    """One result of :func:`breakdown` as a markdown table.

    Arguments
    ---------
    result : dict
        From :func:`breakdown`.

    Returns
    -------
    str
        Categories as rows, the two models as columns (ms per step and
        share), then the measured ratio and the free-mixer bound.

    Example
    -------
    >>> text = markdown({
    ...     "task": "asr", "seconds": 40, "batch": 8, "mode": "train",
    ...     "dtype": "bfloat16", "free_mixer_ratio": 1.03,
    ...     "models": {
    ...         "ConMamba": {"total": 50.0, "scan": 20.0, "gemm": 30.0},
    ...         "Conformer": {"total": 33.0, "attention": 3.0, "gemm": 30.0},
    ...     },
    ... })
    >>> "| scan | 20.00 (40%) | - |" in text
    True
    """
    (mamba, mamba_row), (peer, peer_row) = result["models"].items()
    names = [name for name, _ in CATEGORIES] + ["elementwise"]
    lines = [
        f"### {result['task']}, {result['seconds']:g} s x {result['batch']},"
        f" {result['mode']}, {result['dtype']}",
        "",
        f"| GPU ms per step | {mamba} | {peer} |",
        "|---|---|---|",
    ]

    def cell(row, name):
        if name not in row:
            return "-"
        return f"{row[name]:.2f} ({100 * row[name] / row['total']:.0f}%)"

    for name in names:
        if name in mamba_row or name in peer_row:
            lines.append(
                f"| {name} | {cell(mamba_row, name)} | {cell(peer_row, name)} |"
            )
    shared_mamba = mamba_row["total"] - own_share(mamba_row)
    shared_peer = peer_row["total"] - own_share(peer_row, PEER_OWN)
    lines += [
        f"| **total** | {mamba_row['total']:.2f} | {peer_row['total']:.2f} |",
        f"| without its own mixer kernels | {shared_mamba:.2f} "
        f"| {shared_peer:.2f} |",
        "",
        f"Measured ratio ({peer} / {mamba}): "
        f"{peer_row['total'] / mamba_row['total']:.2f}; with scan and Mamba "
        f"convolution free: {result['free_mixer_ratio']:.2f}.",
        "",
    ]
    for model, rows in result.get("top_kernels", {}).items():
        lines += [
            f"{model}'s longest kernels:",
            "",
            "| kernel | category | ms per step | launches per step |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{row['kernel']}` | {row['category']} | {row['ms']:.2f} "
            f"| {row['launches']:g} |"
            for row in rows
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="asr", choices=TASK_NAMES)
    parser.add_argument("--seconds", type=float, nargs="+", default=[40, 320])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16"]
    )
    parser.add_argument("--mode", default="train", choices=["train", "infer"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="folder for the JSON and markdown")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("kernel_breakdown needs an NVIDIA GPU (torch.cuda)")
    batch = args.batch or (8 if args.task == "asr" else 1)
    results = []
    for seconds in args.seconds:
        result = breakdown(
            args.task,
            seconds,
            batch,
            getattr(torch, args.dtype),
            args.mode,
            args.repeats,
        )
        print(markdown(result), flush=True)
        results.append(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "kernel_breakdown.json", json.dumps(results, indent=1)
        )
        atomic_write_text(
            out / "kernel_breakdown.md", "\n".join(map(markdown, results))
        )


if __name__ == "__main__":
    main()
