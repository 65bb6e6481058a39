"""Conformer vs ConMamba (vs ConMamba + Mamba decoder) trained for the same
wall-clock budget on the espeak-ng mini LibriSpeech corpus.

Builds the corpus (a few hundred utterances, unseen speakers in dev/test),
then runs the S2S LibriSpeech recipe once per model with the paper's
"small" architecture, a small SentencePiece vocabulary and a training
budget in minutes (epochs stop at the first epoch boundary past the
budget), decodes test-clean with joint CTC/attention beam search and
reports WER / CER (and steps, epochs, parameters). Run on a GPU::

    python -m speechbrain_mamba.benchmarks.asr_train_compare \\
        --out results/asr_compare --budget_min 8 --device cuda:0

Outputs ``OUT/summary.json`` and ``OUT/summary.md`` (and every run's recipe
folder, with its train log and WER files). The numbers are whatever the run
measures; nothing is assumed.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[2]
S2S_HPARAMS = REPO / "recipes" / "LibriSpeech" / "ASR" / "S2S" / "hparams"
MODELS = ("conformer_small", "conmamba_small", "conmambamamba_small")


def _error_rate(path: Path) -> Optional[float]:
    if not path.is_file():
        return None
    match = re.search(r"%WER ([\d.]+)", path.read_text())
    return float(match.group(1)) if match else None


def _train_stats(log: Path) -> Dict[str, Optional[float]]:
    steps = epochs = None
    if log.is_file():
        for line in log.read_text().splitlines():
            match = re.search(r"epoch: (\d+),.*steps: (\d+)", line)
            if match:
                epochs, steps = int(match.group(1)), int(match.group(2))
    return {"epochs": epochs, "steps": steps}


def recipe_overrides(
    args: argparse.Namespace, model: str, out: Path
) -> List[str]:
    """Command-line overrides of the S2S recipe for one comparison run."""
    values = {
        "data_folder": args.corpus,
        "output_folder": out,
        "train_splits": "[train-clean-100]",
        "dev_splits": "[dev-clean]",
        "test_splits": "[test-clean]",
        "test_csv": f"[{out}/test-clean.csv]",
        "number_of_epochs": 100000,
        "output_neurons": args.vocab,
        "batch_size": args.batch_size,
        "dynamic_batching": False,
        "num_workers": args.num_workers,
        "n_warmup_steps": args.warmup,
        "lr_adam": args.lr,
        "precision": args.precision,
        "valid_search_interval": 100000,  # no beam search while training
        "avg_checkpoints": args.avg_checkpoints,
        "ckpt_interval_minutes": 0,
        "test_beam_size": args.beam_size,
        "seed": args.seed,
        "training_budget_s": args.budget_min * 60.0,
    }
    if args.smoke:  # a dry run of the pipeline with tiny models
        values.update(
            d_model=16,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            d_ffn=32,
            max_decode_ratio=0.3,
        )
        if "mamba" in model:
            values["d_state"] = 4
    return [
        str(S2S_HPARAMS / f"{model}.yaml"),
        f"--device={args.device}",
    ] + [f"--{key}={value}" for key, value in values.items()]


def run_model(args: argparse.Namespace, model: str) -> Dict[str, object]:
    """Trains and tests one model; returns its metrics."""
    from speechbrain_mamba.asr.recipe import run_recipe

    out = Path(args.out) / model
    start = time.monotonic()
    run_recipe(recipe_overrides(args, model, out), "s2s")
    total = time.monotonic() - start
    return {
        "model": model,
        "WER": _error_rate(out / "wer_test-clean.txt"),
        "CER": _error_rate(out / "cer_test-clean.txt"),
        **_train_stats(out / "train_log.txt"),
        "budget_min": args.budget_min,
        "total_s": round(total, 1),
    }


def _write_summary(results: List[Dict[str, object]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "summary.json")
    lines = [
        "| model | test WER % | test CER % | epochs | steps | run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['WER']} | {r['CER']} | {r['epochs']} | "
            f"{r['steps']} | {r['total_s']} |"
        )
    tmp = out / "summary.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "summary.md")
    print("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/asr_compare")
    parser.add_argument("--corpus", default=None, help="existing corpus")
    parser.add_argument("--num_utterances", type=int, default=400)
    parser.add_argument("--budget_min", type=float, default=8.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--vocab", type=int, default=120)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--avg_checkpoints", type=int, default=3)
    parser.add_argument("--beam_size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7775)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models (pipeline check)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for model in args.models:
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; choose from {MODELS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; pass --device cpu")

    from speechbrain_mamba.data.mini_corpus import build_librispeech

    if args.corpus is None:
        args.corpus = str(
            build_librispeech(
                Path(args.out) / "mini_librispeech",
                seed=0,
                num_utterances=args.num_utterances,
            )
        )
    results = []
    for model in args.models:
        results.append(run_model(args, model))
        _write_summary(results, Path(args.out))


if __name__ == "__main__":
    main()
