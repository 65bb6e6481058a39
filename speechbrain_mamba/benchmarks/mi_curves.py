"""Layer-wise mutual-information curves of Mamba and attention models
trained on the mini corpora, and a short Mamba SSL pretraining.

Tests the hypothesis of Zhang et al. ("Rethinking Mamba in speech processing
by self-supervised models"): models of *reconstruction* tasks (separation,
and HuBERT-style masked prediction) keep -- or recover in their last layers
-- the information of their input, so MI(input; layer) falls and then rises
again; models of *classification* tasks (CTC ASR) discard it, so the curve
keeps falling towards the output.

One command trains, side by side on one GPU and each for ``--budget_s``
seconds of training:

- ASR (CTC, characters, mini LibriSpeech): ConMamba vs Conformer
  (``recipes/LibriSpeech/ASR/CTC``);
- separation (mini WSJ0-2mix, 8 kHz): Mamba-TasNet vs the same TasNet with a
  Transformer mask network (``recipes/WSJ0Mix/separation``);
- SSL (HuBERT-style, MFCC k-means targets, mini LibriSpeech): BiMamba vs
  Transformer encoder (``recipes/LibriSpeech/self-supervised-learning``);

then estimates, per layer, MI(input; layer) (MINE, with a KSG cross-check on
PCA-reduced frames) and MI(layer; labels) (k-means pseudo-phone labels for
ASR and SSL, the first clean source for separation), and writes to ``--out``:

- ``mi_asr.png``, ``mi_separation.png``, ``mi_ssl.png`` (one curve per model),
- ``mi_all.csv`` (every layer of every model),
- ``summary.json`` / ``summary.md``: per model the training result (WER,
  SI-SNRi, masked-prediction accuracy vs chance), the curve shape (drop from
  the first layer to the minimum, recovery from the minimum to the last
  layer) and whether it matches the hypothesis.

Run on a GPU (about 10 minutes with the defaults; espeak-ng is needed only
when the corpora are not there yet -- build them on another machine with
``--stage corpora`` and copy the folder)::

    python -m speechbrain_mamba.benchmarks.mi_curves \\
        --corpora /tmp/mi/corpora --work /tmp/mi/work --out $OUT \\
        --budget_s 150 --device cuda

The numbers are whatever the run measures; nothing is assumed.

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ASR_RECIPE = REPO / "recipes" / "LibriSpeech" / "ASR" / "CTC"
SEP_RECIPE = REPO / "recipes" / "WSJ0Mix" / "separation"
SSL_RECIPE = REPO / "recipes" / "LibriSpeech" / "self-supervised-learning"
TASKS = ("asr", "separation", "ssl")

logger = logging.getLogger(__name__)

# Small models of similar size per pair (parameters printed in the logs).
ASR_COMMON = {
    "train_splits": "[train-clean-100]",
    "dev_splits": "[dev-clean]",
    "test_splits": "[test-clean]",
    "number_of_epochs": 10000,
    "batch_size": 16,
    "grad_accumulation_factor": 1,
    "num_workers": 2,
    "dynamic_batching": False,
    "d_model": 144,
    "nhead": 4,
    "num_encoder_layers": 8,
    "d_ffn": 576,
    "kernel_size": 15,
    "n_warmup_steps": 300,
    "avg_checkpoints": 1,
    "ckpt_interval_minutes": 0,
    "test_beam_search": "null",
}
ASR_MODELS = {
    "conmamba": ("conmamba_large.yaml", {"d_state": 16}),
    "conformer": ("conformer_large.yaml", {}),
}
SEP_COMMON = {
    "N_encoder_out": 128,
    "out_channels": 128,
    "batch_size": 4,
    "number_of_epochs": 10000,
    "lr": 0.001,
    "warmup_steps": 300,
    "limit_training_signal_len": True,
    "training_signal_len": 16000,
    "use_speedperturb": False,
    "dynamic_mixing": False,
    "save_audio": False,
    "compute_pesq": False,
    "compute_stoi": False,
    "threshold_byloss": False,
}
SEP_MODELS = {
    # 8 BiMamba blocks of width 128 vs 4 Transformer layers of width 128
    "mamba_tasnet": {"num_layers": 8},
    "transformer_tasnet": {"num_layers": 4},
}
TRANSFORMER_MASKNET = (
    (
        "MaskNet: !new:speechbrain_mamba.enhancement.transformer_masknet."
        "TransformerMaskNet\n"
    )
    + """    in_channels: !ref <N_encoder_out>
    out_channels: !ref <out_channels>
    num_layers: !ref <num_layers>
    num_spks: !ref <num_spks>
    nhead: 4
"""
)
SSL_COMMON = {
    "train_splits": "[train-clean-100]",
    "d_model": 256,
    "conv_channels": 256,
    "final_dim": 128,
    "d_ffn": 1024,
    "nhead": 4,
    "pos_kernel_size": 64,
    "num_clusters": 50,
    "kmeans_max_frames": 100000,
    "batch_size": 16,
    "max_samples": 64000,
    "number_of_epochs": 10000,
    "warmup_steps": 300,
    "decay_steps": 5000,
    "lr": 0.0005,
    "num_workers": 2,
    "ckpt_interval_minutes": 0,
}
SSL_MODELS = {
    # about 6.6 M (BiMamba) and 6.4 M (Transformer) encoder parameters
    "bimamba": ("pretrain_bimamba.yaml", {"num_layers": 8}),
    "transformer": ("pretrain_transformer.yaml", {"num_layers": 4}),
}


# ---------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------
def build_corpora(folder: Path, librispeech: int, wsj: int, seed: int = 0):
    """Builds (or finds) the mini LibriSpeech and WSJ0-2mix corpora."""
    from speechbrain_mamba.data.mini_corpus import (
        build_librispeech,
        build_wsj0_2mix,
    )

    folder.mkdir(parents=True, exist_ok=True)
    ls = build_librispeech(
        folder / "LibriSpeech", seed=seed, num_utterances=librispeech
    )
    wsj0 = build_wsj0_2mix(folder / "wsj0-2mix", seed=seed, num_utterances=wsj)
    return ls, wsj0


# ---------------------------------------------------------------------------
# Training runs (subprocesses, in parallel)
# ---------------------------------------------------------------------------
def _command(script: Path, hparams: Path, device: str, values: dict) -> list:
    return [
        sys.executable,
        str(script),
        str(hparams),
        f"--device={device}",
        "--noprogressbar",
    ] + [f"--{k}={v}" for k, v in values.items()]


def _transformer_sep_yaml(work: Path) -> Path:
    source = (SEP_RECIPE / "hparams" / "mamba_tasnet_XS.yaml").read_text()
    pattern = re.compile(r"^MaskNet: !new:.*?(?=^\S)", re.S | re.M)
    if not pattern.search(source):
        raise RuntimeError("no MaskNet entry in mamba_tasnet_XS.yaml")
    text = pattern.sub(TRANSFORMER_MASKNET + "\n", source, count=1)
    path = work / "transformer_tasnet.yaml"
    path.write_text(text)
    return path


#: ``--tiny``: very small models for a CPU smoke test of the pipeline.
TINY = {
    "asr": {
        "d_model": 32,
        "num_encoder_layers": 2,
        "d_ffn": 64,
        "num_workers": 0,
    },
    "separation": {"N_encoder_out": 32, "out_channels": 32},
    "ssl": {
        "d_model": 32,
        "conv_channels": 32,
        "final_dim": 16,
        "d_ffn": 64,
        "pos_kernel_size": 16,
        "num_clusters": 8,
        "kmeans_max_frames": 5000,
        "max_samples": 32000,
        "num_workers": 0,
    },
}
TINY_LAYERS = {
    "asr/conmamba": 2,
    "asr/conformer": 2,
    "separation/mamba_tasnet": 2,
    "separation/transformer_tasnet": 1,
    "ssl/bimamba": 2,
    "ssl/transformer": 1,
}


def training_jobs(
    tasks,
    corpora: Path,
    work: Path,
    device: str,
    budget_s: float,
    precision: str,
    tiny: bool = False,
) -> Dict[str, dict]:
    """The training commands of the selected tasks."""
    ls, wsj = corpora / "LibriSpeech", corpora / "wsj0-2mix"
    jobs = {}
    if "asr" in tasks:
        for name, (yaml, extra) in ASR_MODELS.items():
            out = work / "asr" / name
            values = {
                **ASR_COMMON,
                **extra,
                "data_folder": ls,
                "output_folder": out,
                "test_csv": f"[{out}/test-clean.csv]",
                "training_budget_s": budget_s,
                "precision": precision,
            }
            if tiny:
                values.update(TINY["asr"])
                values["num_encoder_layers"] = TINY_LAYERS[f"asr/{name}"]
            jobs[f"asr/{name}"] = {
                "task": "asr",
                "out": out,
                "cmd": _command(
                    ASR_RECIPE / "train.py",
                    ASR_RECIPE / "hparams" / yaml,
                    device,
                    values,
                ),
            }
    if "separation" in tasks:
        for name, extra in SEP_MODELS.items():
            out = work / "separation" / name
            yaml = SEP_RECIPE / "hparams" / "mamba_tasnet_XS.yaml"
            if name == "transformer_tasnet":
                (work / "separation").mkdir(parents=True, exist_ok=True)
                yaml = _transformer_sep_yaml(work / "separation")
            values = {
                **SEP_COMMON,
                **extra,
                "data_folder": wsj,
                "output_folder": out,
                "train_time_budget_s": budget_s,
                "precision": precision,
            }
            if tiny:
                values.update(TINY["separation"])
                values["num_layers"] = TINY_LAYERS[f"separation/{name}"]
                values["eval_dataloader_opts"] = (
                    "{batch_size: 1, num_workers: 0}"
                )
                values["train_dataloader_opts"] = (
                    "{batch_size: 4, num_workers: 0, shuffle: True}"
                )
            jobs[f"separation/{name}"] = {
                "task": "separation",
                "out": out,
                "cmd": _command(SEP_RECIPE / "train.py", yaml, device, values),
            }
    if "ssl" in tasks:
        for name, (yaml, extra) in SSL_MODELS.items():
            out = work / "ssl" / name
            values = {
                **SSL_COMMON,
                **extra,
                "data_folder": ls,
                "output_folder": out,
                "train_time_budget_s": budget_s,
                "precision": precision,
            }
            if tiny:
                values.update(TINY["ssl"])
                values["num_layers"] = TINY_LAYERS[f"ssl/{name}"]
            jobs[f"ssl/{name}"] = {
                "task": "ssl",
                "out": out,
                "cmd": _command(
                    SSL_RECIPE / "train.py",
                    SSL_RECIPE / "hparams" / yaml,
                    device,
                    values,
                ),
            }
    return jobs


def run_jobs(jobs: Dict[str, dict], parallel: bool, timeout_s: float) -> None:
    """Runs the training commands (all at once with ``parallel``); a
    failing run is reported and left out of the analysis."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "2")
    running = {}
    for name, job in jobs.items():
        job["out"].mkdir(parents=True, exist_ok=True)
        log = open(job["out"] / "benchmark_stdout.txt", "w")
        job["start"] = time.time()
        proc = subprocess.Popen(
            job["cmd"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        running[name] = (proc, log)
        logger.info("started %s", name)
        if not parallel:
            _wait(name, job, proc, log, timeout_s)
            del running[name]
    for name, (proc, log) in running.items():
        _wait(name, jobs[name], proc, log, timeout_s)


def _wait(name, job, proc, log, timeout_s):
    remaining = max(1.0, timeout_s - (time.time() - job["start"]))
    try:
        job["returncode"] = proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        proc.kill()
        job["returncode"] = "timeout"
    log.close()
    job["seconds"] = round(time.time() - job["start"], 1)
    logger.info(
        "%s finished: %s (%.0f s)", name, job["returncode"], job["seconds"]
    )


# ---------------------------------------------------------------------------
# Results of the runs
# ---------------------------------------------------------------------------
def _last_valid(log: Path) -> dict:
    if not log.is_file():
        return {}
    lines = [line for line in log.read_text().splitlines() if "valid" in line]
    if not lines:
        return {}
    out = {}
    for key, value in re.findall(r"valid ([\w-]+): ([-\d.e+]+)", lines[-1]):
        out[key] = float(value)
    match = re.search(r"epoch: (\d+)", lines[-1])
    if match:
        out["epochs"] = int(match.group(1))
    match = re.search(r"steps: (\d+)", lines[-1])
    if match:
        out["steps"] = int(match.group(1))
    return out


def training_result(job: dict) -> dict:
    """Final validation numbers of a run (and the SSL summary)."""
    out = job["out"]
    result = {
        "returncode": job.get("returncode"),
        "seconds": job.get("seconds"),
        "valid": _last_valid(out / "train_log.txt"),
    }
    summary = out / "pretraining_summary.json"
    if summary.is_file():
        result["ssl"] = json.loads(summary.read_text())
    wer = out / "wer_test-clean.txt"
    if wer.is_file():
        match = re.search(r"%WER ([\d.]+)", wer.read_text())
        result["test_wer"] = float(match.group(1)) if match else None
    results = out / "test_results.csv"
    if results.is_file():
        with open(results) as fin:
            rows = {r["snt_id"]: r for r in csv.DictReader(fin)}
        if "avg" in rows:
            result["test_si-snr_i"] = float(rows["avg"]["si-snr_i"])
    return result


# ---------------------------------------------------------------------------
# MI analysis
# ---------------------------------------------------------------------------
def curve_shape(values: List[float]) -> dict:
    """Drop to the minimum and recovery after it of a per-layer curve.

    Arguments
    ---------
    values : list of float
        MI per layer, first to last.

    Returns
    -------
    dict
        ``argmin`` (1-based layer), ``drop`` (first - min), ``recovery``
        (last - min), ``recovery_ratio`` (recovery / drop) and ``shape``:
        ``"U"`` (falls then recovers at least a quarter of the drop),
        ``"falling"`` (minimum at or near the end), ``"flat"`` or
        ``"rising"``.

    Example
    -------
    >>> curve_shape([3.0, 2.0, 1.0, 2.5])["shape"]
    'U'
    >>> curve_shape([3.0, 2.0, 1.0, 1.1])["shape"]
    'falling'
    """
    v = np.asarray(values, dtype=float)
    low = int(np.argmin(v))
    drop = float(v[0] - v[low])
    recovery = float(v[-1] - v[low])
    scale = max(abs(float(v[0])), 1e-6)
    ratio = recovery / drop if drop > 0 else float("nan")
    if drop < 0.05 * scale and recovery < 0.05 * scale:
        shape = "flat"
    elif low == 0:
        shape = "rising"
    elif drop > 0 and ratio >= 0.25:
        shape = "U"
    else:
        shape = "falling"
    return {
        "argmin": low + 1,
        "drop": drop,
        "recovery": recovery,
        "recovery_ratio": ratio,
        "shape": shape,
    }


def analyse_pair(
    task: str,
    models: Dict[str, Path],
    audio: Path,
    out_png: Path,
    device: str,
    data_root: Optional[Path],
    label_column: Optional[str],
    label_file: Optional[Path],
    max_utterances: int,
    steps: int,
    seed: int,
) -> List[dict]:
    """MINE (and KSG cross-check) MI curves of the models of one task."""
    from speechbrain_mamba.analysis.audio import list_utterances
    from speechbrain_mamba.analysis.models import load_model
    from speechbrain_mamba.analysis.mutual_information import (
        analyse_model,
        plot_curves,
    )

    utts = list_utterances(
        audio,
        label_column=label_column,
        data_root=data_root,
        max_utterances=max_utterances,
        seed=seed,
        label_file=label_file,
    )
    rows = []
    for name, folder in models.items():
        model = load_model(folder, name=name, device=device)
        main = analyse_model(
            model,
            utts,
            estimator="mine",
            seed=seed,
            max_frames=20000,
            steps=steps,
            hidden=128,
        )
        check = analyse_model(
            model,
            utts,
            estimator="ksg",
            seed=seed,
            max_frames=4000,
            pca_dim=8,
        )
        for row, ksg_row in zip(main, check):
            row["task"] = task
            row["mi_input_ksg_pca8"] = ksg_row["mi_input"]
            row["mi_label_ksg_pca8"] = ksg_row.get("mi_label", "")
        rows += main
        del model
    plot_curves(
        rows, out_png, title=f"{task}: MI per layer (MINE; {len(utts)} utts)"
    )
    return rows


def _verdict(task: str, shape: str) -> str:
    if task == "asr":
        expected = "falling"
        reason = "classification discards input information"
    else:
        expected = "U"
        reason = "reconstruction recovers input information"
    agree = "agrees" if shape == expected else "does not agree"
    return (
        f"{shape} curve; the hypothesis expects {expected} ({reason}): {agree}"
    )


def write_summary(out: Path, results: dict, rows: List[dict]) -> None:
    """``summary.json``, ``summary.md`` and ``mi_all.csv``."""
    from speechbrain_mamba.separation.io import (
        atomic_write_csv,
        atomic_write_text,
    )

    models: Dict[str, List[dict]] = {}
    for row in rows:
        models.setdefault(f"{row['task']}/{row['model']}", []).append(row)
    for key, model_rows in models.items():
        model_rows.sort(key=lambda r: r["layer_index"])
        entry = results.setdefault(key, {})
        for metric in ("mi_input", "mi_label", "mi_input_ksg_pca8"):
            values = [r.get(metric) for r in model_rows]
            if all(isinstance(v, float) for v in values):
                entry[f"{metric}_per_layer"] = values
                entry[f"{metric}_shape"] = curve_shape(values)
        shape = entry.get("mi_input_shape", {}).get("shape")
        if shape:
            entry["verdict"] = _verdict(key.split("/")[0], shape)
    atomic_write_text(out / "summary.json", json.dumps(results, indent=2))
    columns = [
        "task",
        "model",
        "layer_index",
        "layer",
        "relative_depth",
        "frames",
        "dim",
        "reference",
        "mi_input",
        "mi_label",
        "mi_input_ksg_pca8",
        "mi_label_ksg_pca8",
    ]
    atomic_write_csv(
        out / "mi_all.csv",
        columns,
        [{c: r.get(c, "") for c in columns} for r in rows],
    )
    lines = [
        "# Layer-wise MI curves (speechbrain_mamba.benchmarks.mi_curves)",
        "",
    ]
    lines += [
        "| run | training | MI(input; layer) per layer (MINE, nats) | shape |"
        " verdict |",
        "|---|---|---|---|---|",
    ]
    for key, entry in sorted(results.items()):
        if not isinstance(entry, dict) or "returncode" not in entry:
            continue
        valid = entry.get("valid", {})
        train = ", ".join(f"{k}={v:.3g}" for k, v in valid.items())
        if "ssl" in entry:
            ssl = entry["ssl"]
            acc = ssl["valid"].get("acc_masked", float("nan"))
            train += (
                f"; masked acc {acc:.3f}"
                f" vs chance {ssl['chance_majority']:.3f} (majority) /"
                f" {ssl['chance_uniform']:.3f} (uniform)"
            )
        curve = ", ".join(
            f"{v:.2f}" for v in entry.get("mi_input_per_layer", [])
        )
        shape = entry.get("mi_input_shape", {})
        lines.append(
            f"| {key} (rc {entry['returncode']}) | {train} | {curve} | "
            f"{shape.get('shape', '-')} (min at layer "
            f"{shape.get('argmin', '-')}) | {entry.get('verdict', '-')} |"
        )
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("results/mi_curves"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--stage", default="all", choices=("all", "corpora", "train", "analyse")
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--budget_s", type=float, default=150.0)
    parser.add_argument("--timeout_s", type=float, default=420.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models: CPU smoke test"
    )
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--librispeech_utts", type=int, default=400)
    parser.add_argument("--wsj_mixtures", type=int, default=200)
    parser.add_argument("--mi_utterances", type=int, default=30)
    parser.add_argument("--mine_steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import speechbrain_mamba  # noqa: F401  (torchaudio shim)

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    out = args.out or args.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    build_corpora(
        args.corpora, args.librispeech_utts, args.wsj_mixtures, args.seed
    )
    if args.stage == "corpora":
        return 0
    jobs = training_jobs(
        tasks,
        args.corpora,
        args.work,
        args.device,
        args.budget_s,
        args.precision,
        tiny=args.tiny,
    )
    if args.stage in ("all", "train"):
        run_jobs(jobs, parallel=not args.sequential, timeout_s=args.timeout_s)
    results = {name: training_result(job) for name, job in jobs.items()}
    atomic_results = args.work / "training_results.json"
    atomic_results.write_text(json.dumps(results, indent=2, default=str))
    if args.stage == "train":
        return 0

    def ok(name):
        return any((jobs[name]["out"] / "save").glob("CKPT+*"))

    rows: List[dict] = []
    ssl_targets = args.work / "ssl" / "bimamba" / "targets" / "test-clean.km"
    label_file = ssl_targets if ssl_targets.is_file() else None
    pairs = {
        "asr": {
            "models": {n: args.work / "asr" / n for n in ASR_MODELS},
            "audio": args.work / "asr" / "conmamba" / "test-clean.csv",
            "label_file": label_file,
        },
        "separation": {
            "models": {n: args.work / "separation" / n for n in SEP_MODELS},
            "audio": args.work
            / "separation"
            / "mamba_tasnet"
            / "save"
            / "wsj_tt.csv",
            "data_root": args.corpora / "wsj0-2mix",
            "label_column": "s1_wav",
        },
        "ssl": {
            "models": {n: args.work / "ssl" / n for n in SSL_MODELS},
            "audio": args.work / "ssl" / "bimamba" / "test-clean.csv",
            "label_file": label_file,
        },
    }
    for task in tasks:
        spec = pairs[task]
        models = {n: p for n, p in spec["models"].items() if ok(f"{task}/{n}")}
        if not models or not spec["audio"].is_file():
            logger.warning("%s: no trained model to analyse", task)
            continue
        try:
            rows += analyse_pair(
                task,
                models,
                spec["audio"],
                out / f"mi_{task}.png",
                args.device,
                spec.get("data_root"),
                spec.get("label_column"),
                spec.get("label_file"),
                args.mi_utterances,
                args.mine_steps,
                args.seed,
            )
        except Exception as err:  # keep the other tasks' results
            logger.exception("%s: analysis failed", task)
            results[f"{task}/error"] = repr(err)
    write_summary(out, results, rows)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
