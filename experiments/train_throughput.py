"""Training throughput of a SpeechBrain recipe, measured inside each of its
processes (one process, or every rank under ``torchrun``).

This module's command line runs a recipe of this repository, as its
``train.py`` would, with its Brain replaced by a subclass
(:func:`metered_brain`) that attaches a :class:`TrainThroughputMeter` when
``fit`` is called; nothing else of the recipe changes.
The meter counts, per epoch and process, the training batches, utterances
and seconds of audio given to ``fit_batch`` (before any augmentation or
cropping the recipe does inside it), and times the training loop:
from the start of the epoch's training stage, from the end of its first
batch, and to the end of its last batch (CUDA is synchronised at each batch
end; SpeechBrain's ``fit_batch`` already waits for the loss). It logs one
line per epoch and, when ``fit`` returns, writes ``rank<R>.json`` into the
``--stats`` folder, with the world size and backend of the process group.
:func:`aggregate` turns the files of all ranks into throughput figures::

    torchrun --standalone --nproc_per_node 2 \\
        experiments/train_throughput.py --stats STATS --recipe separation \\
        -- recipes/WSJ0Mix/separation/hparams/mamba_tasnet_S.yaml \\
        --data_folder DATA --device cuda

``--recipe`` is ``separation`` (the WSJ0Mix and LibriMix recipes), ``s2s``
or ``ctc`` (the LibriSpeech ASR recipes).

A bare ``--device cuda`` (or ``cuda:0``) given to the recipe becomes
``cuda:<LOCAL_RANK>`` in each process, so that every rank uses its own GPU.
See ``experiments/scale_out.py`` for the 1 vs N process
comparison built on it.

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# isort: off
import speechbrain_mamba  # noqa: F401  (before speechbrain: torchaudio shim)

# isort: on
import speechbrain as sb
import torch

from speechbrain_mamba.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Batch keys holding the input signal, tried in this order.
SIGNAL_KEYS = ("mix_sig", "noisy_sig", "sig")

#: Name of the per-rank statistics files in the ``--stats`` folder.
STATS_PATTERN = "rank{rank}.json"


@dataclass
class EpochStats:
    """Counters of one training epoch in one process.

    Arguments
    ---------
    epoch : int
        Epoch number.
    start : float
        ``time.perf_counter()`` at the start of the training stage.
    """

    epoch: int
    start: float
    batches: int = 0
    utterances: int = 0
    audio_s: float = 0.0
    first_end: Optional[float] = None
    first_utterances: int = 0
    first_audio_s: float = 0.0
    last_end: Optional[float] = None
    loss_sum: float = 0.0
    loss_count: int = 0

    def add_batch(
        self, end: float, utterances: int, audio_s: float, loss: float
    ) -> None:
        """Counts one finished training batch.

        Arguments
        ---------
        end : float
            ``time.perf_counter()`` when the batch was done.
        utterances : int
            Utterances in the batch.
        audio_s : float
            Seconds of audio in the batch (without padding).
        loss : float
            The batch loss (non-finite losses are not averaged).
        """
        if self.first_end is None:
            self.first_end = end
            self.first_utterances = utterances
            self.first_audio_s = audio_s
        self.last_end = end
        self.batches += 1
        self.utterances += utterances
        self.audio_s += audio_s
        if math.isfinite(loss):
            self.loss_sum += loss
            self.loss_count += 1

    def as_dict(self) -> dict:
        """The counters and the derived loop times.

        ``loop_s`` spans the whole training loop of the epoch (loader start
        and first batch included); the ``steady_*`` entries leave out the
        first batch (from its end to the end of the last batch).

        Returns
        -------
        dict
            JSON-ready statistics.

        Example
        -------
        >>> stats = EpochStats(epoch=1, start=0.0)
        >>> stats.add_batch(2.0, 2, 6.0, 1.5)
        >>> stats.add_batch(3.0, 2, 5.0, 0.5)
        >>> d = stats.as_dict()
        >>> d["loop_s"], d["steady_s"], d["steady_audio_s"], d["loss"]
        (3.0, 1.0, 5.0, 1.0)
        """
        done = self.last_end is not None
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "utterances": self.utterances,
            "audio_s": self.audio_s,
            "loop_s": (self.last_end - self.start) if done else 0.0,
            "steady_batches": max(self.batches - 1, 0),
            "steady_utterances": self.utterances - self.first_utterances,
            "steady_audio_s": self.audio_s - self.first_audio_s,
            "steady_s": (self.last_end - self.first_end) if done else 0.0,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "loss": (
                self.loss_sum / self.loss_count if self.loss_count else None
            ),
        }


def batch_size_of(
    batch, sample_rate: Optional[float], signal_key: Optional[str] = None
) -> tuple[int, float]:
    """Utterances and seconds of audio (padding excluded) in a batch.

    Arguments
    ---------
    batch : PaddedBatch
        A SpeechBrain batch with a ``(signal [B, T], relative lengths [B])``
        entry.
    sample_rate : float, optional
        Samples per second of the signal (None: audio seconds are 0).
    signal_key : str, optional
        The entry to read; default: the first of :data:`SIGNAL_KEYS` that
        the batch has.

    Returns
    -------
    tuple
        ``(utterances, audio seconds)``.

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> batch = PaddedBatch(
    ...     [{"id": "a", "sig": torch.zeros(800)},
    ...      {"id": "b", "sig": torch.zeros(400)}]
    ... )
    >>> batch_size_of(batch, 8000)
    (2, 0.15)
    """
    keys = (signal_key,) if signal_key else SIGNAL_KEYS
    for key in keys:
        entry = getattr(batch, key, None)
        if entry is None:
            continue
        signal, lengths = entry
        utterances = int(signal.shape[0])
        if not sample_rate:
            return utterances, 0.0
        samples = float(lengths.float().sum()) * signal.shape[1]
        return utterances, round(samples) / float(sample_rate)
    raise KeyError(
        f"the training batch has none of the signal entries {keys}; pass "
        "--signal-key"
    )


def _synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainThroughputMeter:
    """Counts and times the training batches of one ``Brain``.

    Arguments
    ---------
    sample_rate : float, optional
        Sample rate of the training signals; default: the brain's
        ``hparams.sample_rate``.
    signal_key : str, optional
        Batch entry with the signal (see :func:`batch_size_of`).

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> class Toy(sb.Brain):
    ...     def compute_forward(self, batch, stage):
    ...         return self.modules.lin(batch.sig.data.unsqueeze(-1))
    ...     def compute_objectives(self, out, batch, stage):
    ...         return out.pow(2).mean()
    >>> brain = Toy(
    ...     {"lin": torch.nn.Linear(1, 1)}, torch.optim.SGD,
    ...     run_opts={"device": "cpu"},
    ... )
    >>> meter = TrainThroughputMeter(sample_rate=100).attach(brain)
    >>> data = [
    ...     PaddedBatch([{"id": str(i), "sig": torch.ones(50)}])
    ...     for i in range(3)
    ... ]
    >>> loader = torch.utils.data.DataLoader(data, batch_size=None)
    >>> brain.fit(range(1, 3), loader, progressbar=False)
    >>> [(e["epoch"], e["batches"], e["audio_s"]) for e in meter.records()]
    [(1, 3, 1.5), (2, 3, 1.5)]
    """

    def __init__(
        self,
        sample_rate: Optional[float] = None,
        signal_key: Optional[str] = None,
    ):
        self.sample_rate = sample_rate
        self.signal_key = signal_key
        self.epochs: list[EpochStats] = []
        self.brain = None

    def attach(self, brain: sb.Brain) -> "TrainThroughputMeter":
        """Wraps the brain's ``fit_batch``, ``on_stage_start`` and
        ``on_stage_end`` (instance attributes; the class is untouched).

        Arguments
        ---------
        brain : speechbrain.Brain
            The brain to measure.

        Returns
        -------
        TrainThroughputMeter
            ``self``.
        """
        if self.sample_rate is None:
            self.sample_rate = getattr(brain.hparams, "sample_rate", None)
        self.brain = brain
        fit_batch = brain.fit_batch
        on_stage_start = brain.on_stage_start
        on_stage_end = brain.on_stage_end

        def timed_fit_batch(batch):
            utterances, audio_s = batch_size_of(
                batch, self.sample_rate, self.signal_key
            )
            loss = fit_batch(batch)
            _synchronize(brain.device)
            end = time.perf_counter()
            if not self.epochs:  # fit_batch called outside fit()
                self.epochs.append(EpochStats(epoch=0, start=end))
            loss_t = torch.as_tensor(loss)
            value = float(loss_t) if loss_t.numel() == 1 else math.nan
            self.epochs[-1].add_batch(end, utterances, audio_s, value)
            return loss

        def timed_on_stage_start(stage, epoch=None):
            if stage == sb.Stage.TRAIN:
                _synchronize(brain.device)
                self.epochs.append(
                    EpochStats(epoch=int(epoch or 0), start=time.perf_counter())
                )
            return on_stage_start(stage, epoch)

        def timed_on_stage_end(stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN and self.epochs:
                self.log_epoch(self.epochs[-1])
            return on_stage_end(stage, stage_loss, epoch)

        brain.fit_batch = timed_fit_batch
        brain.on_stage_start = timed_on_stage_start
        brain.on_stage_end = timed_on_stage_end
        return self

    def log_epoch(self, stats: EpochStats) -> None:
        """Logs the throughput of one epoch of this process.

        Arguments
        ---------
        stats : EpochStats
            The epoch's counters.
        """
        d = stats.as_dict()
        rank, world = _rank_and_world()
        rate = d["steady_audio_s"] / d["steady_s"] if d["steady_s"] else 0.0
        logger.info(
            "train throughput (rank %d of %d) epoch %d: %d batches, %d "
            "utterances, %.1f s of audio in %.2f s; %.1f audio s/s after "
            "the first batch",
            rank,
            world,
            d["epoch"],
            d["batches"],
            d["utterances"],
            d["audio_s"],
            d["loop_s"],
            rate,
        )

    def records(self) -> list[dict]:
        """Per-epoch statistics of this process.

        Returns
        -------
        list of dict
            :meth:`EpochStats.as_dict` of each epoch, in order.
        """
        return [e.as_dict() for e in self.epochs]

    def write(self, folder) -> Path:
        """Writes this process's statistics to ``folder/rank<R>.json``.

        Arguments
        ---------
        folder : str or os.PathLike
            Statistics folder (created).

        Returns
        -------
        pathlib.Path
            The file written.
        """
        rank, world = _rank_and_world()
        backend = None
        if torch.distributed.is_available():
            if torch.distributed.is_initialized():
                backend = str(torch.distributed.get_backend())
        device = getattr(self.brain, "device", "cpu")
        record = {
            "rank": rank,
            "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "world_size": world,
            "env_world_size": int(os.environ.get("WORLD_SIZE", 1)),
            "backend": backend,
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(torch.device(device))
                if torch.device(device).type == "cuda"
                else None
            ),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "torch": torch.__version__,
            "sample_rate": self.sample_rate,
            "epochs": self.records(),
        }
        path = Path(folder) / STATS_PATTERN.format(rank=rank)
        atomic_write_text(path, json.dumps(record, indent=2))
        return path


def _rank_and_world() -> tuple[int, int]:
    """Rank and world size of the process group (0, 1 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def aggregate(ranks: Sequence[dict], warmup_epochs: int = 1) -> dict:
    """Throughput over all ranks from their ``rank<R>.json`` records.

    The timed epochs are those after the first ``warmup_epochs`` (all
    epochs when there are no more). In each timed epoch the first batch of
    every rank is left out (loader start-up); the epoch's wall time is the
    slowest rank's time from the end of its first batch to the end of its
    last one, and its work the sum over ranks.

    Arguments
    ---------
    ranks : sequence of dict
        One record per rank (see :meth:`TrainThroughputMeter.write`).
    warmup_epochs : int
        Leading epochs not timed.

    Returns
    -------
    dict
        ``audio_s_per_s``, ``utterances_per_s``, ``timed_epochs``,
        ``timed_wall_s``, ``timed_audio_s``, ``timed_utterances``,
        ``loop_audio_s_per_s`` (whole epoch loops, first batches included),
        ``batches_per_rank`` (epoch -> per-rank batch counts) and
        ``train_loss`` (mean batch loss of the last epoch over all ranks).

    Example
    -------
    >>> def epoch(e, audio):
    ...     return {"epoch": e, "batches": 3, "utterances": 6,
    ...             "audio_s": audio, "loop_s": 3.0, "steady_batches": 2,
    ...             "steady_utterances": 4, "steady_audio_s": 2 * audio / 3,
    ...             "steady_s": 2.0, "loss_sum": 3.0, "loss_count": 3}
    >>> ranks = [{"rank": r, "epochs": [epoch(1, 9.0), epoch(2, 12.0)]}
    ...          for r in range(2)]
    >>> result = aggregate(ranks)
    >>> result["timed_epochs"], result["audio_s_per_s"]
    ([2], 8.0)
    >>> result["batches_per_rank"], result["train_loss"]
    ({'1': [3, 3], '2': [3, 3]}, 1.0)
    """
    if not ranks:
        raise ValueError("no rank statistics to aggregate")
    ranks = sorted(ranks, key=lambda r: r["rank"])
    per_rank = [{e["epoch"]: e for e in r["epochs"]} for r in ranks]
    epochs = sorted(per_rank[0])
    for r, table in zip(ranks, per_rank):
        if sorted(table) != epochs:
            raise ValueError(
                f"rank {r['rank']} trained epochs {sorted(table)} but rank "
                f"{ranks[0]['rank']} trained {epochs}"
            )
    if not epochs:
        raise ValueError("no training epoch was recorded")
    timed = epochs[warmup_epochs:] or epochs
    wall = audio = utterances = loop_wall = loop_audio = 0.0
    for epoch in timed:
        rows = [table[epoch] for table in per_rank]
        wall += max(row["steady_s"] for row in rows)
        audio += sum(row["steady_audio_s"] for row in rows)
        utterances += sum(row["steady_utterances"] for row in rows)
        loop_wall += max(row["loop_s"] for row in rows)
        loop_audio += sum(row["audio_s"] for row in rows)
    last = [table[epochs[-1]] for table in per_rank]
    count = sum(row["loss_count"] for row in last)
    return {
        "audio_s_per_s": audio / wall if wall > 0 else None,
        "utterances_per_s": utterances / wall if wall > 0 else None,
        "loop_audio_s_per_s": (
            loop_audio / loop_wall if loop_wall > 0 else None
        ),
        "timed_epochs": timed,
        "timed_wall_s": wall,
        "timed_audio_s": audio,
        "timed_utterances": int(utterances),
        "batches_per_rank": {
            str(e): [table[e]["batches"] for table in per_rank] for e in epochs
        },
        "train_loss": (
            sum(row["loss_sum"] for row in last) / count if count else None
        ),
    }


def per_rank_device(args: Sequence[str], local_rank: int) -> list[str]:
    """Replaces a bare CUDA device in recipe arguments by the local rank's.

    Arguments
    ---------
    args : sequence of str
        Recipe command-line arguments.
    local_rank : int
        ``LOCAL_RANK`` of this process.

    Returns
    -------
    list of str
        The arguments, with ``--device cuda`` / ``--device=cuda`` (or
        ``cuda:0``) turned into ``cuda:<local_rank>``.

    Example
    -------
    >>> per_rank_device(["h.yaml", "--device", "cuda", "--x=1"], 1)
    ['h.yaml', '--device', 'cuda:1', '--x=1']
    >>> per_rank_device(["--device=cpu"], 1)
    ['--device=cpu']
    """
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--device" and i + 1 < len(out):
            if out[i + 1] in ("cuda", "cuda:0"):
                out[i + 1] = f"cuda:{local_rank}"
        elif arg in ("--device=cuda", "--device=cuda:0"):
            out[i] = f"--device=cuda:{local_rank}"
    return out


def metered_brain(
    brain_class: type,
    stats_folder,
    sample_rate: Optional[float] = None,
    signal_key: Optional[str] = None,
) -> type:
    """A subclass of a recipe's Brain whose ``fit`` measures its training
    and writes the statistics file when it returns.

    Arguments
    ---------
    brain_class : type
        The recipe's ``speechbrain.Brain`` subclass.
    stats_folder : str or os.PathLike
        Where ``rank<R>.json`` goes.
    sample_rate : float, optional
        Sample rate of the signals (default: the brain's hparams).
    signal_key : str, optional
        Batch entry with the signal.

    Returns
    -------
    type
        The subclass (``Metered<Name>``).

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> class Toy(sb.Brain):
    ...     def compute_forward(self, batch, stage):
    ...         return self.modules.lin(batch.sig.data.unsqueeze(-1))
    ...     def compute_objectives(self, out, batch, stage):
    ...         return out.pow(2).mean()
    >>> stats = Path(getfixture("tmpdir"))
    >>> Metered = metered_brain(Toy, stats, sample_rate=100)
    >>> brain = Metered({"lin": torch.nn.Linear(1, 1)}, torch.optim.SGD,
    ...                 run_opts={"device": "cpu"})
    >>> data = [PaddedBatch([{"id": "a", "sig": torch.ones(50)}])] * 2
    >>> loader = torch.utils.data.DataLoader(data, batch_size=None)
    >>> brain.fit(range(1, 2), loader, progressbar=False)
    >>> record = json.loads((stats / "rank0.json").read_text())
    >>> Metered.__name__, [(e["batches"], e["audio_s"]) for e in
    ...                    record["epochs"]]
    ('MeteredToy', [(2, 1.0)])
    """

    def fit(self, *args, **kwargs):
        meter = TrainThroughputMeter(sample_rate, signal_key).attach(self)
        try:
            return brain_class.fit(self, *args, **kwargs)
        finally:
            if meter.epochs:
                meter.write(stats_folder)

    return type(f"Metered{brain_class.__name__}", (brain_class,), {"fit": fit})


def run_recipe(recipe: str, argv: Sequence[str], brain_wrapper) -> None:
    """Runs a recipe of this repository as its ``train.py`` would, with
    ``brain_wrapper(<the recipe's Brain class>)`` as its Brain.

    Arguments
    ---------
    recipe : str
        One of :data:`RECIPES`.
    argv : sequence of str
        The recipe's command line (hparams file, overrides, run options).
    brain_wrapper : callable
        Brain class -> Brain class (e.g. :func:`metered_brain`).
    """
    if recipe == "separation":
        from speechbrain_mamba.separation.brain import SeparationBrain
        from speechbrain_mamba.separation.recipe import train_and_test

        hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
        train_and_test(
            hparams_file,
            overrides,
            run_opts,
            brain_class=brain_wrapper(SeparationBrain),
        )
    elif recipe in ("s2s", "ctc"):
        from speechbrain_mamba.asr.brain import CTCASR, S2SASR
        from speechbrain_mamba.asr.recipe import run_recipe as run_asr

        brain = S2SASR if recipe == "s2s" else CTCASR
        run_asr(list(argv), recipe, brain_class=brain_wrapper(brain))
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {RECIPES}")


#: Recipes :func:`run_recipe` runs.
RECIPES = ("separation", "s2s", "ctc")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``--stats DIR --recipe NAME [--sample-rate SR]
    [--signal-key KEY] -- HPARAMS [recipe arguments]`` (see the module
    docstring).

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (0; errors of the recipe propagate).
    """
    parser = argparse.ArgumentParser(
        prog="python experiments/train_throughput.py",
        description="Run a recipe and record its training throughput in "
        "every process.",
    )
    parser.add_argument("--stats", required=True, type=Path)
    parser.add_argument("--recipe", required=True, choices=RECIPES)
    parser.add_argument("--sample-rate", type=float, default=None)
    parser.add_argument("--signal-key", default=None)
    parser.add_argument("hparams", type=Path, help="recipe hparams file")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.hparams.is_file():
        parser.error(f"recipe hparams file not found: {args.hparams}")
    recipe_args = list(args.recipe_args)
    if recipe_args[:1] == ["--"]:
        recipe_args = recipe_args[1:]
    recipe_args = per_rank_device(
        recipe_args, int(os.environ.get("LOCAL_RANK", 0))
    )
    stats = args.stats.resolve()
    run_recipe(
        args.recipe,
        [str(args.hparams), *recipe_args],
        lambda brain: metered_brain(
            brain, stats, args.sample_rate, args.signal_key
        ),
    )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # every rank done before gloo's threads go: a rank that exits while
        # another still talks to it can abort at interpreter exit
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
