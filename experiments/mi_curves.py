"""Layer-wise mutual-information curves of Mamba and attention models
trained on the mini corpora, and a short Mamba SSL pretraining.

Tests the hypothesis of Zhang et al. ("Rethinking Mamba in speech processing
by self-supervised models"): models of *reconstruction* tasks (separation,
and HuBERT-style masked prediction) keep -- or recover in their last layers
-- the information of their input, so MI(input; layer) falls and then rises
again; models of *classification* tasks (CTC ASR) discard it, so the curve
keeps falling towards the output.

One command trains three pairs of models, all six side by side (one process
each, on one GPU), each for its own training budget:

- ``asr``: ConMamba vs Conformer CTC encoders, characters, mini LibriSpeech
  (``recipes/LibriSpeech/ASR/CTC``);
- ``separation``: Mamba-TasNet vs the same TasNet with a Transformer mask
  network, mini WSJ0-2mix at 8 kHz (``recipes/WSJ0Mix/separation``);
- ``ssl``: BiMamba vs Transformer HuBERT-style encoders, MFCC k-means
  targets, mini LibriSpeech (``recipes/LibriSpeech/self-supervised-learning``).

Then, one process per model (in parallel), it estimates per layer
MI(input; layer) with MINE (cross-checked by KSG on 8 PCA components) and
MI(layer; labels) where labels exist: characters for ASR (each model's own
CTC forced alignment of the transcript, one character per encoder frame),
the k-means targets for SSL, none for separation. The held-out dev and test
utterances are analysed. It writes to ``--out``:

- ``mi_curves.png``: one row per pair, MI(input; layer) and MI(layer;
  labels) against relative depth;
- ``mi_all.csv``: every layer of every model;
- ``summary.json`` / ``summary.md``: per pair, the training result (CER /
  WER, SI-SNRi, masked-prediction accuracy against its chance levels), the
  MI per layer and the curve shape (falling / U / flat / rising), and every
  failure with its reason;
- ``logs.txt``: the end of each training log.

The exit status is 1 when a requested model produced no MI rows (its
reason is in the summary), 2 when a required package is missing.

Build the corpora where espeak-ng is installed, then run on the GPU with
the corpus folder copied there (``--prebuilt`` never rebuilds it)::

    python experiments/mi_curves.py --stage corpora \\
        --corpora .gpudata/mi_corpora
    python experiments/mi_curves.py --prebuilt \\
        --corpora .gpudata/mi_corpora --work /tmp/mi --out $OUT \\
        --budget_s 240 --device cuda

The numbers are whatever the run measures; nothing is assumed.

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from jobs import REPO, Job, error_line, log_tail, repo_env
from jobs import run_jobs as run_all

ASR_RECIPE = REPO / "recipes" / "LibriSpeech" / "ASR" / "CTC"
SEP_RECIPE = REPO / "recipes" / "WSJ0Mix" / "separation"
SSL_RECIPE = REPO / "recipes" / "LibriSpeech" / "self-supervised-learning"
TASKS = ("asr", "separation", "ssl")
PAIR_TITLES = {
    "asr": "ASR: ConMamba vs Conformer (CTC, characters, mini LibriSpeech)",
    "separation": "Separation: Mamba-TasNet vs Transformer mask net "
    "(mini WSJ0-2mix, 8 kHz)",
    "ssl": "SSL: BiMamba vs Transformer HuBERT-style pretraining "
    "(MFCC k-means targets, mini LibriSpeech)",
}
LABEL_NAMES = {"asr": "characters", "ssl": "k-means targets"}
#: Packages each task needs, checked before any training starts.
REQUIRED_MODULES = {
    "all": ("speechbrain", "hyperpyyaml", "soundfile", "scipy", "matplotlib"),
    "asr": ("sentencepiece",),
    "separation": ("fast_bss_eval",),
    "ssl": (),
}
#: Corpus sizes of ``--stage corpora`` (about 12 + 8 MB compressed).
DEFAULT_LIBRISPEECH_UTTS = 400
DEFAULT_WSJ_MIXTURES = 80

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
        "MaskNet: !new:speechbrain_mamba.lobes.transformer_masknet."
        "TransformerMaskNet\n"
    )
    + """    in_channels: !ref <N_encoder_out>
    out_channels: !ref <out_channels>
    num_layers: !ref <num_layers>
    num_spks: !ref <num_spks>
    nhead: 4
"""
)
# The paper recipe warms up over 32k steps; a run of a few minutes makes
# about a thousand steps, so the warm-up is short and the peak rate that of a
# small model. The rate then decays over decay_steps (to 5 % at the end).
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
    "warmup_steps": 150,
    "decay_steps": 4000,
    "lr": 0.001,
    "num_workers": 2,
    "ckpt_interval_minutes": 0,
}
SSL_MODELS = {
    # about 5.0 M (BiMamba) and 4.6 M (Transformer) parameters
    "bimamba": ("pretrain_bimamba.yaml", {"num_layers": 8}),
    "transformer": ("pretrain_transformer.yaml", {"num_layers": 4}),
}
MODELS = {"asr": ASR_MODELS, "separation": SEP_MODELS, "ssl": SSL_MODELS}
#: Checkpoint analysed: (meta key, highest is best), or None for the most
#: recent one. Separation and SSL: the checkpoint whose test / validation
#: metric is reported. ASR: the final model (its last validation CER/WER are
#: reported), since WER often stays near 100 % in short runs and ties
#: would pick an early checkpoint.
CKPT_KEYS = {
    "asr": (None, False),
    "separation": ("loss", False),
    "ssl": ("acc_masked", True),
}

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


# ---------------------------------------------------------------------------
# Checks and corpora
# ---------------------------------------------------------------------------
def missing_modules(tasks: Sequence[str]) -> List[str]:
    """Python packages the selected tasks need and that are not installed.

    Arguments
    ---------
    tasks : sequence of str
        Tasks of :data:`TASKS`.

    Returns
    -------
    list of str
        Missing module names (empty when all are there).

    Example
    -------
    >>> missing_modules(["asr"])
    []
    """
    names = list(REQUIRED_MODULES["all"])
    for task in tasks:
        names += REQUIRED_MODULES[task]
    return [n for n in names if importlib.util.find_spec(n) is None]


def corpus_info(folder: Path) -> Optional[dict]:
    """Parameters of a complete mini corpus (its marker file), or None.

    Arguments
    ---------
    folder : pathlib.Path
        Corpus root.

    Returns
    -------
    dict or None

    Example
    -------
    >>> corpus_info(Path("/nonexistent")) is None
    True
    """
    from speechbrain_mamba.data.mini_corpus import MARKER_NAME

    try:
        return json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def prepare_corpora(
    folder: Path,
    librispeech: int,
    wsj: int,
    seed: int = 0,
    prebuilt: bool = False,
    tasks: Sequence[str] = TASKS,
) -> Dict[str, dict]:
    """Builds the mini LibriSpeech and WSJ0-2mix corpora, or uses them as
    they are.

    With ``prebuilt``, or when espeak-ng is missing, complete corpora in
    ``folder`` are used whatever their size; otherwise they are (re)built
    with the requested sizes (nothing is done when they match).

    Arguments
    ---------
    folder : pathlib.Path
        Holds ``LibriSpeech`` and ``wsj0-2mix``.
    librispeech : int
        Utterances of the LibriSpeech corpus.
    wsj : int
        Mixtures of the WSJ0-2mix corpus.
    seed : int
        Corpus seed.
    prebuilt : bool
        Never build.
    tasks : sequence of str
        Only the corpora of these tasks are prepared (LibriSpeech for
        ``asr`` and ``ssl``, WSJ0-2mix for ``separation``).

    Returns
    -------
    dict
        Corpus name -> its marker parameters.
    """
    from speechbrain_mamba.data.espeak import espeak_available
    from speechbrain_mamba.data.mini_corpus import (
        build_librispeech,
        build_wsj0_2mix,
    )

    names = {}
    if {"asr", "ssl"} & set(tasks):
        names["LibriSpeech"] = librispeech
    if "separation" in tasks:
        names["wsj0-2mix"] = wsj
    found = {name: corpus_info(folder / name) for name in names}
    if prebuilt or not espeak_available():
        missing = [name for name, info in found.items() if info is None]
        if missing:
            why = "--prebuilt" if prebuilt else "espeak-ng is not installed"
            raise FileNotFoundError(
                f"{why} and {folder} has no complete corpus for {missing}: "
                "build them where espeak-ng is installed with "
                f"`--stage corpora --corpora {folder}` and copy the folder"
            )
        for name, info in found.items():
            if info["num_utterances"] != names[name]:
                logger.info(
                    "%s: using the prebuilt corpus of %d utterances",
                    name,
                    info["num_utterances"],
                )
        return found
    folder.mkdir(parents=True, exist_ok=True)
    if "LibriSpeech" in names:
        build_librispeech(
            folder / "LibriSpeech", seed=seed, num_utterances=librispeech
        )
    if "wsj0-2mix" in names:
        build_wsj0_2mix(folder / "wsj0-2mix", seed=seed, num_utterances=wsj)
    return {name: corpus_info(folder / name) for name in names}


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


def parse_budgets(
    values: Sequence[str], default: float, jobs: Sequence[str]
) -> Dict[str, float]:
    """Training budget of every job from ``--budget`` overrides.

    Arguments
    ---------
    values : sequence of str
        ``TASK=SECONDS`` or ``TASK/MODEL=SECONDS`` items; the most specific
        one wins.
    default : float
        Budget of the jobs without an override.
    jobs : sequence of str
        Job names (``task/model``).

    Returns
    -------
    dict
        Job name -> seconds.

    Example
    -------
    >>> jobs = ["asr/conmamba", "asr/conformer", "ssl/bimamba"]
    >>> parse_budgets(["asr=300", "asr/conformer=200"], 60, jobs)
    {'asr/conmamba': 300.0, 'asr/conformer': 200.0, 'ssl/bimamba': 60.0}
    """
    budgets = {job: float(default) for job in jobs}
    known = set(jobs) | {job.split("/")[0] for job in jobs}
    overrides = {}
    for item in values:
        key, sep, seconds = item.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"--budget {item!r}: expected TASK=SECONDS or "
                f"TASK/MODEL=SECONDS with one of {sorted(known)}"
            )
        try:
            value = float(seconds)
        except ValueError as err:
            raise ValueError(f"--budget {item!r}: not a number") from err
        if value <= 0:
            raise ValueError(f"--budget {item!r}: must be positive")
        overrides[key] = value
    for job in jobs:
        task = job.split("/")[0]
        budgets[job] = overrides.get(job, overrides.get(task, budgets[job]))
    return budgets


def parse_hparams(values: Sequence[str]) -> Dict[str, dict]:
    """Recipe overrides from ``--hparam JOB:KEY=VALUE`` items.

    Arguments
    ---------
    values : sequence of str
        ``TASK:KEY=VALUE`` or ``TASK/MODEL:KEY=VALUE`` items.

    Returns
    -------
    dict
        ``task`` or ``task/model`` -> ``{key: value}``.

    Example
    -------
    >>> parse_hparams(["ssl:lr=0.0005", "ssl/bimamba:mask_prob=0.65"])
    {'ssl': {'lr': '0.0005'}, 'ssl/bimamba': {'mask_prob': '0.65'}}
    """
    out: Dict[str, dict] = {}
    for item in values:
        job, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        task, _, model = job.partition("/")
        known = task in MODELS and (not model or model in MODELS[task])
        if not sep or not eq or not key or not known:
            raise ValueError(
                f"--hparam {item!r}: expected TASK[/MODEL]:KEY=VALUE with "
                f"TASK in {TASKS}"
            )
        out.setdefault(job, {})[key] = value
    return out


def training_jobs(
    tasks: Sequence[str],
    corpora: Path,
    work: Path,
    device: str,
    budgets: Dict[str, float],
    precision: str,
    tiny: bool = False,
    overrides: Optional[Dict[str, dict]] = None,
) -> Dict[str, dict]:
    """The training commands of the selected tasks.

    Arguments
    ---------
    tasks : sequence of str
        Tasks to run.
    corpora : pathlib.Path
        Folder with ``LibriSpeech`` and ``wsj0-2mix``.
    work : pathlib.Path
        Experiment folders go to ``work/TASK/MODEL``.
    device : str
        Training device.
    budgets : dict
        Job name (``task/model``) -> training seconds.
    precision : str
        ``fp32``, ``bf16`` or ``fp16``.
    tiny : bool
        Tiny models (CPU smoke test).
    overrides : dict, optional
        ``task`` or ``task/model`` -> extra recipe overrides (the job's own
        entry wins over its task's).

    Returns
    -------
    dict
        Job name -> ``{"task", "model", "out", "budget_s", "cmd"}``.
    """
    ls, wsj = corpora / "LibriSpeech", corpora / "wsj0-2mix"
    jobs = {}
    for task in tasks:
        for name, spec in MODELS[task].items():
            job = f"{task}/{name}"
            out = work / task / name
            common = {"data_folder": ls, "output_folder": out}
            if task == "asr":
                yaml, extra = spec
                hparams = ASR_RECIPE / "hparams" / yaml
                script = ASR_RECIPE / "train.py"
                values = {**ASR_COMMON, **extra, **common}
                values["test_csv"] = f"[{out}/test-clean.csv]"
                layers_key = "num_encoder_layers"
            elif task == "separation":
                hparams = SEP_RECIPE / "hparams" / "mamba_tasnet_XS.yaml"
                if name == "transformer_tasnet":
                    (work / task).mkdir(parents=True, exist_ok=True)
                    hparams = _transformer_sep_yaml(work / task)
                script = SEP_RECIPE / "train.py"
                values = {**SEP_COMMON, **spec, **common, "data_folder": wsj}
                layers_key = "num_layers"
            else:
                yaml, extra = spec
                hparams = SSL_RECIPE / "hparams" / yaml
                script = SSL_RECIPE / "train.py"
                values = {**SSL_COMMON, **extra, **common}
                layers_key = "num_layers"
            values["train_time_budget_s"] = budgets[job]
            values["precision"] = precision
            if tiny:
                values.update(TINY[task])
                values[layers_key] = TINY_LAYERS[job]
                if task == "separation":
                    values["eval_dataloader_opts"] = (
                        "{batch_size: 1, num_workers: 0}"
                    )
                    values["train_dataloader_opts"] = (
                        "{batch_size: 4, num_workers: 0, shuffle: True}"
                    )
            values.update((overrides or {}).get(task, {}))
            values.update((overrides or {}).get(job, {}))
            jobs[job] = {
                "task": task,
                "model": name,
                "out": out,
                "budget_s": budgets[job],
                "cmd": _command(script, hparams, device, values),
            }
    return jobs


def run_jobs(
    jobs: Dict[str, dict], parallel: bool, timeouts: Dict[str, float]
) -> None:
    """Runs the training commands (all at once with ``parallel``).

    Each job's output goes to ``<out>/benchmark_stdout.txt``; its exit
    status (or ``"timeout"``) and wall time are stored in the job. A job
    past its timeout is ended with its data-loader workers.

    Arguments
    ---------
    jobs : dict
        From :func:`training_jobs`.
    parallel : bool
        Start every job at once.
    timeouts : dict
        Job name -> seconds before it is ended.
    """
    env = repo_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    runs = {
        name: Job(
            job["cmd"],
            job["out"] / "benchmark_stdout.txt",
            timeouts[name],
            env=env,
            name=name,
        )
        for name, job in jobs.items()
    }
    logger.info("training %s", ", ".join(runs))
    run_all(runs.values(), parallel=parallel)
    for name, run in runs.items():
        jobs[name]["returncode"] = run.status
        jobs[name]["seconds"] = run.seconds
        logger.info("%s finished: %s (%s s)", name, run.status, run.seconds)


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
    for key in ("epoch", "steps"):
        match = re.search(rf"{key}: (\d+)", lines[-1])
        if match:
            out[key] = int(match.group(1))
    return out


def training_result(job: dict) -> dict:
    """Training and test numbers of a run.

    Arguments
    ---------
    job : dict
        From :func:`training_jobs` after :func:`run_jobs`.

    Returns
    -------
    dict
        ``returncode``, ``seconds``, ``budget_s``, ``valid`` (last
        validation line), and per task ``test_wer`` / ``test_cer``,
        ``test_si-snr_i`` or ``ssl`` (the pretraining summary); ``error``
        when the run failed.
    """
    out = job["out"]
    result = {
        "returncode": job.get("returncode"),
        "seconds": job.get("seconds"),
        "budget_s": job.get("budget_s"),
        "valid": _last_valid(out / "train_log.txt"),
    }
    summary = out / "pretraining_summary.json"
    if summary.is_file():
        result["ssl"] = json.loads(summary.read_text())
    for metric in ("wer", "cer"):
        path = out / f"{metric}_test-clean.txt"
        if path.is_file():
            match = re.search(r"%WER ([\d.]+)", path.read_text())
            result[f"test_{metric}"] = float(match.group(1)) if match else None
    results = out / "test_results.csv"
    if results.is_file():
        with open(results) as fin:
            rows = {r["snt_id"]: r for r in csv.DictReader(fin)}
        if "avg" in rows:
            result["test_si-snr_i"] = float(rows["avg"]["si-snr_i"])
    code = result["returncode"]
    if code not in (0, None):
        tail = log_tail(out / "benchmark_stdout.txt")
        result["error"] = f"training exit status {code}: " + (
            error_line(tail) or "no log"
        )
    return result


# ---------------------------------------------------------------------------
# MI analysis (one process per model)
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
        ``"falling"`` (minimum at or near the end), ``"flat"`` (changes
        under 5 % of the first value or 0.02 nats) or ``"rising"``.

    Example
    -------
    >>> curve_shape([3.0, 2.0, 1.0, 2.5])["shape"]
    'U'
    >>> curve_shape([3.0, 2.0, 1.0, 1.1])["shape"]
    'falling'
    >>> curve_shape([3.0, 3.05, 2.98])["shape"]
    'flat'
    """
    v = np.asarray(values, dtype=float)
    low = int(np.argmin(v))
    drop = float(v[0] - v[low])
    recovery = float(v[-1] - v[low])
    tolerance = max(0.05 * abs(float(v[0])), 0.02)
    ratio = recovery / drop if drop > 0 else float("nan")
    if drop < tolerance and recovery < tolerance:
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


def _read_transcripts(csv_files: Sequence[Path]) -> Dict[str, str]:
    texts = {}
    for path in csv_files:
        with open(path, encoding="utf-8", newline="") as fin:
            for row in csv.DictReader(fin):
                texts[row["ID"]] = row.get("wrd", "")
    return texts


def _read_km(files: Sequence[Path]) -> Dict[str, str]:
    labels = {}
    for path in files:
        with open(path, encoding="utf-8") as fin:
            for line in fin:
                utt, _, rest = line.strip().partition(" ")
                if utt:
                    labels[utt] = rest
    return labels


def _subsample(collected, frames: int, seed: int):
    """A copy of LayerStates with at most ``frames`` frames per layer."""
    from dataclasses import replace

    import torch

    states, refs, labels = [], [], []
    for index, layer_states in enumerate(collected.states):
        n = layer_states.shape[0]
        keep = np.arange(n)
        if n > frames:
            rng = np.random.default_rng([seed, index])
            keep = np.sort(rng.choice(n, frames, replace=False))
        keep_t = torch.from_numpy(keep)
        states.append(layer_states[keep_t])
        refs.append(collected.reference[index][keep_t])
        if collected.labels is not None:
            lab = collected.labels[index]
            labels.append(
                lab[keep] if isinstance(lab, np.ndarray) else lab[keep_t]
            )
    return replace(
        collected,
        states=states,
        reference=refs,
        labels=labels if collected.labels is not None else None,
    )


def _utterances(spec: dict):
    from speechbrain_mamba.analysis.audio import list_utterances

    utts = []
    for path in spec["audio"]:
        utts += list_utterances(path, data_root=spec.get("data_root"))
    utts.sort(key=lambda u: u.id)
    limit = spec.get("max_utterances")
    if limit and len(utts) > limit:
        rng = np.random.default_rng(spec["seed"])
        keep = sorted(rng.choice(len(utts), int(limit), replace=False))
        utts = [utts[i] for i in keep]
    return utts


def analyse_one(spec: dict) -> dict:
    """MI curves of one trained model (run in a worker process).

    Never raises: a failure is returned as ``error`` (and ``traceback``).

    Arguments
    ---------
    spec : dict
        ``task``, ``model``, ``folder`` (experiment folder), ``audio``
        (CSV files), ``data_root``, ``labels`` (``"ctc"``, ``"km"`` or
        None), ``km_files``, ``device``, ``seed``, ``max_utterances``,
        ``max_frames``, ``ksg_frames``, ``mine_steps``, ``threads``.

    Returns
    -------
    dict
        ``rows`` (one per layer), ``utterances``, ``label_fallbacks``,
        ``seconds`` and ``error`` (None when it worked).
    """
    start = time.time()
    result = {"rows": [], "error": None, "utterances": 0}
    try:
        import torch

        import speechbrain_mamba  # noqa: F401  (torchaudio shim)
        from speechbrain_mamba.analysis.audio import Utterance
        from speechbrain_mamba.analysis.layerwise import (
            collect_layer_states,
            layerwise_mi,
        )
        from speechbrain_mamba.analysis.models import analysis_model
        from speechbrain_mamba.utils.model_folders import load_experiment

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        device = spec["device"]
        key, key_max = CKPT_KEYS[spec["task"]]
        hparams = load_experiment(spec["folder"], key, key_max)
        model = analysis_model(hparams, spec["model"]).to(device)
        utts = _utterances(spec)
        if spec.get("labels") == "ctc":
            import sentencepiece

            from speechbrain_mamba.analysis.alignment import ctc_frame_labels

            tokenizer = sentencepiece.SentencePieceProcessor()
            tokenizer.load(str(Path(spec["folder"]) / "save/tokenizer.ckpt"))
            hparams["ctc_lin"].to(device)
            labels, fallbacks = ctc_frame_labels(
                hparams,
                utts,
                _read_transcripts(spec["audio"]),
                tokenizer,
                device,
            )
            result["label_fallbacks"] = fallbacks
            utts = [
                Utterance(u.id, u.path, " ".join(map(str, labels[u.id])))
                for u in utts
            ]
        elif spec.get("labels") == "km":
            km = _read_km(spec["km_files"])
            missing = [u.id for u in utts if u.id not in km]
            if missing:
                raise KeyError(
                    f"no k-means targets for {len(missing)} utterances "
                    f"(e.g. {missing[:3]}) in {spec['km_files']}"
                )
            utts = [Utterance(u.id, u.path, km[u.id]) for u in utts]
        result["utterances"] = len(utts)
        torch.manual_seed(spec["seed"])
        collected = collect_layer_states(
            model, utts, max_frames=spec["max_frames"], seed=spec["seed"]
        )
        rows = layerwise_mi(
            collected,
            "mine",
            seed=spec["seed"],
            device=str(model.device),
            steps=spec["mine_steps"],
            hidden=128,
        )
        check = layerwise_mi(
            _subsample(collected, spec["ksg_frames"], spec["seed"]),
            "ksg",
            seed=spec["seed"],
            pca_dim=8,
        )
        for row, ksg_row in zip(rows, check):
            row.update(task=spec["task"], model=spec["model"])
            row["reference"] = "encoder_input"
            row["mi_input_ksg_pca8"] = ksg_row["mi_input"]
            row["mi_label_ksg_pca8"] = ksg_row.get("mi_label")
        bad = [r["layer"] for r in rows if not math.isfinite(r["mi_input"])]
        if not rows:
            raise RuntimeError("the model has no captured layer")
        if bad:
            raise RuntimeError(f"MI(input; layer) is not finite for {bad}")
        result["rows"] = rows
    except Exception as err:  # reported in the summary, exit status 1
        result["rows"] = []
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()
    result["seconds"] = round(time.time() - start, 1)
    return result


def analysis_specs(
    tasks: Sequence[str],
    work: Path,
    corpora: Path,
    device: str,
    args: argparse.Namespace,
) -> Dict[str, dict]:
    """What :func:`analyse_one` gets for each model of the selected tasks.

    Arguments
    ---------
    tasks : sequence of str
        Tasks.
    work : pathlib.Path
        Experiment root.
    corpora : pathlib.Path
        Corpus root.
    device : str
        Analysis device.
    args : argparse.Namespace
        ``mi_utterances``, ``mi_frames``, ``ksg_frames``, ``mine_steps``,
        ``seed``.

    Returns
    -------
    dict
        ``task/model`` -> spec.
    """
    specs = {}
    for task in tasks:
        for name in MODELS[task]:
            folder = work / task / name
            spec = {
                "task": task,
                "model": name,
                "folder": str(folder),
                "device": device,
                "seed": args.seed,
                "max_utterances": args.mi_utterances,
                "max_frames": args.mi_frames,
                "ksg_frames": args.ksg_frames,
                "mine_steps": args.mine_steps,
                "labels": None,
            }
            if task == "separation":
                spec["audio"] = [folder / "save" / "wsj_tt.csv"]
                spec["data_root"] = str(corpora / "wsj0-2mix")
            else:
                splits = ("dev-clean", "test-clean")
                spec["audio"] = [folder / f"{s}.csv" for s in splits]
                if task == "asr":
                    spec["labels"] = "ctc"
                else:
                    spec["labels"] = "km"
                    spec["km_files"] = [
                        folder / "targets" / f"{s}.km" for s in splits
                    ]
            specs[f"{task}/{name}"] = spec
    return specs


def _not_ready(spec: dict) -> Optional[str]:
    """Why a model cannot be analysed (None when it can)."""
    folder = Path(spec["folder"])
    if not (folder / "hyperparams.yaml").is_file():
        return f"no experiment in {folder} (training did not start)"
    if not any((folder / "save").glob("CKPT+*")):
        return f"no checkpoint in {folder / 'save'} (training saved none)"
    missing = [str(p) for p in spec["audio"] if not Path(p).is_file()]
    missing += [str(p) for p in spec.get("km_files", []) if not p.is_file()]
    if missing:
        return f"missing analysis inputs: {', '.join(missing)}"
    return None


def run_analyses(
    specs: Dict[str, dict], workers: int, threads: Optional[int] = None
) -> Dict[str, dict]:
    """Runs :func:`analyse_one` for every spec, ``workers`` processes at a
    time (in this process when ``workers`` is 0).

    Arguments
    ---------
    specs : dict
        From :func:`analysis_specs`.
    workers : int
        Parallel processes (0: none, sequential).
    threads : int, optional
        Torch threads per worker.

    Returns
    -------
    dict
        ``task/model`` -> result of :func:`analyse_one` (or the reason it
        was not run).
    """
    results, todo = {}, {}
    for key, spec in specs.items():
        reason = _not_ready(spec)
        if reason:
            results[key] = {"rows": [], "error": reason, "utterances": 0}
        else:
            todo[key] = {
                **spec,
                "audio": [str(p) for p in spec["audio"]],
                "km_files": [str(p) for p in spec.get("km_files", [])],
                "threads": threads,
            }
    if workers <= 0 or len(todo) <= 1:
        for key, spec in todo.items():
            logger.info("analysing %s", key)
            results[key] = analyse_one(spec)
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(todo)), mp_context=context
    ) as pool:
        futures = {key: pool.submit(analyse_one, s) for key, s in todo.items()}
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except Exception as err:  # a worker that died
                results[key] = {
                    "rows": [],
                    "error": f"analysis process failed: {err!r}",
                    "utterances": 0,
                }
            logger.info(
                "%s analysed: %s",
                key,
                results[key]["error"] or f"{len(results[key]['rows'])} layers",
            )
    return results


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def _verdict(task: str, shape: str) -> str:
    expected = "falling" if task == "asr" else "U"
    agree = "agrees" if shape == expected else "does not agree"
    return f"expected {expected}: {agree}"


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value:.{digits}g}"
    return "-"


def training_summary(task: str, result: dict) -> str:
    """One line with the training result of a run.

    Arguments
    ---------
    task : str
        Task of the run.
    result : dict
        From :func:`training_result`.

    Returns
    -------
    str

    Example
    -------
    >>> text = training_summary("asr", {"valid": {"CER": 40.0, "WER": 90.0,
    ...     "steps": 800}, "test_wer": 88.0, "test_cer": 41.2,
    ...     "seconds": 300.0, "returncode": 0})
    >>> text.startswith("final valid CER 40 / WER 90; test CER 41.2 / WER 88")
    True
    >>> text.endswith("; 800 steps, 300 s")
    True
    """
    valid = result.get("valid", {})
    steps = valid.get("steps")
    if task == "asr":
        text = (
            f"final valid CER {_fmt(valid.get('CER'))} / WER "
            f"{_fmt(valid.get('WER'))}; test CER "
            f"{_fmt(result.get('test_cer'))} / WER "
            f"{_fmt(result.get('test_wer'))} (best-WER checkpoint)"
        )
    elif task == "separation":
        text = (
            f"test SI-SNRi {_fmt(result.get('test_si-snr_i'))} dB (valid "
            f"{_fmt(valid.get('si-snr_i'))} dB)"
        )
    else:
        ssl = result.get("ssl")
        if ssl:
            steps = ssl.get("optimizer_steps", steps)
            acc = ssl.get("valid", {}).get("acc_masked")
            text = (
                f"masked acc {_fmt(acc)} vs chance "
                f"{_fmt(ssl.get('chance_majority'))} (majority) / "
                f"{_fmt(ssl.get('chance_uniform'))} (uniform)"
            )
        else:
            text = (
                f"masked acc {_fmt(valid.get('acc_masked'))} (last valid; "
                "no pretraining summary)"
            )
    extra = []
    if steps is not None:
        extra.append(f"{steps} steps")
    if result.get("seconds") is not None:
        extra.append(f"{result['seconds']:.0f} s")
    if result.get("returncode") not in (0, None):
        extra.append(f"exit {result['returncode']}")
    return text + ("; " + ", ".join(extra) if extra else "")


def build_summary(
    tasks: Sequence[str],
    training: Dict[str, dict],
    analyses: Dict[str, dict],
    settings: dict,
) -> dict:
    """Per pair and model: training result, MI per layer, curve shapes and
    failures.

    Arguments
    ---------
    tasks : sequence of str
        Requested tasks.
    training : dict
        ``task/model`` -> :func:`training_result`.
    analyses : dict
        ``task/model`` -> :func:`analyse_one` result.
    settings : dict
        Run settings (stored as they are).

    Returns
    -------
    dict
        ``{"settings", "pairs", "failures", "ok"}``; ``ok`` is False when
        a requested model has no MI rows.
    """
    pairs, failures = {}, []
    for task in tasks:
        models = {}
        for name in MODELS[task]:
            key = f"{task}/{name}"
            train = training.get(key, {})
            analysis = analyses.get(key, {"rows": [], "error": "not analysed"})
            entry = {
                "training": train,
                "training_summary": training_summary(task, train),
                "utterances": analysis.get("utterances", 0),
            }
            if analysis.get("label_fallbacks"):
                entry["label_fallbacks"] = analysis["label_fallbacks"]
            rows = sorted(analysis["rows"], key=lambda r: r["layer_index"])
            for metric in ("mi_input", "mi_label", "mi_input_ksg_pca8"):
                values = [r.get(metric) for r in rows]
                if rows and all(isinstance(v, float) for v in values):
                    entry[f"{metric}_per_layer"] = values
                    entry[f"{metric}_shape"] = curve_shape(values)
            if rows:
                entry["frames"] = rows[0]["frames"]
                shape = entry["mi_input_shape"]["shape"]
                entry["verdict"] = _verdict(task, shape)
            if train.get("error"):
                entry["training_error"] = train["error"]
                failures.append(f"{key}: {train['error']}")
            if not rows:
                reason = analysis.get("error") or "no MI rows"
                entry["error"] = reason
                failures.append(f"{key}: no MI rows: {reason}")
            models[name] = entry
        ok = all("error" not in m for m in models.values())
        pairs[task] = {"title": PAIR_TITLES[task], "ok": ok, "models": models}
    return {
        "settings": settings,
        "pairs": pairs,
        "failures": failures,
        "ok": all(p["ok"] for p in pairs.values()),
    }


def _budget_text(budgets: Dict[str, float]) -> str:
    values = set(budgets.values())
    if len(values) == 1:
        return f"{values.pop():.0f} s per job"
    return ", ".join(f"{k} {v:.0f} s" for k, v in budgets.items())


def summary_markdown(summary: dict) -> str:
    """The report of :func:`build_summary` as Markdown.

    Arguments
    ---------
    summary : dict
        From :func:`build_summary`.

    Returns
    -------
    str
    """
    settings = summary["settings"]
    lines = [
        "# Layer-wise MI of Mamba vs attention models "
        "(`experiments/mi_curves.py`)",
        "",
        f"Device {settings.get('device')}"
        + (f" ({settings['gpu']})" if settings.get("gpu") else "")
        + f", mamba_ssm kernels: {settings.get('mamba_ssm', '-')}"
        + ", training budget "
        f"{_budget_text(settings.get('budgets', {}))}, MINE "
        f"{settings.get('mine_steps')} "
        f"steps on up to {settings.get('mi_frames')} frames per layer, "
        "held-out utterances. MI in nats; curves first to last layer.",
        "",
    ]
    if summary["failures"]:
        lines += ["**FAILURES**", ""]
        lines += [f"- {text}" for text in summary["failures"]]
        lines.append("")
    for task, pair in summary["pairs"].items():
        label = LABEL_NAMES.get(task)
        lines += [f"## {pair['title']}", ""]
        header = "| model | training | MI(input; layer) | shape |"
        rule = "|---|---|---|---|"
        if label:
            header += f" MI(layer; {label}) | shape |"
            rule += "---|---|"
        lines += [header, rule]
        for name, entry in pair["models"].items():
            curve = ", ".join(
                f"{v:.2f}" for v in entry.get("mi_input_per_layer", [])
            )
            shape = entry.get("mi_input_shape", {})
            shape_text = "-"
            if shape:
                shape_text = (
                    f"{shape['shape']} (min at layer {shape['argmin']}; "
                    f"{entry['verdict']})"
                )
            if "error" in entry:
                curve = f"**no MI: {entry['error']}**"
            row = (
                f"| {name} | {entry['training_summary']} | {curve} | "
                f"{shape_text} |"
            )
            if label:
                labels = entry.get("mi_label_per_layer", [])
                label_shape = entry.get("mi_label_shape", {}).get("shape", "-")
                row += f" {', '.join(f'{v:.2f}' for v in labels)} |"
                row += f" {label_shape} |"
            lines.append(row)
        frames = [
            f"{name} {m['frames']} frames / {m['utterances']} utts"
            + (
                f" ({m['label_fallbacks']} without a CTC path, labelled "
                "uniformly)"
                if m.get("label_fallbacks")
                else ""
            )
            for name, m in pair["models"].items()
            if "frames" in m
        ]
        if frames:
            lines += ["", "MI on " + "; ".join(frames) + "."]
        lines.append("")
    lines.append(
        "Hypothesis (Zhang et al.): MI(input; layer) falls then recovers "
        "(U) for reconstruction (separation, SSL) and keeps falling for "
        "classification (ASR)."
    )
    return "\n".join(lines) + "\n"


def _model_rows(rows: List[dict], task: str, model: str) -> List[dict]:
    selected = [r for r in rows if r["task"] == task and r["model"] == model]
    return sorted(selected, key=lambda r: r["layer_index"])


def plot_pairs(rows: List[dict], path: Path) -> Path:
    """One row of panels per pair: MI(input; layer) and MI(layer; labels)
    against relative depth, one line per model (PNG, written atomically).

    Arguments
    ---------
    rows : list of dict
        Rows of :func:`analyse_one`.
    path : pathlib.Path
        Destination.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(
        max(1, len(tasks)),
        2,
        figsize=(11, 3.6 * max(1, len(tasks))),
        squeeze=False,
    )
    for axes_row, task in zip(axes, tasks):
        for ax, metric, title in zip(
            axes_row,
            ("mi_input", "mi_label"),
            ("MI(input; layer)", f"MI(layer; {LABEL_NAMES.get(task, '-')})"),
        ):
            if metric == "mi_label" and task not in LABEL_NAMES:
                ax.set_visible(False)  # no labels (separation)
                continue
            for model in MODELS[task]:
                model_rows = _model_rows(rows, task, model)
                values = [r.get(metric) for r in model_rows]
                if not model_rows or not all(
                    isinstance(v, float) for v in values
                ):
                    continue
                depth = [r["relative_depth"] for r in model_rows]
                ax.plot(depth, values, marker="o", label=model)
            ax.set_title(f"{task}: {title}")
            ax.set_xlabel("relative depth")
            ax.set_ylabel("nats")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


CSV_COLUMNS = (
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
)


def write_outputs(
    out: Path,
    summary: dict,
    rows: List[dict],
    jobs: Dict[str, dict],
    analyses: Dict[str, dict],
) -> str:
    """Writes ``summary.{json,md}``, ``mi_all.csv``, ``mi_curves.png`` and
    ``logs.txt`` (atomically); returns the Markdown.

    Arguments
    ---------
    out : pathlib.Path
        Output folder.
    summary : dict
        From :func:`build_summary`.
    rows : list of dict
        Every MI row.
    jobs : dict
        Training jobs (their logs go to ``logs.txt``).
    analyses : dict
        Analysis results (their tracebacks go to ``logs.txt``).

    Returns
    -------
    str
        The Markdown summary.
    """
    from speechbrain_mamba.utils.atomic import (
        atomic_write_csv,
        atomic_write_text,
    )

    atomic_write_text(
        out / "summary.json", json.dumps(summary, indent=2, default=str)
    )
    markdown = summary_markdown(summary)
    atomic_write_text(out / "summary.md", markdown)
    atomic_write_csv(
        out / "mi_all.csv",
        CSV_COLUMNS,
        [
            {c: "" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS}
            for r in rows
        ],
    )
    if rows:
        plot_pairs(rows, out / "mi_curves.png")
    logs = []
    for name, job in jobs.items():
        logs += [f"===== {name}: training log (end) =====", ""]
        logs.append(log_tail(job["out"] / "benchmark_stdout.txt", 60))
        logs.append("")
    for name, result in analyses.items():
        if result.get("traceback"):
            logs += [f"===== {name}: analysis error =====", ""]
            logs += [result["traceback"], ""]
    atomic_write_text(out / "logs.txt", "\n".join(logs) + "\n")
    return markdown


def _gpu_name(device: str) -> Optional[str]:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        0 when every requested model has MI rows, 1 when one has none, 2
        when a required package is missing.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", required=True, type=Path)
    parser.add_argument(
        "--prebuilt",
        action="store_true",
        help="use the corpora in --corpora as they are (never build)",
    )
    parser.add_argument("--work", type=Path, default=Path("results/mi_curves"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--stage", default="all", choices=("all", "corpora", "train", "analyse")
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument(
        "--budget_s",
        type=float,
        default=240.0,
        help="training seconds of each job",
    )
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="JOB=SECONDS",
        help="per-job budget: TASK=S or TASK/MODEL=S (repeatable)",
    )
    parser.add_argument(
        "--timeout_s",
        type=float,
        default=None,
        help="kill a training job after this long (default: budget + 300)",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models: CPU smoke test"
    )
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument(
        "--librispeech_utts", type=int, default=DEFAULT_LIBRISPEECH_UTTS
    )
    parser.add_argument(
        "--wsj_mixtures", type=int, default=DEFAULT_WSJ_MIXTURES
    )
    parser.add_argument(
        "--mi_utterances",
        type=int,
        default=200,
        help="held-out utterances analysed per model",
    )
    parser.add_argument(
        "--mi_frames", type=int, default=20000, help="MINE frames per layer"
    )
    parser.add_argument(
        "--ksg_frames", type=int, default=4000, help="KSG frames per layer"
    )
    parser.add_argument("--mine_steps", type=int, default=600)
    parser.add_argument(
        "--analysis_workers",
        type=int,
        default=None,
        help="parallel analysis processes (default: one per model on "
        "CUDA, 0 = in this process on CPU)",
    )
    parser.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="JOB:KEY=VALUE",
        help="extra recipe override for TASK or TASK/MODEL, e.g. "
        "ssl:lr=0.0005 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import speechbrain_mamba  # noqa: F401  (torchaudio shim)

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        parser.error(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    missing = missing_modules(tasks)
    if missing:
        print(
            f"mi_curves: missing Python packages {missing} (needed by "
            f"{tasks}); install them (on the GPU machine: carry their "
            "wheels) and run again",
            file=sys.stderr,
        )
        return 2
    corpora_info = prepare_corpora(
        args.corpora,
        args.librispeech_utts,
        args.wsj_mixtures,
        args.seed,
        prebuilt=args.prebuilt or args.stage == "analyse",
        tasks=tasks,
    )
    if args.stage == "corpora":
        return 0
    out = args.out or args.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    names = [f"{t}/{m}" for t in tasks for m in MODELS[t]]
    try:
        budgets = parse_budgets(args.budget, args.budget_s, names)
        extra_hparams = parse_hparams(args.hparam)
    except ValueError as err:
        parser.error(str(err))
    jobs = training_jobs(
        tasks,
        args.corpora,
        args.work,
        args.device,
        budgets,
        args.precision,
        tiny=args.tiny,
        overrides=extra_hparams,
    )
    results_file = args.work / "training_results.json"
    if args.stage in ("all", "train"):
        timeouts = {
            name: args.timeout_s or budgets[name] + 300.0 for name in jobs
        }
        run_jobs(jobs, parallel=not args.sequential, timeouts=timeouts)
    elif results_file.is_file():  # analyse: keep the training stage's status
        previous = json.loads(results_file.read_text())
        for name, job in jobs.items():
            for key in ("returncode", "seconds", "budget_s"):
                job[key] = previous.get(name, {}).get(key, job.get(key))
            budgets[name] = job["budget_s"]
    training = {name: training_result(job) for name, job in jobs.items()}
    from speechbrain_mamba.utils.atomic import atomic_write_text

    atomic_write_text(results_file, json.dumps(training, indent=2, default=str))
    if args.stage == "train":
        return 0

    specs = analysis_specs(tasks, args.work, args.corpora, args.device, args)
    workers = args.analysis_workers
    if workers is None:
        workers = len(specs) if args.device.startswith("cuda") else 0
    threads = max(1, (os.cpu_count() or 2) // max(1, workers))
    analyses = run_analyses(specs, workers, threads if workers else None)
    rows = [row for key in specs for row in analyses[key]["rows"]]
    settings = {
        "device": args.device,
        "precision": args.precision,
        "budgets": budgets,
        "corpora": {
            k: v.get("num_utterances") for k, v in corpora_info.items()
        },
        "mi_utterances": args.mi_utterances,
        "mi_frames": args.mi_frames,
        "ksg_frames": args.ksg_frames,
        "mine_steps": args.mine_steps,
        "seed": args.seed,
        "hparams": extra_hparams,
        "mamba_ssm": importlib.util.find_spec("mamba_ssm") is not None,
        "gpu": _gpu_name(args.device),
    }
    summary = build_summary(tasks, training, analyses, settings)
    markdown = write_outputs(out, summary, rows, jobs, analyses)
    print(markdown)
    if not summary["ok"]:
        print(
            "mi_curves: FAILED: " + "; ".join(summary["failures"]),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
