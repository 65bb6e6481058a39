"""The SpeechBrain ``Brain`` of the separation recipes (WSJ0-mix, LibriMix).

:class:`SeparationBrain` trains any encoder / mask network / decoder model
defined in YAML (Mamba-TasNet, DPMamba, SepFormer, ...) with the recipe of
SpeechBrain's separation recipes and of the Mamba-TasNet paper:

- permutation-invariant SI-SNR loss (``get_si_snr_with_pitwrapper``);
- the batch is skipped when its loss is non-finite or above
  ``loss_upper_lim``; with ``threshold_byloss``, utterances already better
  than ``threshold`` (negative SI-SNR, e.g. -40 dB) are left out of the loss;
- gradient-norm clipping (``clip_grad_norm``), fp32 / bf16 / fp16 training
  through SpeechBrain's ``precision`` option;
- speed perturbation (each source on its own, then re-mixed), wave drop and
  random cropping of the training signals, all optional;
- a step-wise :class:`~speechbrain_mamba.separation.lr_schedule.
  WarmupCosineScheduler` (paper) or SpeechBrain's epoch-wise
  ``ReduceLROnPlateau`` (SepFormer recipe);
- validation reports SI-SNR and SI-SNRi; the test stage writes per-utterance
  and average SI-SNR, SI-SNRi, SDR, SDRi, PESQ and STOI to a CSV file
  (see :mod:`speechbrain_mamba.separation.metrics`) and saves a few separated
  examples;
- an optional wall-clock budget (``train_time_budget_s``, see
  :mod:`speechbrain_mamba.utils.time_budget`) stops training after the
  running batch, validates and checkpoints;
- on one GPU, ``cuda_graphs: True`` replays the whole mask network's
  training forward and backward from CUDA graphs (one per input shape: crop
  the signals with ``limit_training_signal_len``), which removes the launch
  overhead that bounds a Mamba mask network on short inputs. Mamba-TasNet's
  mask network does this by itself, for every length (its own
  ``cuda_graphs``, on by default); the option serves mask networks that do
  not (DPMamba).

The encoder, mask network and decoder are called through ``self.modules`` so
that, under ``torchrun``, DDP synchronises their gradients. Decisions that
must agree across processes (skipping a batch, the time budget) are taken
collectively.

Author
------
speechbrain-mamba developers
"""

import logging
import math
from pathlib import Path
from typing import Optional

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.dataloader import LoopedLoader
from torch.utils.data import DataLoader

from speechbrain_mamba.separation.lr_schedule import WarmupCosineScheduler
from speechbrain_mamba.separation.metrics import METRICS, separation_metrics
from speechbrain_mamba.separation.results import write_results_csv
from speechbrain_mamba.utils.atomic import atomic_write_wav
from speechbrain_mamba.utils.distributed import any_rank
from speechbrain_mamba.utils.graphed_training import GraphedTraining
from speechbrain_mamba.utils.time_budget import TrainTimeBudget

logger = logging.getLogger(__name__)


def reset_layer_recursively(layer: torch.nn.Module) -> None:
    """Re-initialises a module tree the way SpeechBrain's separation recipe
    does: ``reset_parameters()`` on the module and, recursively, on every
    sub-module. Mamba mixers re-apply the Mamba initialisation in their
    ``reset_parameters`` (step-size bias, ``A_log``, ``D``), so it survives.

    Arguments
    ---------
    layer : torch.nn.Module
        Root of the tree.

    Example
    -------
    >>> lin = torch.nn.Linear(2, 2)
    >>> before = lin.weight.clone()
    >>> reset_layer_recursively(torch.nn.Sequential(lin))
    >>> bool((lin.weight != before).any())
    True
    """
    if hasattr(layer, "reset_parameters"):
        layer.reset_parameters()
    for child in layer.modules():
        if child is not layer:
            reset_layer_recursively(child)


#: The optional hparams of :class:`SeparationBrain`, name -> value used
#: when the YAML file leaves the key out (``lr_scheduler``, ``train_logger``,
#: ``epoch_counter`` and ``test_results_file``: None means none, or
#: ``<output_folder>/test_results.csv``). The recipe YAML files list each
#: with this default in a comment (tests/test_recipe_hparams.py).
OPTIONAL_HPARAMS = {
    "threshold_byloss": False,  # leave out utterances below ``threshold``
    "loss_upper_lim": math.inf,  # skip batches with a larger loss
    "clip_grad_norm": 5.0,
    "use_speedperturb": False,  # with ``speed_perturb``
    "use_wavedrop": False,  # with ``drop_chunk`` and ``drop_freq``
    "limit_training_signal_len": False,  # with ``training_signal_len``
    "cuda_graphs": False,
    "train_time_budget_s": None,
    "lr_scheduler": None,
    "train_logger": None,
    "epoch_counter": None,
    "test_results_file": None,
    "save_audio": False,
    "n_audio_to_save": 0,
    "compute_pesq": True,
    "compute_stoi": True,
}


class SeparationBrain(TrainTimeBudget, sb.Brain):
    """Trains and evaluates an encoder / masknet / decoder separator.

    Expects ``modules`` with keys ``encoder``, ``masknet`` and ``decoder``
    and hparams with at least ``num_spks``, ``sample_rate``; the optional
    ones and their defaults are :data:`OPTIONAL_HPARAMS` (``threshold``,
    ``speed_perturb``, ``drop_chunk`` / ``drop_freq`` and
    ``training_signal_len`` are needed only when the option that uses them
    is on).

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> modules = {
    ...     "encoder": Encoder(kernel_size=16, out_channels=8),
    ...     "masknet": MambaTasNetMaskNet(8, num_layers=1),
    ...     "decoder": Decoder(
    ...         in_channels=8, out_channels=1, kernel_size=16, stride=8,
    ...         bias=False,
    ...     ),
    ... }
    >>> brain = SeparationBrain(
    ...     modules, hparams={"num_spks": 2, "sample_rate": 8000},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> brain.separate(torch.randn(2, 800)).shape
    torch.Size([2, 800, 2])
    """

    # ------------------------------------------------------------------
    # Options
    # ------------------------------------------------------------------
    def _opt(self, name: str):
        """An optional hparam: the YAML value or its :data:`OPTIONAL_HPARAMS`
        default (a name missing from the table is a KeyError)."""
        return getattr(self.hparams, name, OPTIONAL_HPARAMS[name])

    # ------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------
    def separate(
        self, mix: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Separates a batch of mixtures.

        Arguments
        ---------
        mix : torch.Tensor
            ``[B, T]`` mixtures.
        lengths : torch.Tensor, optional
            Relative lengths ``[B]``; estimates are zeroed past them.

        Returns
        -------
        torch.Tensor
            ``[B, T, num_spks]`` estimated sources.
        """
        num_spks = self.hparams.num_spks
        mix_w = self.modules.encoder(mix)
        masks = self._mask_network()(mix_w)
        sep_h = mix_w.unsqueeze(0) * masks
        est = torch.stack(
            [self.modules.decoder(sep_h[i]) for i in range(num_spks)], dim=-1
        )
        if est.dim() == 2:  # decoder squeezed a batch of one
            est = est.unsqueeze(0)
        time_in, time_out = mix.shape[1], est.shape[1]
        if time_out < time_in:
            est = F.pad(est, (0, 0, 0, time_in - time_out))
        else:
            est = est[:, :time_in]
        if lengths is not None:
            frames = torch.round(lengths * time_in).long()
            keep = (
                torch.arange(time_in, device=est.device)[None] < frames[:, None]
            )
            est = est * keep[..., None].to(est.dtype)
        return est

    def _mask_network(self):
        """The mask network; with the ``cuda_graphs`` option, through a
        :class:`~speechbrain_mamba.utils.graphed_training.GraphedTraining`
        that replays its training forward and backward from CUDA graphs."""
        masknet = self.modules.masknet
        if not self._opt("cuda_graphs"):
            return masknet
        graphed = getattr(self, "_graphed_masknet", None)
        if graphed is None or graphed.module is not masknet:
            if isinstance(masknet, torch.nn.parallel.DistributedDataParallel):
                logger.info("cuda_graphs: not under DDP; training eagerly")
            graphed = GraphedTraining(masknet)
            self._graphed_masknet = graphed
        return graphed

    def _signals(self, batch):
        mix, lengths = batch.mix_sig
        targets = torch.stack(
            [
                getattr(batch, f"s{i + 1}_sig").data
                for i in range(self.hparams.num_spks)
            ],
            dim=-1,
        )
        return (
            mix.to(self.device),
            targets.to(self.device),
            lengths.to(self.device),
        )

    def augment(
        self, mix: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time augmentation (speed perturbation of each source and
        re-mixing, wave drop, random crop), each enabled by its hparam.

        Arguments
        ---------
        mix : torch.Tensor
            ``[B, T]`` mixtures.
        targets : torch.Tensor
            ``[B, T, num_spks]`` sources.
        lengths : torch.Tensor
            ``[B]`` relative lengths.

        Returns
        -------
        mix, targets : torch.Tensor
            The augmented batch.
        """
        if self._opt("use_speedperturb"):
            perturbed = [
                self.hparams.speed_perturb(targets[..., i])
                for i in range(targets.shape[-1])
            ]
            length = min(p.shape[1] for p in perturbed)
            targets = torch.stack([p[:, :length] for p in perturbed], dim=-1)
            mix = targets.sum(-1)
        if self._opt("use_wavedrop"):
            mix = self.hparams.drop_chunk(mix, lengths)
            mix = self.hparams.drop_freq(mix)
        if self._opt("limit_training_signal_len"):
            length = int(self.hparams.training_signal_len)
            if mix.shape[1] > length:
                start = int(torch.randint(0, mix.shape[1] - length + 1, (1,)))
                mix = mix[:, start : start + length]
                targets = targets[:, start : start + length]
        return mix, targets

    def compute_forward(self, batch, stage):
        """Separates the batch (with augmentation in training).

        Arguments
        ---------
        batch : PaddedBatch
            Batch with ``mix_sig`` and ``s<i>_sig``.
        stage : sb.Stage
            Training stage.

        Returns
        -------
        est, targets, mix : torch.Tensor
            ``[B, T, C]`` estimates, ``[B, T, C]`` targets (augmented in
            training) and ``[B, T]`` mixtures.
        """
        mix, targets, lengths = self._signals(batch)
        if stage == sb.Stage.TRAIN:
            with torch.no_grad():
                mix, targets = self.augment(mix, targets, lengths)
            if mix.shape[1] != batch.mix_sig.data.shape[1]:
                lengths = None  # lengths no longer apply after augmentation
        est = self.separate(mix, lengths if mix.shape[0] > 1 else None)
        return est, targets, mix

    def compute_objectives(self, predictions, batch, stage):
        """Per-utterance PIT loss (negative SI-SNR, dB).

        Arguments
        ---------
        predictions : tuple
            Output of :meth:`compute_forward`.
        batch : PaddedBatch
            The batch (unused).
        stage : sb.Stage
            Training stage (unused).

        Returns
        -------
        torch.Tensor
            ``[B]`` losses.
        """
        est, targets, _ = predictions
        return self.hparams.loss(targets.float(), est.float())

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is True on any process."""
        return any_rank(flag, self.device)

    def _training_loss(self, losses: torch.Tensor) -> Optional[torch.Tensor]:
        if self._opt("threshold_byloss"):
            losses = losses[losses > self.hparams.threshold]
            if losses.numel() == 0:
                return None
        return losses.mean()

    def fit_batch(self, batch):
        """Trains on one batch; returns the loss (NaN for a skipped batch).

        Arguments
        ---------
        batch : PaddedBatch
            Training batch.

        Returns
        -------
        torch.Tensor
            Detached loss.
        """
        with self.training_ctx:
            predictions = self.compute_forward(batch, sb.Stage.TRAIN)
            losses = self.compute_objectives(predictions, batch, sb.Stage.TRAIN)
        loss = self._training_loss(losses)
        upper = self._opt("loss_upper_lim")
        bad = (
            loss is None
            or not bool(torch.isfinite(loss.detach()))
            or float(loss.detach()) >= upper
        )
        if self._any_rank(bad):
            self.nonfinite_count += 1
            logger.info(
                "skipping a batch with empty, non-finite or too large loss "
                "(%d so far this epoch)",
                self.nonfinite_count,
            )
            self.optimizer.zero_grad(set_to_none=True)
            return torch.tensor(math.nan)

        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self._opt("clip_grad_norm")
        params = [p for p in self.modules.parameters() if p.requires_grad]
        if clip is None or clip <= 0:
            clip = math.inf  # only measures the norm
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if torch.isfinite(norm) or self.scaler.is_enabled():
            # The scaler skips the update itself on inf/NaN gradients.
            self.scaler.step(self.optimizer)
            self.optimizer_step += 1
        else:
            logger.info("non-finite gradients: skipping the update")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        scheduler = self._opt("lr_scheduler")
        if isinstance(scheduler, WarmupCosineScheduler):
            scheduler(self.optimizer, self.optimizer_step)
        return loss.detach().cpu()

    def _configure_schedule(self, epoch_counter, train_loader) -> None:
        scheduler = self._opt("lr_scheduler")
        if not isinstance(scheduler, WarmupCosineScheduler):
            return
        if scheduler.total_steps is None:
            epochs = getattr(epoch_counter, "limit", None)
            if epochs is None:
                raise ValueError(
                    "WarmupCosineScheduler needs total_steps when the epoch "
                    "counter has no limit"
                )
            scheduler.total_steps = int(epochs) * len(train_loader)
            logger.info(
                "cosine schedule over %d optimizer steps", scheduler.total_steps
            )

    def on_fit_start(self):
        """Recovers the last checkpoint and sets the learning rate of the
        step-wise schedule for the recovered step."""
        super().on_fit_start()
        scheduler = self._opt("lr_scheduler")
        if isinstance(scheduler, WarmupCosineScheduler):
            scheduler(self.optimizer, self.optimizer_step)

    def fit(
        self,
        epoch_counter,
        train_set,
        valid_set=None,
        progressbar=None,
        train_loader_kwargs=None,
        valid_loader_kwargs=None,
    ):
        """Same as :meth:`speechbrain.Brain.fit`; also sizes the cosine
        schedule from the training loader. See the parent for arguments."""
        train_loader_kwargs = dict(train_loader_kwargs or {})
        valid_loader_kwargs = dict(valid_loader_kwargs or {})
        if not isinstance(train_set, (DataLoader, LoopedLoader)):
            train_set = self.make_dataloader(
                train_set, stage=sb.Stage.TRAIN, **train_loader_kwargs
            )
        self._configure_schedule(epoch_counter, train_set)
        super().fit(
            epoch_counter,
            train_set,
            valid_set,
            progressbar=progressbar,
            valid_loader_kwargs=valid_loader_kwargs,
        )

    # ------------------------------------------------------------------
    # Evaluation
    # ------------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Resets the stage accumulators."""
        self._sums = {"si-snr": 0.0, "si-snr_i": 0.0}
        self._count = 0
        self._rows = []
        self._audio_saved = 0

    def evaluate_batch(self, batch, stage):
        """Validation / test batch: loss, SI-SNR(i), test metrics and audio.

        Arguments
        ---------
        batch : PaddedBatch
            Evaluation batch.
        stage : sb.Stage
            ``VALID`` or ``TEST``.

        Returns
        -------
        torch.Tensor
            Mean loss of the batch.
        """
        with torch.no_grad(), self.evaluation_ctx:
            predictions = self.compute_forward(batch, stage)
        est, targets, mix = predictions
        est = est.float()
        losses = self.compute_objectives((est, targets, mix), batch, stage)
        baseline = mix.unsqueeze(-1).expand_as(targets)
        base_losses = self.hparams.loss(targets.float(), baseline.float())
        finite = torch.isfinite(losses)
        self._sums["si-snr"] += float(-losses[finite].sum())
        self._sums["si-snr_i"] += float(-(losses - base_losses)[finite].sum())
        self._count += int(finite.sum())
        if stage == sb.Stage.TEST:
            self._test_metrics(batch, est, targets, mix)
        return losses.mean().detach().cpu()

    def _test_metrics(self, batch, est, targets, mix) -> None:
        _, lengths = batch.mix_sig
        total = mix.shape[1]
        for i, utt_id in enumerate(batch.id):
            n = int(round(float(lengths[i]) * total))
            row = {"snt_id": utt_id}
            row.update(
                separation_metrics(
                    est[i, :n],
                    targets[i, :n],
                    mix[i, :n],
                    self.hparams.sample_rate,
                    compute_pesq=self._opt("compute_pesq"),
                    compute_stoi=self._opt("compute_stoi"),
                )
            )
            self._rows.append(row)
            if self._opt("save_audio") and self._audio_saved < int(
                self._opt("n_audio_to_save")
            ):
                self.save_audio(utt_id, mix[i, :n], targets[i, :n], est[i, :n])
                self._audio_saved += 1

    def save_audio(
        self,
        utt_id: str,
        mix: torch.Tensor,
        targets: torch.Tensor,
        est: torch.Tensor,
    ) -> Path:
        """Writes the mixture, the sources and the estimates (peak
        normalised) of one utterance to ``<output_folder>/audio_results``.

        Arguments
        ---------
        utt_id : str
            Utterance ID (file name prefix).
        mix : torch.Tensor
            ``[T]`` mixture.
        targets, est : torch.Tensor
            ``[T, num_spks]`` references and estimates.

        Returns
        -------
        pathlib.Path
            The folder written to.
        """
        folder = Path(self.hparams.output_folder) / "audio_results"
        if not sb.utils.distributed.if_main_process():
            return folder
        rate = self.hparams.sample_rate

        def norm(x):
            return x / x.abs().max().clamp_min(1e-8)

        atomic_write_wav(folder / f"{utt_id}_mix.wav", norm(mix), rate)
        for k in range(targets.shape[1]):
            atomic_write_wav(
                folder / f"{utt_id}_source{k + 1}.wav",
                norm(targets[:, k]),
                rate,
            )
            atomic_write_wav(
                folder / f"{utt_id}_source{k + 1}hat.wav", norm(est[:, k]), rate
            )
        return folder

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, schedules the learning rate, checkpoints and writes the test
        results."""
        stats = {"loss": stage_loss}
        if stage != sb.Stage.TRAIN and self._count:
            stats["si-snr"] = self._sums["si-snr"] / self._count
            stats["si-snr_i"] = self._sums["si-snr_i"] / self._count
        logger_ = self._opt("train_logger")
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            self.valid_stats = stats
            lr = self.optimizer.param_groups[0]["lr"]
            scheduler = self._opt("lr_scheduler")
            if isinstance(scheduler, sb.nnet.schedulers.ReduceLROnPlateau):
                lr, next_lr = scheduler([self.optimizer], epoch, stage_loss)
                sb.nnet.schedulers.update_learning_rate(self.optimizer, next_lr)
            # checkpoint first: a kill during the save re-runs the epoch,
            # which must then be logged once
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta=dict(stats), min_keys=["loss"]
                )
            if logger_ is not None:
                logger_.log_stats(
                    stats_meta={"epoch": epoch, "lr": lr},
                    train_stats=getattr(self, "train_stats", None),
                    valid_stats=stats,
                )
            return
        # TEST
        self.report_test(stats, METRICS)

    def report_test(self, stats: dict, metrics) -> None:
        """Logs the test statistics and writes the per-utterance metrics CSV
        (with its average row) to ``test_results_file``.

        Arguments
        ---------
        stats : dict
            Test-stage statistics to log.
        metrics : sequence of str
            Metric columns of the CSV.
        """
        self.test_stats = stats
        train_logger = self._opt("train_logger")
        if train_logger is not None:
            counter = self._opt("epoch_counter")
            train_logger.log_stats(
                stats_meta={"Epoch loaded": getattr(counter, "current", None)},
                test_stats=stats,
            )
        if sb.utils.distributed.if_main_process():
            path = self._opt("test_results_file") or (
                Path(self.hparams.output_folder) / "test_results.csv"
            )
            avg = write_results_csv(path, self._rows, metrics)
            self.test_results = avg
            logger.info(
                "test results (%d utterances) written to %s: %s",
                len(self._rows),
                path,
                ", ".join(f"{k}={avg[k]:.3f}" for k in metrics),
            )
