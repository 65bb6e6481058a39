"""SpeechBrain ``Brain`` classes of the self-supervised recipe.

:class:`HuBERTPretrainBrain` trains a
:class:`~speechbrain_mamba.lobes.ssl.hubert.HuBERTModel` to predict the
k-means label of masked frames (cross-entropy on masked frames, plus
``unmasked_weight`` times the loss on unmasked frames)
and reports, on the validation set, the masked-prediction accuracy next to
the chance levels (most frequent label, and 1 / number of clusters).
Validation masks are drawn from a fixed seed, so the accuracy of different
epochs is measured on the same masks.

:class:`CTCFinetuneBrain` fine-tunes the pretrained encoder with a linear CTC
head on characters (the CNN front end stays frozen, the encoder is frozen for
the first ``freeze_encoder_steps`` updates) and reports WER / CER.

Both step a ``TriStageLRSchedule`` (``lr_schedule``) after every optimiser
step, checkpoint at the end of every epoch (and within epochs with
SpeechBrain's ``ckpt_interval_minutes`` / ``ckpt_interval_steps``), resume
from the last checkpoint when restarted and run under DDP (``torchrun``).
Training stops after ``optimizer_step_limit`` updates (SpeechBrain's run
option) or, with ``train_time_budget_s``, after that many seconds of
training (:mod:`speechbrain_mamba.utils.time_budget`; the running epoch is
then validated and checkpointed).

Author
------
speechbrain-mamba developers
"""

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process

from speechbrain_mamba.utils.atomic import atomic_target
from speechbrain_mamba.utils.distributed import all_reduce_sum
from speechbrain_mamba.utils.time_budget import TrainTimeBudget

logger = logging.getLogger(__name__)


def frame_targets(
    labels: torch.Tensor,
    label_lens: torch.Tensor,
    frames: torch.Tensor,
    time: int,
):
    """Pads or cuts padded label sequences to the model's frames.

    Arguments
    ---------
    labels : torch.Tensor
        ``[B, L]`` padded labels.
    label_lens : torch.Tensor
        ``[B]`` relative lengths of the labels.
    frames : torch.Tensor
        ``[B]`` valid model frames.
    time : int
        Padded number of model frames.

    Returns
    -------
    targets : torch.Tensor
        ``[B, time]`` long.
    valid : torch.Tensor
        ``[B, time]`` bool: frames that have both a model output and a
        label.

    Example
    -------
    >>> t, v = frame_targets(torch.tensor([[1, 2, 3]]), torch.tensor([1.0]),
    ...                      torch.tensor([4]), 5)
    >>> t.tolist(), v.tolist()
    ([[1, 2, 3, 0, 0]], [[True, True, True, False, False]])
    """
    batch, length = labels.shape
    n_labels = torch.round(label_lens.float() * length).long().to(frames.device)
    usable = torch.minimum(frames, n_labels)
    targets = torch.zeros(batch, time, dtype=torch.long, device=labels.device)
    keep = min(time, length)
    targets[:, :keep] = labels[:, :keep].long()
    positions = torch.arange(time, device=frames.device)[None]
    return targets, positions < usable[:, None]


class HuBERTPretrainBrain(TrainTimeBudget, sb.Brain):
    """Masked prediction of k-means targets (see the module docstring).

    Needs the modules ``model`` (HuBERTModel) and the hyperparameters
    ``lr_schedule``, ``train_logger``; optional ``unmasked_weight`` [0],
    ``valid_mask_seed`` [1234], ``chance_majority`` and
    ``max_grad_norm`` (SpeechBrain's). Batches provide ``sig`` and
    ``labels``.
    """

    def _hp(self, name: str, default: Any = None) -> Any:
        return getattr(self.hparams, name, default)

    def on_stage_start(self, stage, epoch=None):
        """Resets the accuracy counters (and the validation mask seed)."""
        self._counts = torch.zeros(4, dtype=torch.float64)
        self._eval_batches = 0

    def compute_forward(self, batch, stage):
        """Masks and encodes the batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        generator = None
        if stage != sb.Stage.TRAIN:
            seed = int(self._hp("valid_mask_seed", 1234)) + self._eval_batches
            generator = torch.Generator().manual_seed(seed)
            self._eval_batches += 1
        return self.modules.model(
            wavs, wav_lens, mask=True, generator=generator
        )

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy on masked (and optionally unmasked) frames."""
        labels, label_lens = batch.labels
        logits = predictions.logits
        targets, valid = frame_targets(
            labels, label_lens, predictions.frames, logits.shape[1]
        )
        masked = predictions.mask & valid
        unmasked = ~predictions.mask & valid
        if not bool(masked.any()):
            raise RuntimeError(
                "no masked frame with a label in this batch: check the label "
                "files and the masking options"
            )
        loss = F.cross_entropy(logits[masked], targets[masked])
        weight = float(self._hp("unmasked_weight", 0.0))
        if weight > 0 and bool(unmasked.any()):
            loss = loss + weight * F.cross_entropy(
                logits[unmasked], targets[unmasked]
            )
        with torch.no_grad():
            pred = logits.argmax(-1)
            self._counts += torch.tensor(
                [
                    float((pred[masked] == targets[masked]).sum()),
                    float(masked.sum()),
                    float((pred[unmasked] == targets[unmasked]).sum()),
                    float(unmasked.sum()),
                ],
                dtype=torch.float64,
            )
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule."""
        if should_step:
            self.hparams.lr_schedule(self.optimizer, self.optimizer_step)

    def _accuracies(self) -> Dict[str, float]:
        counts = all_reduce_sum(self._counts.to(self.device)).cpu()
        stats = {}
        if counts[1] > 0:
            stats["acc_masked"] = float(counts[0] / counts[1])
        if counts[3] > 0:
            stats["acc_unmasked"] = float(counts[2] / counts[3])
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs losses, accuracies and chance levels; checkpoints."""
        stats = {"loss": stage_loss, **self._accuracies()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        chance = self._hp("chance_majority")
        if chance is not None:
            stats["chance_majority"] = float(chance)
        num_clusters = getattr(self.hparams, "num_clusters", None)
        if num_clusters:
            stats["chance_uniform"] = 1.0 / float(num_clusters)
        if stage == sb.Stage.VALID:
            self.valid_stats = stats
            lr = self.optimizer.param_groups[0]["lr"]
            # checkpoint first: a kill during the save re-runs the epoch,
            # which must then be logged once
            self.checkpointer.save_and_keep_only(
                meta={
                    "acc_masked": stats.get("acc_masked", 0.0),
                    "loss": stage_loss,
                },
                max_keys=["acc_masked"],
                num_to_keep=int(self._hp("keep_checkpoints", 2)),
            )
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "lr": lr,
                    "steps": self.optimizer_step,
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )


class CTCFinetuneBrain(TrainTimeBudget, sb.Brain):
    """CTC fine-tuning of a pretrained HuBERTModel (see the module
    docstring).

    Needs the modules ``model`` and ``ctc_lin`` and the hyperparameters
    ``log_softmax``, ``ctc_cost``, ``blank_index``, ``lr_schedule``,
    ``train_logger``, ``wer_computer``, ``cer_computer``; optional
    ``freeze_encoder_steps`` [0] and ``finetune_masking`` [False].
    ``self.tokenizer`` must be set (SentencePiece).
    """

    tokenizer = None
    test_wer_file: Optional[str] = None

    def _hp(self, name: str, default: Any = None) -> Any:
        return getattr(self.hparams, name, default)

    def _encoder_frozen(self) -> bool:
        return self.optimizer_step < int(self._hp("freeze_encoder_steps", 0))

    def compute_forward(self, batch, stage):
        """Encoder -> linear -> CTC log-probabilities (and greedy
        hypotheses outside training)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        train = stage == sb.Stage.TRAIN
        mask = train and bool(self._hp("finetune_masking", False))
        with torch.set_grad_enabled(train and not self._encoder_frozen()):
            out = self.modules.model(
                wavs, wav_lens, mask=mask, return_logits=False
            )
        hidden = out.hidden if torch.is_grad_enabled() else out.hidden.detach()
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(hidden))
        lens = out.lengths
        hyps = None
        if not train:
            hyps = sb.decoders.ctc_greedy_decode(
                p_ctc, lens, blank_id=self.hparams.blank_index
            )
        return p_ctc, lens, hyps

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; WER / CER outside training."""
        p_ctc, lens, hyps = predictions
        tokens, tokens_lens = batch.tokens
        loss = self.hparams.ctc_cost(p_ctc, tokens, lens, tokens_lens)
        if stage != sb.Stage.TRAIN:
            # outputs beyond the tokenizer's vocabulary (output_neurons may be
            # larger) are never targets; an untrained model may emit them
            vocab = self.tokenizer.vocab_size()
            texts = [
                self.tokenizer.decode_ids([int(t) for t in seq if t < vocab])
                for seq in hyps
            ]
            predicted = [text.split(" ") for text in texts]
            targets = [words.split(" ") for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted, targets)
            self.cer_metric.append(batch.id, predicted, targets)
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule."""
        if should_step:
            self.hparams.lr_schedule(self.optimizer, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        """Creates the error-rate metrics."""
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.wer_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, checkpoints (lowest WER) and writes the test WER file."""
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["WER"] = self.wer_metric.summarize("error_rate")
        stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.VALID:
            self.valid_stats = stats
            # checkpoint first: a kill during the save re-runs the epoch,
            # which must then be logged once
            self.checkpointer.save_and_keep_only(
                meta={"WER": stats["WER"]},
                min_keys=["WER"],
                num_to_keep=int(self._hp("keep_checkpoints", 2)),
            )
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "steps": self.optimizer_step,
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            return
        self.test_stats = stats
        self.hparams.train_logger.log_stats(
            stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
            test_stats=stats,
        )
        if self.test_wer_file and if_main_process():
            with atomic_target(self.test_wer_file) as tmp:
                with open(tmp, "w", encoding="utf-8") as fout:
                    self.wer_metric.write_stats(fout)


def pretraining_dataset(
    csv_path: str,
    labels: Dict[str, np.ndarray],
    data_folder: str,
    frame_stride: int,
    sample_rate: int = 16000,
    max_samples: Optional[int] = None,
    train: bool = False,
    sorting: str = "ascending",
):
    """Dataset of waveforms and frame labels for pretraining.

    Training utterances longer than ``max_samples`` are cropped at a random
    frame boundary (the labels with them).

    Arguments
    ---------
    csv_path : str
        SpeechBrain CSV (``ID``, ``duration``, ``wav``).
    labels : dict
        ID -> label array (from :func:`~speechbrain_mamba.ssl.targets.
        read_km`).
    data_folder : str
        Replacement of ``$data_root``.
    frame_stride : int
        Samples per label frame.
    sample_rate : int
        Expected sample rate of the audio.
    max_samples : int, optional
        Crop length for training.
    train : bool
        Training set (random crops).
    sorting : str
        ``"ascending"``, ``"descending"`` or ``"random"`` (by duration).

    Returns
    -------
    DynamicItemDataset
        Items with ``id``, ``sig`` and ``labels``.
    """
    from speechbrain.dataio.dataset import DynamicItemDataset

    from speechbrain_mamba.utils.io import read_audio

    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"data CSV {csv_path} does not exist")
    data = DynamicItemDataset.from_csv(
        csv_path=csv_path, replacements={"data_root": data_folder}
    )
    missing = [i for i in data.data_ids if i not in labels]
    if missing:
        raise ValueError(
            f"{len(missing)} utterances of {csv_path} have no k-means labels "
            f"(e.g. {missing[:3]}); re-run the target extraction"
        )
    if sorting in ("ascending", "descending"):
        data = data.filtered_sorted(
            sort_key="duration", reverse=sorting == "descending"
        )
    elif sorting != "random":
        raise ValueError(
            f"sorting must be ascending, descending or random, got {sorting!r}"
        )

    @sb.utils.data_pipeline.takes("id", "wav")
    @sb.utils.data_pipeline.provides("sig", "labels")
    def pipeline(utt_id, wav):
        sig = read_audio(wav, sample_rate)
        lab = torch.from_numpy(labels[utt_id].astype(np.int64))
        if train and max_samples and sig.shape[0] > max_samples:
            n_starts = (sig.shape[0] - max_samples) // frame_stride + 1
            first = int(torch.randint(n_starts, (1,)))
            sig = sig[first * frame_stride : first * frame_stride + max_samples]
            lab = lab[first : first + max_samples // frame_stride + 1]
        yield sig
        yield lab

    data.add_dynamic_item(pipeline)
    data.set_output_keys(["id", "sig", "labels"])
    return data
