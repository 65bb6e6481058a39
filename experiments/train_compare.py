"""Models of one recipe trained for the same wall-clock budget on a mini
corpus (GPU experiment):

- ``--task separation``: Mamba-TasNet vs SepFormer (any hparams file of
  ``recipes/WSJ0Mix/separation``) on the mini WSJ0-2mix corpus; each model
  trains for ``--budget-minutes`` (the recipe's ``train_time_budget_s``),
  then is validated on the whole cv split (SI-SNRi of every epoch).
- ``--task asr``: Conformer vs ConMamba (vs ConMamba + Mamba decoder), the
  paper's "small" S2S recipes of ``recipes/LibriSpeech/ASR/S2S``, a small
  SentencePiece vocabulary, on the espeak-ng mini LibriSpeech corpus; after
  the budget, test-clean is decoded with joint CTC/attention beam search
  (WER / CER).

Both models of a task see the same data, batch size, learning rate and
precision. Each model's record goes to ``<out>/<model>/compare.json``;
``--report`` prints the table of all models run so far, so models can be
run by separate commands (each under a 10-minute limit). Run from the
repository root::

    # 1. corpus (cached: a second call returns at once)
    python experiments/train_compare.py --task separation --out OUT \\
        --build-only
    # 2. one command per model, same budget
    python experiments/train_compare.py --task separation --out OUT \\
        --models mamba_tasnet_S --budget-minutes 7
    python experiments/train_compare.py --task separation --out OUT \\
        --models sepformer --budget-minutes 7
    # 3. table
    python experiments/train_compare.py --task separation --out OUT --report

Notes: the Mamba-TasNet recipe warms the learning rate up linearly (here
over ``--warmup-steps``, instead of the paper's 20 000 that a short run
would never leave) and its cosine decay spans the recipe's
``number_of_epochs`` (set very large here, so the rate stays near its peak);
SepFormer's recipe uses a constant rate until epoch 85. The numbers are
whatever the run measures; nothing is assumed.

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

from jobs import REPO

#: Recipe hparams folder, default models, batch size and warm-up per task.
TASKS = {
    "separation": {
        "hparams": REPO / "recipes" / "WSJ0Mix" / "separation" / "hparams",
        "models": ["mamba_tasnet_S"],
        "batch_size": 1,
        "warmup_steps": 500,
    },
    "asr": {
        "hparams": REPO / "recipes" / "LibriSpeech" / "ASR" / "S2S" / "hparams",
        "models": ["conformer_small", "conmamba_small", "conmambamamba_small"],
        "batch_size": 16,
        "warmup_steps": 400,
    },
}
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


def error_rate(path: Path) -> Optional[float]:
    """The ``%WER`` of a SpeechBrain WER / CER file (None if absent).

    Arguments
    ---------
    path : pathlib.Path
        ``wer_<set>.txt`` or ``cer_<set>.txt``.

    Returns
    -------
    float or None

    Example
    -------
    >>> path = Path(getfixture("tmpdir")) / "wer.txt"
    >>> _ = path.write_text("%WER 12.50 [ 5 / 40, 1 ins ]\\n")
    >>> error_rate(path), error_rate(path.parent / "none.txt")
    (12.5, None)
    """
    if not path.is_file():
        return None
    match = re.search(r"%WER ([\d.]+)", path.read_text())
    return float(match.group(1)) if match else None


def asr_overrides(args: argparse.Namespace, model: str, exp: Path) -> list[str]:
    """The S2S recipe command line of one ASR run.

    Arguments
    ---------
    args : argparse.Namespace
        Experiment options.
    model : str
        Recipe hparams name.
    exp : pathlib.Path
        The run's output folder.

    Returns
    -------
    list of str

    Example
    -------
    >>> ns = main(["--task", "asr", "--smoke", "--parse-only"])
    >>> argv = asr_overrides(ns, "conmamba_small", Path("/o"))
    >>> Path(argv[0]).name, "--d_state=4" in argv, "--batch_size=16" in argv
    ('conmamba_small.yaml', True, True)
    """
    values = {
        "data_folder": args.corpus,
        "output_folder": exp,
        "train_splits": "[train-clean-100]",
        "dev_splits": "[dev-clean]",
        "test_splits": "[test-clean]",
        "test_csv": f"[{exp}/test-clean.csv]",
        "number_of_epochs": 100000,
        "output_neurons": args.vocab,
        "batch_size": args.batch_size,
        "dynamic_batching": False,
        "num_workers": args.num_workers,
        "n_warmup_steps": args.warmup_steps,
        "lr_adam": args.lr,
        "precision": args.precision,
        "valid_search_interval": 100000,  # no beam search while training
        "avg_checkpoints": args.avg_checkpoints,
        "ckpt_interval_minutes": 0,
        "test_beam_size": args.beam_size,
        "seed": 7775,
        "train_time_budget_s": args.budget_minutes * 60.0,
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
        str(TASKS["asr"]["hparams"] / f"{model}.yaml"),
        f"--device={args.device}",
    ] + [f"--{key}={value}" for key, value in values.items()]


def _train_separation(args, model: str, exp: Path) -> dict:
    from speechbrain_mamba.separation.recipe import train_and_test

    hparams = TASKS["separation"]["hparams"] / f"{model}.yaml"
    overrides = {
        "data_folder": str(args.corpus),
        "output_folder": str(exp),
        "number_of_epochs": 100000,
        "train_time_budget_s": args.budget_minutes * 60.0,
        "save_audio": False,
        "train_dataloader_opts": {
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "shuffle": True,
        },
        "eval_dataloader_opts": {
            "batch_size": 1,
            "num_workers": args.num_workers,
        },
    }
    if "warmup_steps" in hparams.read_text(encoding="utf-8"):
        overrides["warmup_steps"] = int(args.warmup_steps)
    brain = train_and_test(
        hparams,
        overrides,
        {
            "device": args.device,
            "precision": args.precision,
            "noprogressbar": True,
        },
        test=False,
    )
    history = valid_history(exp / "train_log.txt")
    return {
        "params": sum(p.numel() for p in brain.modules.parameters()),
        "optimizer_steps": int(brain.optimizer_step),
        "epochs": len(history),
        "valid_si_snr_i_last": history[-1] if history else None,
        "valid_si_snr_i_best": max(history) if history else None,
        "valid_si_snr_i_history": history,
    }


def _train_asr(args, model: str, exp: Path) -> dict:
    from speechbrain_mamba.asr.recipe import run_recipe

    run_recipe(asr_overrides(args, model, exp), "s2s")
    epochs = steps = None
    log = exp / "train_log.txt"
    if log.is_file():
        for line in log.read_text().splitlines():
            match = re.search(r"epoch: (\d+),.*steps: (\d+)", line)
            if match:
                epochs, steps = int(match.group(1)), int(match.group(2))
    return {
        "optimizer_steps": steps,
        "epochs": epochs,
        "WER": error_rate(exp / "wer_test-clean.txt"),
        "CER": error_rate(exp / "cer_test-clean.txt"),
    }


def run_model(args: argparse.Namespace, model: str) -> dict:
    """Trains one model for the budget (and tests it, ASR); writes and
    returns its record.

    Arguments
    ---------
    args : argparse.Namespace
        Experiment options (``task``, ``out``, ``corpus``, ...).
    model : str
        Recipe hparams name.

    Returns
    -------
    dict
        The record (also in ``<out>/<model>/compare.json``).
    """
    import torch

    from speechbrain_mamba.utils.atomic import atomic_write_text

    hparams = TASKS[args.task]["hparams"] / f"{model}.yaml"
    if not hparams.is_file():
        raise FileNotFoundError(f"no recipe hparams {hparams}")
    exp = Path(args.out) / model
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    train = _train_separation if args.task == "separation" else _train_asr
    metrics = train(args, model, exp)
    record = {
        "task": args.task,
        "model": model,
        "budget_s": args.budget_minutes * 60.0,
        "wall_s": round(time.time() - start, 1),
        **metrics,
        "device": args.device,
        "precision": args.precision,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "peak_gpu_mem_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if cuda
            else None
        ),
    }
    atomic_write_text(exp / "compare.json", json.dumps(record, indent=2))
    return record


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(out: Path) -> str:
    """Markdown table of the models run so far.

    Arguments
    ---------
    out : pathlib.Path
        Experiment output folder.

    Returns
    -------
    str
        The table.

    Example
    -------
    >>> out = Path(getfixture("tmpdir"))
    >>> (out / "m").mkdir()
    >>> _ = (out / "m" / "compare.json").write_text(json.dumps({
    ...     "task": "asr", "model": "m", "budget_s": 60.0, "wall_s": 70.0,
    ...     "optimizer_steps": 9, "epochs": 2, "WER": 50.0, "CER": None}))
    >>> report(out).splitlines()[-1]
    '| m | 60 | 9 | 2 | 70 | 50.00 | n/a |'
    """
    records = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(out.glob("*/compare.json"))
    ]
    if records and records[0].get("task") == "asr":
        head = "| model | budget (s) | steps | epochs | run (s) | test WER % "
        head += "| test CER % |"
        keys = ("WER", "CER")
    else:
        head = "| model | budget (s) | steps | epochs | run (s) | valid "
        head += "SI-SNRi last (dB) | best (dB) |"
        keys = ("valid_si_snr_i_last", "valid_si_snr_i_best")
    lines = [head, "|" + " --- |" * 7]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['budget_s']:.0f} | {r['optimizer_steps']} "
            f"| {r['epochs']} | {r['wall_s']:.0f} | "
            + " | ".join(_fmt(r.get(key)) for key in keys)
            + " |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None):
    """Command-line entry point (see the module docstring).

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int or argparse.Namespace
        Exit status (the parsed options with ``--parse-only``).
    """
    parser = argparse.ArgumentParser(prog="python experiments/train_compare.py")
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--out", default=None, help="results/<task>_compare")
    parser.add_argument("--corpus", default=None, help="existing corpus")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--num-utterances", type=int, default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--vocab", type=int, default=120, help="asr")
    parser.add_argument("--lr", type=float, default=0.001, help="asr")
    parser.add_argument("--avg-checkpoints", type=int, default=3, help="asr")
    parser.add_argument("--beam-size", type=int, default=10, help="asr")
    parser.add_argument("--smoke", action="store_true", help="asr: tiny")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--parse-only", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    sep = args.task == "separation"
    task = TASKS[args.task]
    defaults = {
        "out": f"results/{args.task}_compare",
        "models": task["models"],
        "budget_minutes": 7.0 if sep else 8.0,
        "num_utterances": 1400 if sep else 400,
        "precision": "bf16" if sep else "fp32",
        "batch_size": task["batch_size"],
        "warmup_steps": task["warmup_steps"],
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.parse_only:
        return args
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out).resolve()
    args.out = str(out)
    if args.report:
        print(report(out))
        return 0
    from speechbrain_mamba.data import mini_corpus

    if args.corpus is None:
        if sep:
            corpus = mini_corpus.build_wsj0_2mix(
                out / "corpus" / "wsj0-2mix",
                seed=args.seed,
                num_utterances=args.num_utterances,
            )
        else:
            corpus = mini_corpus.build_librispeech(
                out / "mini_librispeech",
                seed=args.seed,
                num_utterances=args.num_utterances,
            )
        args.corpus = str(corpus)
    if args.build_only:
        print(f"corpus ready: {args.corpus}")
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; pass --device cpu")
    for model in args.models:
        record = run_model(args, model)
        print(json.dumps({k: v for k, v in record.items() if "hist" not in k}))
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
