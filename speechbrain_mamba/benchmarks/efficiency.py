"""The efficiency study of Speech Slytherin: time and memory against input
duration, Mamba models side by side with their SpeechBrain peers.

For each task pair (separation: Mamba-TasNet vs SepFormer; recognition:
ConMamba vs Conformer encoders) it measures, in one run, a training step
(forward + backward) and inference (no-grad forward) for every duration and
dtype: median time over several repetitions after warm-up (CUDA
synchronised), peak CUDA memory, OOM recorded as such. It writes

- ``results.csv`` / ``results.jsonl``: one row per measurement,
- ``ratios.csv``: peer / Mamba time and memory ratios (> 1: Mamba better),
- ``thresholds.json``: the shortest duration from which Mamba wins,
- ``efficiency.png``: time and memory against duration, one column per task.

Usage::

    python -m speechbrain_mamba.benchmarks.efficiency --out results/eff \\
        [--tasks separation asr] [--seconds 1 2 4 8 16 32 60] \\
        [--modes train infer] [--dtypes float32 bfloat16] [--device cuda]

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

from speechbrain_mamba.benchmarks.models import TASKS
from speechbrain_mamba.benchmarks.timing import measure

DEFAULT_SECONDS = {
    "separation": [1, 2, 4, 8, 16, 32, 60],
    "asr": [5, 10, 20, 40, 80, 160, 320],
}
DEFAULT_BATCH = {"separation": 1, "asr": 8}


def make_step(model, x, mode, dtype, device, for_graph=False):
    """The callable that is timed: a training step or an inference call."""
    model.train(mode == "train")
    autocast = torch.autocast(
        torch.device(device).type,
        dtype=dtype,
        enabled=dtype != torch.float32,
        cache_enabled=not for_graph,
    )

    def step():
        if mode == "train":
            with autocast:
                y = model(x)
            y.float().pow(2).mean().backward()
            if not for_graph:
                model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                model(x)

    return step


def capture_graph(step):
    """Records step() in a CUDA graph; returns its replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def measure_model(model, x, mode, dtype, device, repeats, graphed=False):
    """Times one model on one input; returns the measure() dict (and
    whether a CUDA graph was used)."""
    used_graph = False
    step = make_step(model, x, mode, dtype, device)
    capture_peak = None
    if graphed and torch.device(device).type == "cuda":
        try:
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            step = capture_graph(make_step(model, x, mode, dtype, device, True))
            capture_peak = torch.cuda.max_memory_allocated(device) / 2**20
            used_graph = True
        except (RuntimeError, torch.OutOfMemoryError) as err:
            print(f"CUDA graph capture failed ({err}); timing eagerly")
            torch.cuda.synchronize()
            step = make_step(model, x, mode, dtype, device)
    result = measure(step, device=device, repeats=repeats, warmup=1)
    if capture_peak is not None and result["peak_mib"] is not None:
        # the graph's memory pool was allocated while capturing
        result["peak_mib"] = max(result["peak_mib"], capture_peak)
    result["cuda_graph"] = used_graph
    return result


def enable_checkpointing(model) -> int:
    """Turns on gradient checkpointing in every MambaStack of a model."""
    from speechbrain_mamba.nnet import MambaStack

    stacks = [m for m in model.modules() if isinstance(m, MambaStack)]
    for stack in stacks:
        stack.gradient_checkpointing = True
    return len(stacks)


def thresholds(rows: List[Dict]) -> Dict[str, Optional[float]]:
    """Shortest duration from which the Mamba model stays better.

    Arguments
    ---------
    rows : list of dict
        Ratio rows (task, mode, dtype, seconds, time_ratio, memory_ratio).

    Returns
    -------
    dict
        "task/mode/dtype/metric" -> seconds (None if never).

    Example
    -------
    >>> rows = [dict(task="t", mode="m", dtype="d", seconds=s, time_ratio=r,
    ...              memory_ratio=None) for s, r in [(1, .5), (2, 1.2), (4, 2)]]
    >>> thresholds(rows)["t/m/d/time"]
    2
    """
    out = {}
    keys = {(r["task"], r["mode"], r["dtype"]) for r in rows}
    for task, mode, dtype in sorted(keys):
        series = sorted(
            (
                r
                for r in rows
                if (r["task"], r["mode"], r["dtype"]) == (task, mode, dtype)
            ),
            key=lambda r: r["seconds"],
        )
        for metric in ("time", "memory"):
            values = [(r["seconds"], r[f"{metric}_ratio"]) for r in series]
            values = [(s, v) for s, v in values if v is not None]
            best = None
            for seconds, ratio in reversed(values):
                if ratio < 1:
                    break
                best = seconds
            out[f"{task}/{mode}/{dtype}/{metric}"] = best
    return out


def ratio_rows(rows: List[Dict]) -> List[Dict]:
    """Peer / Mamba ratios for every (task, seconds, mode, dtype)."""
    index = {
        (r["task"], r["role"], r["seconds"], r["mode"], r["dtype"]): r
        for r in rows
    }
    out = []
    for (task, role, seconds, mode, dtype), mamba in index.items():
        if role != "mamba":
            continue
        peer = index.get((task, "peer", seconds, mode, dtype))
        if peer is None:
            continue

        def ratio(key, mamba=mamba, peer=peer):
            if peer["oom"] and not mamba["oom"]:
                return float("inf")
            if mamba[key] and peer[key]:
                return peer[key] / mamba[key]
            return None

        out.append(
            {
                "task": task,
                "seconds": seconds,
                "mode": mode,
                "dtype": dtype,
                "mamba": mamba["model"],
                "peer": peer["model"],
                "time_ratio": ratio("seconds_median"),
                "memory_ratio": ratio("peak_mib"),
            }
        )
    return sorted(
        out, key=lambda r: (r["task"], r["mode"], r["dtype"], r["seconds"])
    )


def plot(rows: List[Dict], path: Path) -> None:
    """Time and memory against duration, one column per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(
        2, len(tasks), figsize=(5 * len(tasks), 8), squeeze=False
    )
    styles = {"train": "-", "infer": "--"}
    for col, task in enumerate(tasks):
        for (metric, label), ax in zip(
            [("seconds_median", "time (s)"), ("peak_mib", "peak memory (MiB)")],
            axes[:, col],
        ):
            combos = sorted(
                {
                    (r["model"], r["mode"], r["dtype"])
                    for r in rows
                    if r["task"] == task
                }
            )
            for model, mode, dtype in combos:
                series = sorted(
                    (
                        r
                        for r in rows
                        if (r["task"], r["model"], r["mode"], r["dtype"])
                        == (task, model, mode, dtype)
                        and r[metric]
                    ),
                    key=lambda r: r["seconds"],
                )
                if series:
                    ax.plot(
                        [r["seconds"] for r in series],
                        [r[metric] for r in series],
                        styles.get(mode, "-"),
                        marker="o",
                        label=f"{model} {mode} {dtype}",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("input duration (s)")
            ax.set_ylabel(label)
            ax.set_title(task)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_csv(rows: List[Dict], path: Path) -> None:
    """Writes rows to CSV atomically."""
    if not rows:
        return
    tmp = path.with_suffix(".tmp")
    fields = list(rows[0].keys())
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def run(args) -> Dict:
    """Runs the study and writes its outputs; returns the thresholds."""
    from tqdm import tqdm

    device = args.device
    dtypes = [getattr(torch, d) for d in args.dtypes]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for task in args.tasks:
        seconds = args.seconds or DEFAULT_SECONDS[task]
        for role in ("mamba", "peer"):
            for s in seconds:
                for mode in args.modes:
                    for dtype in dtypes:
                        jobs.append((task, role, s, mode, dtype))
    rows = []
    models = {}
    jsonl = open(out / "results.jsonl", "w")
    for task, role, seconds, mode, dtype in tqdm(jobs, desc="efficiency"):
        mamba_builder, peer_builder, make_input, _ = TASKS[task]
        if (task, role) not in models:
            models.clear()
            if device == "cuda":
                torch.cuda.empty_cache()
            builder = mamba_builder if role == "mamba" else peer_builder
            torch.manual_seed(0)
            models[(task, role)] = builder().to(device)
            if role == "mamba" and args.checkpointing:
                enable_checkpointing(models[(task, role)])
        model = models[(task, role)]
        batch = args.batch or DEFAULT_BATCH[task]
        result = measure_model(
            model,
            make_input(seconds, batch, device),
            mode,
            dtype,
            device,
            args.repeats,
            graphed=args.cuda_graphs == "both"
            or (args.cuda_graphs == "mamba" and role == "mamba"),
        )
        row = {
            "task": task,
            "role": role,
            "model": type(model).__name__
            if not hasattr(model, "masknet")
            else f"{type(model.masknet).__name__}",
            "params_M": round(
                sum(p.numel() for p in model.parameters()) / 1e6, 2
            ),
            "seconds": seconds,
            "batch": batch,
            "mode": mode,
            "dtype": str(dtype).replace("torch.", ""),
            "device": device,
            "seconds_median": result["seconds"],
            "peak_mib": result["peak_mib"],
            "oom": result["oom"],
            "cuda_graph": result["cuda_graph"],
            "checkpointing": bool(args.checkpointing and role == "mamba"),
        }
        if task == "asr":
            row["model"] = type(model.encoder).__name__
        rows.append(row)
        jsonl.write(json.dumps(row) + "\n")
        jsonl.flush()
    jsonl.close()
    write_csv(rows, out / "results.csv")
    ratios = ratio_rows(rows)
    write_csv(ratios, out / "ratios.csv")
    found = thresholds(ratios)
    with open(out / "thresholds.json", "w") as f:
        json.dump(found, f, indent=1)
    plot(rows, out / "efficiency.png")
    print("| task | mode | dtype | seconds | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|")
    for r in ratios:
        mem = r["memory_ratio"]
        tr = r["time_ratio"]
        print(
            f"| {r['task']} | {r['mode']} | {r['dtype']} | {r['seconds']} | "
            f"{'-' if tr is None else f'{tr:.2f}'} | "
            f"{'-' if mem is None else f'{mem:.2f}'} |"
        )
    print(json.dumps(found, indent=1))
    return found


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/efficiency")
    parser.add_argument(
        "--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS)
    )
    parser.add_argument("--seconds", type=float, nargs="+")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["train", "infer"],
        choices=["train", "infer"],
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--batch", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--cuda-graphs",
        choices=["none", "mamba", "both"],
        default="none",
        help="replay each step from a CUDA graph (static shapes)",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="gradient checkpointing in the Mamba stacks (less memory)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
