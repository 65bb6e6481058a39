"""Scale-out benchmark: the separation and recognition recipes under
``torchrun`` with 1 and N processes (GPUs, or CPU processes over gloo) on
the mini corpora; training throughput, checkpoints and world size checked.

Each run is a fresh experiment of the recipe (WSJ0Mix separation with
Mamba-TasNet, LibriSpeech S2S with ConMamba small), started as
``torchrun --standalone --nproc_per_node N`` through
``experiments/train_throughput.py``, which records every rank's training
batches and loop times. Every run does the same work: the
same number of epochs over the same training set, with the same batch size
per process, so with N processes each epoch takes N times fewer steps per
process (SpeechBrain's ``DistributedSampler`` gives each rank 1/N of the
data) and every step processes N times more samples in total. The recipes
run unchanged with their hparams files (``--sep-hparams``, default
``mamba_tasnet_S``; ``--asr-hparams``, default ``conmamba_small``) and
these overrides: the epochs and batch size above, a 50-step learning-rate
warm-up, no dynamic batching and a small SentencePiece vocabulary
(``--vocab``) for recognition, no beam search in validation, and no test
decoding (recognition) or a 2-mixture test without PESQ / STOI
(separation): the runs exist to train, checkpoint and be timed.

Throughput is the training audio (and utterances) of all ranks per wall
second of the training loop, over the epochs after the first (warm-up:
CUDA context, kernel selection, allocator) and without the first batch of
each epoch (data-loader start-up); validation, checkpointing and process
start-up are not timed. The ratio column divides by the 1-process run of
the same task.

Each run must pass these checks, or the benchmark exits with status 1
after printing the end of the failing run's log:

- the recipe exited 0 and logged its last epoch;
- there is one statistics file per rank, each reporting a process group of
  N processes (world size) with the expected backend, and every rank ran
  ``ceil(ceil(n_train / N) / batch)`` batches in every epoch;
- ``save/`` holds the SpeechBrain checkpoints expected after the last
  epoch: the newest ``CKPT+*`` folder has ``counter.ckpt`` = the number of
  epochs, at most one other folder is kept (the best by the recipe's
  metric, never worse than the newest), and every folder holds exactly the
  recoverables of the recipe (``CKPT.yaml`` with ``end-of-epoch: true``).

Outputs ``OUT/scale_out.json`` (one row per run, plus the settings) and
``OUT/scale_out.md`` (table), rewritten after every run; the experiment of
each run is in ``OUT/<task>/nproc<N>`` (deleted and recreated at the start
of the run, so that the recipe does not resume an older experiment).
Rows of an earlier command with the same settings are kept, so the tasks
can be run by separate commands into one report::

    python experiments/scale_out.py \\
        --corpus-dir .gpudata/scale_out/corpus --out results/scale_out \\
        --nproc 1 2 --device cuda

``--corpus-dir`` holds ``wsj0-2mix/`` (with ``wav8k/min/{tr,cv,tt}``) and
``LibriSpeech/`` (with ``train-clean-100``, ``dev-clean`` and
``test-clean``) as written by :mod:`speechbrain_mamba.data.mini_corpus`;
``--build`` builds missing ones (needs espeak-ng).

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from jobs import REPO, Job, log_tail, repo_env, run_job
from train_throughput import aggregate

from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.checkpoints import COMPLETE_MARKER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One recipe of the benchmark.

    Arguments
    ---------
    name : str
        Task name (``separation`` or ``recognition``).
    recipe : str
        Recipe of ``experiments/train_throughput.py`` (``--recipe``).
    hparams_dir : str
        Folder of its hparams files, relative to the repository root.
    corpus : str
        Sub-folder of ``--corpus-dir`` with its data.
    corpus_dirs : tuple of str
        Folders that must exist inside the corpus.
    train_csv : str
        Training CSV written by the recipe, relative to the output folder.
    recoverables : tuple of str
        Files of each checkpoint folder (``CKPT.yaml`` included).
    metric : str
        Checkpoint meta key the recipe keeps the best checkpoint by.
    higher_is_better : bool
        Direction of ``metric``.
    """

    name: str
    recipe: str
    hparams_dir: str
    corpus: str
    corpus_dirs: tuple
    train_csv: str
    recoverables: tuple
    metric: str
    higher_is_better: bool


TASKS = {
    "separation": Task(
        name="separation",
        recipe="separation",
        hparams_dir="recipes/WSJ0Mix/separation/hparams",
        corpus="wsj0-2mix",
        corpus_dirs=tuple(
            f"wav8k/min/{split}/{kind}"
            for split in ("tr", "cv", "tt")
            for kind in ("mix", "s1", "s2")
        ),
        train_csv="save/wsj_tr.csv",
        recoverables=(
            "CKPT.yaml",
            "brain.ckpt",
            "counter.ckpt",
            "dataloader-TRAIN.ckpt",
            "decoder.ckpt",
            "encoder.ckpt",
            "masknet.ckpt",
            "optimizer.ckpt",
        ),
        metric="loss",
        higher_is_better=False,
    ),
    "recognition": Task(
        name="recognition",
        recipe="s2s",
        hparams_dir="recipes/LibriSpeech/ASR/S2S/hparams",
        corpus="LibriSpeech",
        corpus_dirs=("train-clean-100", "dev-clean", "test-clean"),
        train_csv="train.csv",
        recoverables=(
            "CKPT.yaml",
            "brain.ckpt",
            "counter.ckpt",
            "dataloader-TRAIN.ckpt",
            "model.ckpt",
            "noam_scheduler.ckpt",
            "normalizer.ckpt",
            "optimizer.ckpt",
        ),
        metric="ACC",
        higher_is_better=True,
    ),
}

#: Tiny models for CPU checks of the pipeline (``--tiny``); separation
#: also crops its training signals to 0.5 s (the audio counted is still
#: that of the batches given to ``fit_batch``).
TINY_MODELS = {
    "separation": {
        "N_encoder_out": 16,
        "out_channels": 16,
        "num_layers": 1,
        "limit_training_signal_len": True,
        "training_signal_len": 4000,
    },
    "recognition": {
        "d_model": 16,
        "nhead": 2,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "d_ffn": 32,
        "kernel_size": 7,
        "d_state": 4,
    },
}


class RunError(RuntimeError):
    """A benchmark run failed or did not leave the expected outputs."""


def _yaml_value(value) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def recipe_overrides(
    task: str, args: argparse.Namespace, corpus: Path, out: Path
) -> dict:
    """Hyperparameter overrides of one run (the fixed work of the task).

    Arguments
    ---------
    task : str
        ``separation`` or ``recognition``.
    args : argparse.Namespace
        Benchmark options (``epochs``, batch sizes, ``num_workers``,
        ``vocab``, ``tiny``).
    corpus : pathlib.Path
        The task's data folder.
    out : pathlib.Path
        The run's output folder.

    Returns
    -------
    dict
        Override name -> value.

    Example
    -------
    >>> ns = argparse.Namespace(epochs=2, sep_batch_size=2, asr_batch_size=8,
    ...                         num_workers=0, vocab=60, tiny=False)
    >>> o = recipe_overrides("recognition", ns, Path("/c"), Path("/o"))
    >>> o["batch_size"], o["dynamic_batching"], o["test_splits"]
    (8, False, [])
    """
    if task == "separation":
        values = {
            "data_folder": corpus,
            "output_folder": out,
            "number_of_epochs": args.epochs,
            # a short warm-up so that the loss moves in a few epochs (the
            # learning rate does not change the work of a step)
            "warmup_steps": 50,
            "batch_size": args.sep_batch_size,
            "train_dataloader_opts": {
                "batch_size": args.sep_batch_size,
                "num_workers": args.num_workers,
                "shuffle": True,
            },
            "eval_dataloader_opts": {
                "batch_size": 1,
                "num_workers": args.num_workers,
            },
            # the test stage only checks that the checkpoint loads
            "test_limit": 2,
            "compute_pesq": False,
            "compute_stoi": False,
            "save_audio": False,
        }
    elif task == "recognition":
        values = {
            "data_folder": corpus,
            "output_folder": out,
            "train_splits": ["train-clean-100"],
            "dev_splits": ["dev-clean"],
            "test_splits": [],  # no test decoding: training is timed
            "test_csv": [],
            "number_of_epochs": args.epochs,
            "batch_size": args.asr_batch_size,
            "dynamic_batching": False,
            "num_workers": args.num_workers,
            "output_neurons": args.vocab,
            "n_warmup_steps": 50,
            "valid_search_interval": 1000000,  # no beam search in valid
            "avg_checkpoints": 1,
            "ckpt_interval_minutes": 0,
        }
    else:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    if args.tiny:
        values.update(TINY_MODELS[task])
    return values


def torchrun_command(
    task: Task,
    hparams: Path,
    overrides: dict,
    nproc: int,
    device: str,
    precision: Optional[str],
    stats: Path,
) -> list[str]:
    """The ``torchrun`` command line of one run.

    Arguments
    ---------
    task : Task
        The recipe.
    hparams : pathlib.Path
        Its hparams file.
    overrides : dict
        Hyperparameter overrides.
    nproc : int
        Processes (``--nproc_per_node``).
    device : str
        ``cuda`` (one GPU per process, NCCL) or ``cpu`` (gloo).
    precision : str, optional
        ``fp32``, ``bf16`` or ``fp16`` (None: the recipe's).
    stats : pathlib.Path
        Statistics folder of the throughput meter.

    Returns
    -------
    list of str
        The command.

    Example
    -------
    >>> cmd = torchrun_command(TASKS["separation"], Path("h.yaml"),
    ...                        {"number_of_epochs": 2}, 2, "cpu", "fp32",
    ...                        Path("stats"))
    >>> cmd[1:6]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    >>> cmd[-8:]
    ['--number_of_epochs', '2', '--device', 'cpu', '--distributed_backend', \
'gloo', '--precision', 'fp32']
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(REPO / "experiments" / "train_throughput.py"),
        "--stats",
        str(stats),
        "--recipe",
        task.recipe,
        "--",
        str(hparams),
        "--noprogressbar",
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", _yaml_value(value)]
    backend = "nccl" if device.startswith("cuda") else "gloo"
    cmd += ["--device", device, "--distributed_backend", backend]
    if precision:
        cmd += ["--precision", precision]
    return cmd


def expected_batches(n_train: int, nproc: int, batch_size: int) -> int:
    """Training batches per process and epoch under SpeechBrain's DDP
    sampling (``DistributedSampler`` pads the data to a multiple of the
    world size; the last batch may be short).

    Arguments
    ---------
    n_train : int
        Training examples.
    nproc : int
        Processes.
    batch_size : int
        Batch size per process.

    Returns
    -------
    int
        Batches of each process.

    Example
    -------
    >>> expected_batches(100, 1, 2), expected_batches(100, 2, 2)
    (50, 25)
    >>> expected_batches(7, 2, 2)
    2
    """
    return math.ceil(math.ceil(n_train / nproc) / batch_size)


def count_csv_rows(path: Path) -> int:
    """Data rows of a CSV file (header excluded).

    Arguments
    ---------
    path : pathlib.Path
        The CSV file.

    Returns
    -------
    int
        Number of rows.
    """
    if not path.is_file():
        raise RunError(f"the recipe did not write its training CSV {path}")
    with open(path, encoding="utf-8", newline="") as fin:
        return sum(1 for _ in csv.DictReader(fin))


def check_checkpoints(save_folder: Path, task: Task, epochs: int) -> dict:
    """Checks the checkpoints left by a run (see the module docstring).

    Arguments
    ---------
    save_folder : pathlib.Path
        The recipe's ``save`` folder.
    task : Task
        The recipe (expected files, metric).
    epochs : int
        Epochs the run trained.

    Returns
    -------
    dict
        ``path`` (newest checkpoint), ``epoch``, ``kept`` (folders kept)
        and ``meta`` (newest checkpoint's meta data).

    Example
    -------
    >>> tmpdir = Path(getfixture("tmpdir"))
    >>> ckpt = tmpdir / "CKPT+2024-01-01+00-00-00+00"
    >>> ckpt.mkdir()
    >>> for name in TASKS["separation"].recoverables:
    ...     _ = (ckpt / name).write_text("1")
    >>> _ = (ckpt / COMPLETE_MARKER).write_text("")
    >>> _ = (ckpt / "CKPT.yaml").write_text(
    ...     "end-of-epoch: true\\nloss: 3.0\\nunixtime: 1.0\\n")
    >>> check_checkpoints(tmpdir, TASKS["separation"], 1)["kept"]
    1
    >>> check_checkpoints(tmpdir, TASKS["separation"], 2)
    Traceback (most recent call last):
    ...
    scale_out.RunError: newest checkpoint \
... is from epoch 1, expected 2
    """
    folders = sorted(save_folder.glob("CKPT+*"))
    if not folders:
        raise RunError(f"no checkpoint (CKPT+*) in {save_folder}")
    if len(folders) > 2:
        raise RunError(
            f"{len(folders)} checkpoints in {save_folder}; the recipe keeps "
            "the newest and the best one only"
        )
    found = []
    expected = sorted([*task.recoverables, COMPLETE_MARKER])
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir())
        if names != expected:
            raise RunError(
                f"checkpoint {folder} holds {names}; expected {expected} "
                f"(a saved checkpoint marked {COMPLETE_MARKER})"
            )
        empty = [
            n for n in task.recoverables if (folder / n).stat().st_size == 0
        ]
        if empty:
            raise RunError(f"empty files {empty} in checkpoint {folder}")
        meta = yaml.safe_load((folder / "CKPT.yaml").read_text()) or {}
        if meta.get("end-of-epoch") is not True:
            raise RunError(f"{folder} is not an end-of-epoch checkpoint")
        if task.metric not in meta:
            raise RunError(f"{folder}/CKPT.yaml has no {task.metric!r}")
        epoch = int((folder / "counter.ckpt").read_text().strip())
        found.append((float(meta.get("unixtime", 0.0)), epoch, folder, meta))
    found.sort(key=lambda item: item[0])
    _, epoch, newest, meta = found[-1]
    if epoch != epochs:
        raise RunError(
            f"newest checkpoint {newest} is from epoch {epoch}, expected "
            f"{epochs}"
        )
    for _, other_epoch, folder, other in found[:-1]:
        better = other[task.metric] - meta[task.metric]
        if not task.higher_is_better:
            better = -better
        if other_epoch >= epoch or better < 0:
            raise RunError(
                f"checkpoint {folder} (epoch {other_epoch}) is kept but is "
                f"not better than the newest by {task.metric}"
            )
    return {
        "path": str(newest),
        "epoch": epoch,
        "kept": len(found),
        "meta": {k: v for k, v in meta.items() if k != "unixtime"},
    }


def check_stats(
    stats_folder: Path,
    nproc: int,
    backend: str,
    epochs: int,
    batches: int,
) -> list[dict]:
    """Reads and checks the per-rank statistics of a run.

    Arguments
    ---------
    stats_folder : pathlib.Path
        Folder with ``rank<R>.json``.
    nproc : int
        Processes launched.
    backend : str
        Expected process-group backend (``nccl`` or ``gloo``).
    epochs : int
        Epochs trained.
    batches : int
        Expected batches per rank and epoch.

    Returns
    -------
    list of dict
        The records, by rank.
    """
    files = sorted(stats_folder.glob("rank*.json"))
    records = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    ranks = sorted(r["rank"] for r in records)
    if ranks != list(range(nproc)):
        raise RunError(
            f"statistics from ranks {ranks} in {stats_folder}; expected "
            f"ranks 0..{nproc - 1}"
        )
    for r in records:
        if r["world_size"] != nproc or backend not in str(r["backend"]):
            raise RunError(
                f"rank {r['rank']} ran in a process group of world size "
                f"{r['world_size']} ({r['backend']}); expected {nproc} "
                f"({backend})"
            )
        trained = [e["epoch"] for e in r["epochs"]]
        if trained != list(range(1, epochs + 1)):
            raise RunError(
                f"rank {r['rank']} trained epochs {trained}; expected "
                f"1..{epochs}"
            )
        counts = [e["batches"] for e in r["epochs"]]
        if any(c != batches for c in counts):
            raise RunError(
                f"rank {r['rank']} ran {counts} batches per epoch; expected "
                f"{batches} (the training set split over {nproc} processes)"
            )
    devices = [r["device"] for r in records]
    if len(set(devices)) != len(devices) and backend == "nccl":
        raise RunError(f"ranks share a GPU: devices {devices}")
    return sorted(records, key=lambda r: r["rank"])


def recipe_precision(hparams: Path) -> Optional[str]:
    """The ``precision`` an hparams file sets (None if it sets none).

    Arguments
    ---------
    hparams : pathlib.Path
        Recipe hparams file.

    Returns
    -------
    str or None
        E.g. ``"bf16"``.

    Example
    -------
    >>> recipe_precision(REPO / TASKS["separation"].hparams_dir /
    ...                  "mamba_tasnet_S.yaml")
    'bf16'
    """
    match = re.search(
        r"^precision:\s*(\w+)",
        hparams.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    return match.group(1) if match else None


def run_one(
    task_name: str, nproc: int, args: argparse.Namespace, corpus: Path
) -> dict:
    """Runs one task with ``nproc`` processes and checks its outputs.

    Arguments
    ---------
    task_name : str
        ``separation`` or ``recognition``.
    nproc : int
        Processes.
    args : argparse.Namespace
        Benchmark options.
    corpus : pathlib.Path
        The task's data folder.

    Returns
    -------
    dict
        The result row (``status`` is ``ok`` or ``failed`` with ``error``).
    """
    task = TASKS[task_name]
    hparams = REPO / task.hparams_dir / f"{args.hparams[task_name]}.yaml"
    out = (Path(args.out) / task_name / f"nproc{nproc}").resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stats = out / "throughput"
    overrides = recipe_overrides(task_name, args, corpus, out)
    precision = args.precision or (
        None if args.device.startswith("cuda") else "fp32"
    )
    cmd = torchrun_command(
        task, hparams, overrides, nproc, args.device, precision, stats
    )
    batch_size = (
        args.sep_batch_size
        if task_name == "separation"
        else args.asr_batch_size
    )
    row = {
        "task": task_name,
        "hparams": str(hparams.relative_to(REPO)),
        "corpus": str(corpus),
        "nproc": nproc,
        "device": args.device,
        "precision": precision or recipe_precision(hparams),
        "batch_per_process": batch_size,
        "epochs": args.epochs,
        "output_folder": str(out),
        "log": str(out / "torchrun.log"),
        "command": cmd,
    }
    env = repo_env(OMP_NUM_THREADS=str(args.omp_threads))
    logger.info("%s, %d process(es): %s", task_name, nproc, " ".join(cmd))
    start = time.monotonic()
    try:
        job = run_job(
            Job(cmd, out / "torchrun.log", args.timeout, cwd=out, env=env)
        )
        row["total_wall_s"] = round(time.monotonic() - start, 1)
        if job.timed_out:
            raise RunError(f"torchrun ran past --timeout {args.timeout} s")
        if job.returncode != 0:
            raise RunError(f"torchrun exited with status {job.returncode}")
        train_log = out / "train_log.txt"
        if not re.search(
            rf"^epoch: {args.epochs},",
            train_log.read_text(encoding="utf-8")
            if train_log.is_file()
            else "",
            flags=re.MULTILINE,
        ):
            raise RunError(f"{train_log} does not log epoch {args.epochs}")
        n_train = count_csv_rows(out / task.train_csv)
        batches = expected_batches(n_train, nproc, batch_size)
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        records = check_stats(stats, nproc, backend, args.epochs, batches)
        ckpt = check_checkpoints(out / "save", task, args.epochs)
        result = aggregate(records, warmup_epochs=args.warmup_epochs)
    except (RunError, OSError, ValueError) as err:
        row.setdefault("total_wall_s", round(time.monotonic() - start, 1))
        row.update(status="failed", error=str(err))
        tail = log_tail(out / "torchrun.log", 60)
        print(
            f"\n=== {task_name}, {nproc} process(es) FAILED: {err}\n"
            f"--- last lines of {out / 'torchrun.log'}:\n{tail}\n===",
            file=sys.stderr,
        )
        return row
    row.update(
        status="ok",
        world_size=records[0]["world_size"],
        backend=records[0]["backend"],
        devices=[r["device"] for r in records],
        device_name=records[0].get("device_name"),
        n_train=n_train,
        batches_per_process_epoch=batches,
        audio_s_per_s=result["audio_s_per_s"],
        utterances_per_s=result["utterances_per_s"],
        loop_audio_s_per_s=result["loop_audio_s_per_s"],
        timed_epochs=result["timed_epochs"],
        timed_wall_s=round(result["timed_wall_s"], 3),
        timed_audio_s=round(result["timed_audio_s"], 2),
        timed_utterances=result["timed_utterances"],
        final_train_loss=result["train_loss"],
        checkpoint=ckpt["path"],
        checkpoint_epoch=ckpt["epoch"],
        checkpoints_kept=ckpt["kept"],
        checkpoint_meta=ckpt["meta"],
    )
    return row


def add_ratios(rows: list[dict]) -> None:
    """Sets ``ratio_vs_1`` and ``efficiency`` (ratio / nproc) of each
    successful row from the 1-process row of its task.

    Arguments
    ---------
    rows : list of dict
        Result rows (changed in place).

    Example
    -------
    >>> rows = [{"task": "t", "nproc": 1, "status": "ok", "audio_s_per_s": 2},
    ...         {"task": "t", "nproc": 2, "status": "ok", "audio_s_per_s": 3}]
    >>> add_ratios(rows)
    >>> rows[1]["ratio_vs_1"], rows[1]["efficiency"]
    (1.5, 0.75)
    """
    base = {
        r["task"]: r["audio_s_per_s"]
        for r in rows
        if r["nproc"] == 1 and r["status"] == "ok" and r["audio_s_per_s"]
    }
    for r in rows:
        ref = base.get(r["task"])
        if r["status"] == "ok" and ref and r["audio_s_per_s"] is not None:
            r["ratio_vs_1"] = round(r["audio_s_per_s"] / ref, 3)
            r["efficiency"] = round(r["ratio_vs_1"] / r["nproc"], 3)
        else:
            r["ratio_vs_1"] = r["efficiency"] = None


def markdown_table(rows: list[dict], out: Path) -> str:
    """The result table.

    Arguments
    ---------
    rows : list of dict
        Result rows.
    out : pathlib.Path
        Benchmark folder (checkpoint paths are shown relative to it).

    Returns
    -------
    str
        Markdown table.
    """

    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [
        "| task | nproc | world size | batches/process/epoch | "
        "audio s/s | utt/s | ratio vs 1 | final train loss | checkpoint | "
        "status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ckpt = r.get("checkpoint")
        if ckpt:
            try:
                ckpt = str(Path(ckpt).relative_to(out.resolve()))
            except ValueError:
                pass
        lines.append(
            f"| {r['task']} | {r['nproc']} | {r.get('world_size', 'n/a')} | "
            f"{r.get('batches_per_process_epoch', 'n/a')} | "
            f"{num(r.get('audio_s_per_s'), '.1f')} | "
            f"{num(r.get('utterances_per_s'), '.1f')} | "
            f"{num(r.get('ratio_vs_1'), '.2f')} | "
            f"{num(r.get('final_train_loss'), '.3f')} | "
            f"{ckpt or 'n/a'} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], settings: dict, out: Path) -> None:
    """Writes ``scale_out.json`` and ``scale_out.md`` atomically.

    Arguments
    ---------
    rows : list of dict
        Result rows.
    settings : dict
        Benchmark settings (stored in the JSON file).
    out : pathlib.Path
        Benchmark folder.
    """
    add_ratios(rows)
    atomic_write_text(
        out / "scale_out.json",
        json.dumps({"settings": settings, "rows": rows}, indent=2),
    )
    header = (
        f"Scale-out on {settings['device']} ({settings['device_name']}): "
        f"{settings['epochs']} epochs, epochs after the first "
        f"{settings['warmup_epochs']} timed (first batch of each epoch "
        "excluded); same batch per process, so N processes do each epoch "
        "in 1/N of the steps.\n\n"
    )
    atomic_write_text(out / "scale_out.md", header + markdown_table(rows, out))


def previous_rows(
    path: Path, settings: dict, planned: Sequence[tuple]
) -> list[dict]:
    """Rows of an earlier invocation with the same settings, except those
    about to be rerun (so that tasks can be run by separate commands).

    Arguments
    ---------
    path : pathlib.Path
        ``scale_out.json`` of the benchmark folder.
    settings : dict
        Settings of this invocation.
    planned : sequence of tuple
        ``(task, nproc)`` pairs this invocation runs.

    Returns
    -------
    list of dict
        Rows to keep (none if the settings differ or there is no file).

    Example
    -------
    >>> tmpdir = Path(getfixture("tmpdir"))
    >>> rows = [{"task": "separation", "nproc": n} for n in (1, 2)]
    >>> _ = (tmpdir / "r.json").write_text(
    ...     json.dumps({"settings": {"a": 1}, "rows": rows}))
    >>> previous_rows(tmpdir / "r.json", {"a": 1}, [("separation", 2)])
    [{'task': 'separation', 'nproc': 1}]
    >>> previous_rows(tmpdir / "r.json", {"a": 2}, [])
    []
    """
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return []
    if old.get("settings") != json.loads(json.dumps(settings)):
        return []
    return [
        r
        for r in old.get("rows", [])
        if (r.get("task"), r.get("nproc")) not in set(planned)
    ]


def find_corpora(
    corpus_dir: Path, tasks: Sequence[str], build: bool, seed: int = 0
) -> dict:
    """The data folder of each task, checked (and built with ``build``).

    Arguments
    ---------
    corpus_dir : pathlib.Path
        Folder with ``wsj0-2mix/`` and ``LibriSpeech/``.
    tasks : sequence of str
        Tasks to run.
    build : bool
        Build missing corpora with the mini-corpus builder (espeak-ng).
    seed : int
        Seed of built corpora.

    Returns
    -------
    dict
        Task -> data folder.
    """
    from speechbrain_mamba.data import mini_corpus

    builders = {
        "separation": lambda p: mini_corpus.build_wsj0_2mix(
            p, seed=seed, num_utterances=140
        ),
        "recognition": lambda p: mini_corpus.build_librispeech(
            p, seed=seed, num_utterances=200
        ),
    }
    folders = {}
    for name in tasks:
        task = TASKS[name]
        folder = (corpus_dir / task.corpus).resolve()
        missing = [d for d in task.corpus_dirs if not (folder / d).is_dir()]
        if missing and build:
            builders[name](folder)
            missing = [d for d in task.corpus_dirs if not (folder / d).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{name}: the corpus folder {folder} lacks {missing}; build "
                "it with `python -m speechbrain_mamba.data.mini_corpus "
                f"{'wsj0-2mix' if name == 'separation' else 'librispeech'} "
                f"--out {folder}` (needs espeak-ng) or pass --build"
            )
        folders[name] = folder
    return folders


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        import platform

        return platform.processor() or platform.machine()
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available")
    return torch.cuda.get_device_name(0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring).

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every run passed its checks, 1 otherwise, 2 on bad options.
    """
    parser = argparse.ArgumentParser(
        prog="python experiments/scale_out.py",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--corpus-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS)
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--sep-batch-size", type=int, default=2)
    parser.add_argument("--asr-batch-size", type=int, default=8)
    parser.add_argument("--sep-hparams", default="mamba_tasnet_S")
    parser.add_argument("--asr-hparams", default="conmamba_small")
    parser.add_argument(
        "--vocab", type=int, default=120, help="SentencePiece vocabulary"
    )
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="default: the recipe's on cuda, fp32 on cpu",
    )
    parser.add_argument("--omp-threads", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per run"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models (pipeline check)"
    )
    parser.add_argument(
        "--build", action="store_true", help="build missing corpora"
    )
    args = parser.parse_args(argv)
    if min(args.nproc) < 1 or args.epochs < 1 or args.warmup_epochs < 0:
        parser.error("--nproc and --epochs must be >= 1, --warmup-epochs >= 0")
    args.nproc = sorted(set(args.nproc))  # the 1-process run first
    args.hparams = {
        "separation": args.sep_hparams,
        "recognition": args.asr_hparams,
    }
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for task in args.tasks:
            hparams = (
                REPO / TASKS[task].hparams_dir / f"{args.hparams[task]}.yaml"
            )
            if not hparams.is_file():
                raise FileNotFoundError(f"{task}: no hparams file {hparams}")
        corpora = find_corpora(args.corpus_dir, args.tasks, args.build)
        device_name = _device_name(args.device)
        if args.device == "cuda":
            import torch

            if max(args.nproc) > torch.cuda.device_count():
                raise RuntimeError(
                    f"--nproc {max(args.nproc)} needs as many GPUs; "
                    f"{torch.cuda.device_count()} visible"
                )
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "device": args.device,
        "device_name": device_name,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "sep_batch_size": args.sep_batch_size,
        "asr_batch_size": args.asr_batch_size,
        "num_workers": args.num_workers,
        "omp_threads": args.omp_threads,
        "tiny": args.tiny,
        "corpus_dir": str(args.corpus_dir.resolve()),
        "vocab": args.vocab,
        "hparams": args.hparams,
        "precision": args.precision,
    }
    planned = [(task, n) for task in args.tasks for n in args.nproc]
    rows = previous_rows(out / "scale_out.json", settings, planned)
    new_rows = []
    for task, nproc in planned:
        new_rows.append(run_one(task, nproc, args, corpora[task]))
        rows.append(new_rows[-1])
        rows.sort(key=lambda r: (list(TASKS).index(r["task"]), r["nproc"]))
        write_report(rows, settings, out)
    print((out / "scale_out.md").read_text(encoding="utf-8"))
    failed = [r for r in new_rows if r["status"] != "ok"]
    for r in failed:
        print(
            f"FAILED: {r['task']} with {r['nproc']} process(es): "
            f"{r['error']} (log: {r['log']})",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
