"""SpeechBrain ``Brain`` classes shared by the LibriSpeech ASR recipes.

:class:`S2SASR` trains an attention encoder-decoder with a joint CTC loss
(the model is any SpeechBrain ``TransformerASR``, e.g.
:class:`~speechbrain_mamba.lobes.asr.transformer_asr.MambaTransformerASR`)
and decodes with the beam searcher given in the hyperparameters.
:class:`CTCASR` trains an encoder with CTC only. Both average the best
checkpoints before evaluating and write WER/CER files at test time.

The hyperparameter keys used here follow SpeechBrain's LibriSpeech
``transformer`` and ``CTC`` recipes (``compute_features``, ``normalize``,
``CNN``, ``Transformer``, ``ctc_lin``, ``seq_lin``, ``fea_augment``,
``noam_annealing``, ...).

Author
------
speechbrain-mamba developers
"""

import logging
from typing import Any, Dict, List, Optional

import speechbrain as sb
from speechbrain.utils.distributed import if_main_process

from speechbrain_mamba.utils.atomic import atomic_target
from speechbrain_mamba.utils.time_budget import TrainTimeBudget

logger = logging.getLogger(__name__)


def _write_stats_atomically(metric: Any, path: str) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fout:
            metric.write_stats(fout)


class _AveragingBrain(TrainTimeBudget, sb.core.Brain):
    """Averages the best checkpoints into the model before evaluation and
    writes test statistics; ``train_time_budget_s`` stops training (see
    :mod:`speechbrain_mamba.utils.time_budget`)."""

    def _decode_tokens(self, tokens) -> str:
        """Token ids to text; ids the tokenizer does not know (a model with
        more outputs than tokenizer entries, e.g. a char vocabulary smaller
        than ``output_neurons``) are dropped."""
        size = self.tokenizer.vocab_size()
        return self.tokenizer.decode_ids([int(t) for t in tokens if t < size])

    #: Name of the metric that ranks checkpoints, and whether higher is
    #: better (set by the subclasses).
    ckpt_key = "ACC"
    ckpt_key_is_max = True

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the average of the best checkpoints into the model."""
        super().on_evaluate_start(max_key=max_key, min_key=min_key)
        if self.checkpointer is None:
            return
        ckpts = self.checkpointer.find_checkpoints(
            max_key=max_key,
            min_key=min_key,
            max_num_checkpoints=getattr(self.hparams, "avg_checkpoints", None),
        )
        if not ckpts:
            raise RuntimeError(
                f"no checkpoint with a {max_key or min_key!r} score in "
                f"{self.checkpointer.checkpoints_dir}: train the model first"
            )
        averaged = sb.utils.checkpoints.average_checkpoints(
            ckpts, recoverable_name="model"
        )
        self.hparams.model.load_state_dict(averaged, strict=True)
        self.hparams.model.eval()
        logger.info("Evaluating the average of %d checkpoint(s)", len(ckpts))

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Steps the learning-rate schedule after each optimiser step."""
        if should_step:
            self.hparams.noam_annealing(self.optimizer)

    def _augment(self, stage) -> bool:
        warmup = getattr(self.hparams, "augment_warmup", 0)
        return (
            stage == sb.Stage.TRAIN
            and hasattr(self.hparams, "fea_augment")
            and self.optimizer_step > warmup
        )

    def _features(self, wavs, wav_lens, stage):
        feats = self.hparams.compute_features(wavs)
        epoch = self.hparams.epoch_counter.current
        return self.modules.normalize(feats, wav_lens, epoch=epoch)

    def _log_epoch(self, stage, stage_stats, epoch):
        if stage == sb.Stage.VALID:
            epoch_stats = {
                "epoch": epoch,
                "lr": self.hparams.noam_annealing.current_lr,
                "steps": self.optimizer_step,
                "optimizer": self.optimizer.__class__.__name__,
            }
            # checkpoint first: a kill during the save re-runs the epoch,
            # which must then be logged once
            key_kwargs = (
                {"max_keys": [self.ckpt_key]}
                if self.ckpt_key_is_max
                else {"min_keys": [self.ckpt_key]}
            )
            self.checkpointer.save_and_keep_only(
                meta={
                    self.ckpt_key: stage_stats[self.ckpt_key],
                    "epoch": epoch,
                },
                num_to_keep=self.hparams.avg_checkpoints,
                **key_kwargs,
            )
            self.hparams.train_logger.log_stats(
                stats_meta=epoch_stats,
                train_stats=self.train_stats,
                valid_stats=stage_stats,
            )
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )
            if if_main_process():
                _write_stats_atomically(self.wer_metric, self.test_wer_file)
                cer_file = getattr(self, "test_cer_file", None)
                if cer_file:
                    _write_stats_atomically(self.cer_metric, cer_file)


class S2SASR(_AveragingBrain):
    """Joint CTC / attention encoder-decoder training and beam search.

    Needs the hyperparameters ``compute_features``, ``normalize`` (module),
    ``CNN``, ``Transformer``, ``ctc_lin``, ``seq_lin`` (modules),
    ``log_softmax``, ``ctc_cost``, ``seq_cost``, ``ctc_weight``,
    ``valid_search``, ``test_search``, ``valid_search_interval``,
    ``noam_annealing``, ``epoch_counter``, ``model``, ``avg_checkpoints``,
    ``train_logger``, ``error_rate_computer``, ``cer_computer``,
    ``acc_computer``, ``pad_index`` and optionally ``fea_augment``.
    The tokenizer (a ``SentencePieceProcessor``) is set as ``self.tokenizer``.
    """

    ckpt_key = "ACC"
    ckpt_key_is_max = True

    def compute_forward(self, batch, stage):
        """Features -> CNN -> encoder/decoder -> log-probabilities (and beam
        search hypotheses outside training)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos
        feats = self._features(wavs, wav_lens, stage)
        if self._augment(stage):
            feats, wav_lens = self.hparams.fea_augment(feats, wav_lens)
            tokens_bos = self.hparams.fea_augment.replicate_labels(tokens_bos)

        src = self.modules.CNN(feats)
        enc_out, pred = self.modules.Transformer(
            src, tokens_bos, wav_lens, pad_idx=self.hparams.pad_index
        )
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(enc_out))
        p_seq = self.hparams.log_softmax(self.modules.seq_lin(pred))

        hyps = None
        if stage == sb.Stage.TEST:
            hyps, _, _, _ = self.hparams.test_search(enc_out.detach(), wav_lens)
        elif stage == sb.Stage.VALID and self._is_search_epoch():
            hyps, _, _, _ = self.hparams.valid_search(
                enc_out.detach(), wav_lens
            )
        return p_ctc, p_seq, wav_lens, hyps

    def _is_search_epoch(self) -> bool:
        epoch = self.hparams.epoch_counter.current
        return epoch % self.hparams.valid_search_interval == 0

    def compute_objectives(self, predictions, batch, stage):
        """CTC + KL-divergence (label smoothing) loss; error rates outside
        training."""
        p_ctc, p_seq, wav_lens, hyps = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        tokens, tokens_lens = batch.tokens
        if self._augment(stage):
            augment = self.hparams.fea_augment
            (
                tokens,
                tokens_lens,
                tokens_eos,
                tokens_eos_lens,
            ) = augment.replicate_multiple_labels(
                tokens, tokens_lens, tokens_eos, tokens_eos_lens
            )
        loss_seq = self.hparams.seq_cost(
            p_seq, tokens_eos, length=tokens_eos_lens
        ).sum()
        loss_ctc = self.hparams.ctc_cost(
            p_ctc, tokens, wav_lens, tokens_lens
        ).sum()
        weight = self.hparams.ctc_weight
        loss = weight * loss_ctc + (1 - weight) * loss_seq

        if stage != sb.Stage.TRAIN:
            if hyps is not None:
                predicted = [
                    self._decode_tokens(seq).split(" ") for seq in hyps
                ]
                targets = [words.split(" ") for words in batch.wrd]
                self.wer_metric.append(batch.id, predicted, targets)
                self.cer_metric.append(batch.id, predicted, targets)
            self.acc_metric.append(p_seq, tokens_eos, tokens_eos_lens)
        return loss

    def on_stage_start(self, stage, epoch):
        """Creates the metrics of validation and test stages."""
        if stage != sb.Stage.TRAIN:
            self.acc_metric = self.hparams.acc_computer()
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch):
        """Logs statistics and saves checkpoints."""
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        stage_stats["ACC"] = self.acc_metric.summarize()
        if stage == sb.Stage.TEST or self._is_search_epoch():
            stage_stats["WER"] = self.wer_metric.summarize("error_rate")
            stage_stats["CER"] = self.cer_metric.summarize("error_rate")
        self._log_epoch(stage, stage_stats, epoch)


class CTCASR(_AveragingBrain):
    """CTC-only encoder training; greedy decoding for validation and the
    ``test_searcher`` attribute (e.g. a ``CTCBeamSearcher``) for testing.

    Needs the hyperparameters ``compute_features``, ``normalize``, ``CNN``,
    ``Transformer``, ``ctc_lin``, ``log_softmax``, ``ctc_cost``,
    ``blank_index``, ``noam_annealing``, ``epoch_counter``, ``model``,
    ``avg_checkpoints``, ``train_logger``, ``wer_computer``,
    ``cer_computer`` and optionally ``fea_augment``. ``self.tokenizer`` is a
    SentencePiece processor.
    """

    ckpt_key = "WER"
    ckpt_key_is_max = False
    test_searcher = None

    def compute_forward(self, batch, stage):
        """Features -> CNN -> encoder -> CTC log-probabilities (and
        hypotheses outside training)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self._features(wavs, wav_lens, stage)
        if self._augment(stage):
            feats, wav_lens = self.hparams.fea_augment(feats, wav_lens)
        src = self.modules.CNN(feats)
        enc_out, _ = self.modules.Transformer(src, tgt=None, wav_len=wav_lens)
        p_ctc = self.hparams.log_softmax(self.modules.ctc_lin(enc_out))
        texts = None
        if stage == sb.Stage.TEST and self.test_searcher is not None:
            texts = [hyp[0].text for hyp in self.test_searcher(p_ctc, wav_lens)]
        elif stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(
                p_ctc, wav_lens, blank_id=self.hparams.blank_index
            )
            texts = [self._decode_tokens(seq) for seq in hyps]
        return p_ctc, wav_lens, texts

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; error rates outside training."""
        p_ctc, wav_lens, texts = predictions
        tokens, tokens_lens = batch.tokens
        if self._augment(stage):
            augment = self.hparams.fea_augment
            tokens = augment.replicate_labels(tokens)
            tokens_lens = augment.replicate_labels(tokens_lens)
        loss = self.hparams.ctc_cost(p_ctc, tokens, wav_lens, tokens_lens)
        if stage != sb.Stage.TRAIN:
            predicted = [text.split(" ") for text in texts]
            targets = [words.split(" ") for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted, targets)
            self.cer_metric.append(batch.id, predicted, targets)
        return loss

    def on_stage_start(self, stage, epoch):
        """Creates the metrics of validation and test stages."""
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.wer_computer()
            self.cer_metric = self.hparams.cer_computer()

    def on_stage_end(self, stage, stage_loss, epoch):
        """Logs statistics and saves checkpoints."""
        stage_stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stage_stats
            return
        stage_stats["WER"] = self.wer_metric.summarize("error_rate")
        stage_stats["CER"] = self.cer_metric.summarize("error_rate")
        self._log_epoch(stage, stage_stats, epoch)


def loader_options(
    hparams: Dict[str, Any], train_sampler: Any, valid_sampler: Any
) -> List[Optional[Dict[str, Any]]]:
    """Data-loader keyword arguments for training and validation, using the
    dynamic batch samplers when given.

    Arguments
    ---------
    hparams : dict
        Hyperparameters (``train_dataloader_opts``, ``valid_dataloader_opts``,
        ``num_workers``).
    train_sampler, valid_sampler : Sampler or None
        Batch samplers.

    Returns
    -------
    list
        ``[train_loader_kwargs, valid_loader_kwargs]``.

    Example
    -------
    >>> hp = {"train_dataloader_opts": {"batch_size": 2},
    ...       "valid_dataloader_opts": {"batch_size": 1}, "num_workers": 0}
    >>> loader_options(hp, None, None)
    [{'batch_size': 2}, {'batch_size': 1}]
    """
    train_opts = dict(hparams["train_dataloader_opts"])
    valid_opts = dict(hparams["valid_dataloader_opts"])
    if train_sampler is not None:
        train_opts = {
            "batch_sampler": train_sampler,
            "num_workers": hparams.get("num_workers", 0),
        }
    if valid_sampler is not None:
        valid_opts = {"batch_sampler": valid_sampler}
    return [train_opts, valid_opts]
