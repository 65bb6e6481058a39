"""Convergence of separation recipes against wall-clock time (GPU experiment).

Trains models of the WSJ0Mix recipe of this repository (``recipes/WSJ0Mix/
separation``) on a mini WSJ0-2mix corpus built with
``python -m speechbrain_mamba.data.mini_corpus wsj0-2mix`` and moved to the
GPU machine as FLAC sources plus mixing lists, each for the same wall-clock
budget, with dynamic mixing from the training speakers' sources, speed
perturbation and the recipe's random gains. While a model trains, its
validation SI-SNRi is read from the recipe's ``train_log.txt`` and stamped
with the elapsed time; after the budget the recipe's test stage scores the
held-out mixtures of unseen speakers (SI-SNRi, SDRi, PESQ, STOI).

Writes to ``--out``: ``curves.csv`` (model, epoch, seconds, validation
SI-SNRi), ``summary.json`` (the command, settings and test metrics of each
model), ``curves.png``, and ``<model>.pt`` (the best checkpoint's encoder /
mask net / decoder weights, in ``--weights-dtype``, for export).

Usage (from the repository root; models run one after the other, or
together with ``--parallel``)::

    python experiments/sep_convergence.py --corpus-tar corpus.tar \\
        --work /tmp/conv --out OUT --models mamba_tasnet_S \\
        --budget-minutes 7.5

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import json
import os
import re
import sys
import tarfile
import time
from pathlib import Path

from jobs import REPO, Job, log_tail, run_jobs

RECIPE = REPO / "recipes" / "WSJ0Mix" / "separation"
_EPOCH = re.compile(
    r"epoch: (\d+).*?train loss: (-?[0-9.e+-]+).*?"
    r"valid si-snr_i: (-?[0-9.e+-]+)"
)

#: Recipe overrides shared by every model (same data, batch, crops, budget).
COMMON = {
    "dynamic_mixing": True,
    "use_speedperturb": True,
    "limit_training_signal_len": True,
    "training_signal_len": 32000,
    "precision": "bf16",
    "n_audio_to_save": 0,
    "number_of_epochs": 100000,
}


def read_curve(train_log: Path) -> list:
    """``(epoch, train loss, valid SI-SNRi)`` of every logged epoch.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "train_log.txt"
    >>> _ = log.write_text("epoch: 2, lr: 1e-3 - train loss: -3.5e+00 - "
    ...     "valid loss: -4.0, valid si-snr: 4.0, valid si-snr_i: 4.2e+00\\n")
    >>> read_curve(log)
    [(2, -3.5, 4.2)]
    """
    if not train_log.is_file():
        return []
    text = train_log.read_text(encoding="utf-8")
    return [
        (int(m.group(1)), float(m.group(2)), float(m.group(3)))
        for m in _EPOCH.finditer(text)
    ]


def prepare_corpus(corpus_tar: Path, work: Path) -> Path:
    """Unpacks the corpus (FLAC sources, lists) and mixes it again."""
    from speechbrain_mamba.data.mini_corpus import remix_wsj0_2mix

    root = work / "wsj0-2mix"
    if not (root / "wav8k").is_dir():
        with tarfile.open(corpus_tar) as tar:
            tar.extractall(work, filter="data")
        start = time.time()
        n = remix_wsj0_2mix(root, num_workers=16)
        print(f"[corpus] {n} mixtures in {time.time() - start:.0f} s")
    return root


def overrides(model: str, args, root: Path, work: Path) -> dict:
    """Recipe overrides of one model."""
    values = dict(COMMON)
    values.update(
        data_folder=str(root),
        base_folder_dm=str(root / "wsj0" / "si_tr_s"),
        output_folder=str(work / model),
        train_time_budget_s=args.budget_minutes * 60,
        train_limit=args.epoch_mixtures,
        valid_limit=args.valid_mixtures,
        seed=args.seed,
        compute_pesq=args.pesq,
        batch_size=args.batch,
    )
    if model.startswith(("mamba", "dpmamba")):
        values.update(lr=args.mamba_lr, warmup_steps=args.warmup_steps)
        if args.total_steps:
            values["number_of_epochs"] = max(
                1, args.total_steps * args.batch // args.epoch_mixtures
            )
    return values


def recipe_job(model: str, values: dict, work: Path, device: str) -> Job:
    """The recipe command of one model; output goes to ``<model>.log``."""
    cmd = [
        sys.executable,
        str(RECIPE / "train.py"),
        str(RECIPE / "hparams" / f"{model}.yaml"),
        "--device",
        device,
        "--noprogressbar",
    ]
    for key, value in values.items():
        cmd += [f"--{key}", str(value)]
    return Job(cmd, work / f"{model}.log", 24 * 3600, cwd=REPO, name=model)


def export_weights(model: str, work: Path, out: Path, dtype: str) -> None:
    """Saves the best checkpoint's model weights in one file."""
    import torch

    from speechbrain_mamba.separation.export import best_checkpoint

    ckpt = best_checkpoint(work / model / "save")
    cast = getattr(torch, dtype)
    weights = {}
    for part in ("encoder", "masknet", "decoder"):
        state = torch.load(ckpt / f"{part}.ckpt", map_location="cpu")
        weights[part] = {
            k: v.to(cast) if v.is_floating_point() else v
            for k, v in state.items()
        }
    weights["checkpoint"] = ckpt.name
    torch.save(weights, out / f"{model}.pt")


def plot(rows: list, path: Path) -> None:
    """Validation SI-SNRi against training time, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == model]
        ax.plot(
            [r["seconds"] / 60 for r in pts],
            [r["valid_si_snri"] for r in pts],
            marker="o",
            ms=3,
            label=model,
        )
    ax.set_xlabel("training time (min), one H200, bf16")
    ax.set_ylabel("validation SI-SNRi (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-tar", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--budget-minutes", type=float, default=7.5)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--epoch-mixtures", type=int, default=1600)
    parser.add_argument("--valid-mixtures", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mamba-lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument(
        "--total-steps",
        type=int,
        default=0,
        help="Mamba cosine schedule length (0: stays near the peak rate)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--pesq", action="store_true")
    parser.add_argument("--weights-dtype", default="float16")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    root = prepare_corpus(args.corpus_tar, args.work)

    jobs = {
        m: recipe_job(
            m, overrides(m, args, root, args.work), args.work, args.device
        )
        for m in args.models
    }
    rows, seen = [], set()

    def record_curves() -> None:
        """Stamps each newly logged epoch with the time since its start."""
        for model, job in jobs.items():
            log = args.work / model / "train_log.txt"
            for epoch, loss, sisnri in read_curve(log):
                if job.started is None or (model, epoch) in seen:
                    continue
                seen.add((model, epoch))
                secs = round(time.time() - job.started, 1)
                rows.append(
                    dict(
                        model=model,
                        epoch=epoch,
                        seconds=secs,
                        train_loss=loss,
                        valid_si_snri=sisnri,
                    )
                )
                print(
                    f"[{model}] {secs:6.0f} s epoch {epoch} "
                    f"valid SI-SNRi {sisnri:.2f}",
                    flush=True,
                )

    for job in jobs.values():
        print("[run]", " ".join(job.cmd[1:]), flush=True)
    run_jobs(
        list(jobs.values()),
        parallel=args.parallel,
        poll_s=2.0,
        on_poll=record_curves,
    )
    for model, job in jobs.items():
        print(f"[{model}] exit {job.status} after {job.seconds} s", flush=True)
        if job.status != 0:
            print(log_tail(job.log), flush=True)

    summary = {"argv": sys.argv, "settings": vars(args) | {"common": COMMON}}
    for model in args.models:
        results = args.work / model / "test_results.csv"
        if results.is_file():
            with open(results, encoding="utf-8") as f:
                table = list(csv.DictReader(f))
            summary[model] = {
                "test": {k: v for k, v in table[-1].items()},
                "num_test": len(table) - 1,
                "wall_s": jobs[model].seconds,
            }
            export_weights(model, args.work, args.out, args.weights_dtype)
    with open(args.out / "curves.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str), encoding="utf-8"
    )
    if rows:
        plot(rows, args.out / "curves.png")
    print(json.dumps({m: summary.get(m) for m in args.models}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
