"""Mamba-TasNet vs SepFormer: validation SI-SNRi after the same wall-clock
training budget on the mini WSJ0-2mix corpus (GPU benchmark).

Both models are trained with the WSJ0Mix recipe of this repository
(``recipes/WSJ0Mix/separation/hparams/<model>.yaml``): same data, batch size,
learning rate, precision, speed perturbation and loss; each for
``--budget-minutes`` of training (the recipe's ``train_time_budget_s``),
after which it is validated on the whole cv split. The result of each model
is written to ``<out>/<model>/compare.json``; ``--report`` prints the table
of all models run so far. Models can be run in separate commands (each
command stays under a 10-minute limit)::

    # 1. corpus (cached: a second call returns at once)
    python -m speechbrain_mamba.benchmarks.sep_train_compare --out OUT \\
        --build-only
    # 2. one command per model, same budget
    python -m speechbrain_mamba.benchmarks.sep_train_compare --out OUT \\
        --models mamba_tasnet_S --budget-minutes 7
    python -m speechbrain_mamba.benchmarks.sep_train_compare --out OUT \\
        --models sepformer --budget-minutes 7
    # 3. table
    python -m speechbrain_mamba.benchmarks.sep_train_compare --out OUT \\
        --report

Notes: the Mamba-TasNet recipe warms the learning rate up linearly (here
over ``--warmup-steps``, default 500, instead of the paper's 20 000 that a
short run would never leave) and its cosine decay spans the recipe's
``number_of_epochs`` (set very large here, so the rate stays near its peak);
SepFormer's recipe uses a constant rate until epoch 85. Run from the
repository root (the recipe YAML files are read from ``recipes/``).

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
HPARAMS = REPO / "recipes" / "WSJ0Mix" / "separation" / "hparams"
_VALID = re.compile(r"valid si-snr_i: (-?[0-9.e+-]+)")


def valid_history(train_log: Path) -> list[float]:
    """Validation SI-SNRi of every epoch, read from a recipe train log.

    Arguments
    ---------
    train_log : pathlib.Path
        ``train_log.txt`` of an experiment.

    Returns
    -------
    list of float
        One value per validated epoch.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> log = tmpdir / "train_log.txt"
    >>> _ = log.write_text(
    ...     "epoch: 1, lr: 1e-4 - train loss: 1 - valid loss: 2, valid "
    ...     "si-snr: 1.0, valid si-snr_i: 3.50e+00\\n", encoding="utf-8")
    >>> valid_history(Path(log))
    [3.5]
    """
    if not train_log.is_file():
        return []
    text = train_log.read_text(encoding="utf-8")
    return [float(m.group(1)) for m in _VALID.finditer(text)]


def run_model(
    name: str,
    corpus: Path,
    out: Path,
    budget_s: float,
    device: str,
    precision: str,
    warmup_steps: int,
    num_workers: int,
) -> dict:
    """Trains one recipe model for ``budget_s`` seconds and validates it.

    Arguments
    ---------
    name : str
        Recipe hparams name (``mamba_tasnet_S``, ``sepformer``, ...).
    corpus : pathlib.Path
        Mini WSJ0-2mix folder.
    out : pathlib.Path
        Benchmark output folder.
    budget_s : float
        Training wall-clock budget in seconds.
    device : str
        ``cuda`` or ``cpu``.
    precision : str
        ``fp32``, ``bf16`` or ``fp16``.
    warmup_steps : int
        Warm-up of the Mamba recipes' schedule.
    num_workers : int
        Data-loading workers.

    Returns
    -------
    dict
        Result record (also written to ``<out>/<name>/compare.json``).
    """
    import torch

    from speechbrain_mamba.separation.io import atomic_write_text
    from speechbrain_mamba.separation.recipe import train_and_test

    hparams = HPARAMS / f"{name}.yaml"
    if not hparams.is_file():
        raise FileNotFoundError(f"no recipe hparams {hparams}")
    exp = out / name
    overrides = {
        "data_folder": str(corpus),
        "output_folder": str(exp),
        "number_of_epochs": 100000,
        "train_time_budget_s": float(budget_s),
        "save_audio": False,
        "train_dataloader_opts": {
            "batch_size": 1,
            "num_workers": num_workers,
            "shuffle": True,
        },
        "eval_dataloader_opts": {"batch_size": 1, "num_workers": num_workers},
    }
    if "warmup_steps" in hparams.read_text(encoding="utf-8"):
        overrides["warmup_steps"] = int(warmup_steps)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    brain = train_and_test(
        hparams,
        overrides,
        {"device": device, "precision": precision, "noprogressbar": True},
        test=False,
    )
    history = valid_history(exp / "train_log.txt")
    record = {
        "model": name,
        "params": sum(p.numel() for p in brain.modules.parameters()),
        "budget_s": float(budget_s),
        "wall_s": round(time.time() - start, 1),
        "optimizer_steps": int(brain.optimizer_step),
        "epochs": len(history),
        "valid_si_snr_i_last": history[-1] if history else None,
        "valid_si_snr_i_best": max(history) if history else None,
        "valid_si_snr_i_history": history,
        "device": device,
        "precision": precision,
        "gpu": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else None,
        "peak_gpu_mem_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.startswith("cuda")
            else None
        ),
    }
    atomic_write_text(exp / "compare.json", json.dumps(record, indent=2))
    return record


def report(out: Path) -> str:
    """Markdown table of the models run so far.

    Arguments
    ---------
    out : pathlib.Path
        Benchmark output folder.

    Returns
    -------
    str
        The table.
    """
    lines = [
        "| model | params (M) | budget (s) | steps | epochs | "
        "valid SI-SNRi last (dB) | best (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(out.glob("*/compare.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        last, best = r["valid_si_snr_i_last"], r["valid_si_snr_i_best"]
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f} | {r['budget_s']:.0f} "
            f"| {r['optimizer_steps']} | {r['epochs']} | "
            f"{'n/a' if last is None else f'{last:.2f}'} | "
            f"{'n/a' if best is None else f'{best:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring).

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.benchmarks.sep_train_compare"
    )
    parser.add_argument("--out", default="results/sep_train_compare")
    parser.add_argument("--models", nargs="+", default=["mamba_tasnet_S"])
    parser.add_argument("--budget-minutes", type=float, default=7.0)
    parser.add_argument("--num-utterances", type=int, default=1400)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out).resolve()
    if args.report:
        print(report(out))
        return 0

    from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix

    corpus = build_wsj0_2mix(
        out / "corpus" / "wsj0-2mix",
        seed=args.seed,
        num_utterances=args.num_utterances,
    )
    if args.build_only:
        print(f"corpus ready: {corpus}")
        return 0
    for name in args.models:
        record = run_model(
            name,
            corpus,
            out,
            args.budget_minutes * 60,
            args.device,
            args.precision,
            args.warmup_steps,
            args.num_workers,
        )
        print(
            json.dumps({k: v for k, v in record.items() if "history" not in k})
        )
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
