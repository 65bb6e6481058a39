"""The speech-enhancement recipe (``recipes/Voicebank/enhancement``).

Enhancement is separation with one source: the recipe reuses the
separation recipe's data handling, training loop and checkpointing
(:class:`~speechbrain_mamba.separation.brain.SeparationBrain` with
``num_spks: 1``: a mask network with one output and the SI-SNR loss), and
replaces its test stage by :class:`EnhancementBrain`'s, which writes per
utterance and on average SI-SNR, SI-SNR improvement, SDR (and improvement),
wideband PESQ and STOI of the enhanced and of the noisy signal.

Usage (from the recipe folder)::

    python train.py hparams/mamba_tasnet_S.yaml --data_folder DATA

Author
------
speechbrain-mamba developers
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import speechbrain as sb

from speechbrain_mamba.separation import recipe as separation_recipe
from speechbrain_mamba.separation.brain import (
    SeparationBrain,
)
from speechbrain_mamba.separation.enhancement.metrics import (
    ENHANCEMENT_METRICS,
    enhancement_metrics,
)

logger = logging.getLogger(__name__)


class EnhancementBrain(SeparationBrain):
    """:class:`SeparationBrain` with one source and enhancement metrics at
    test time (``test_results_file``: :data:`ENHANCEMENT_METRICS`).

    Example
    -------
    >>> import torch
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> modules = {
    ...     "encoder": Encoder(kernel_size=16, out_channels=8),
    ...     "masknet": MambaTasNetMaskNet(8, num_layers=1, num_spks=1),
    ...     "decoder": Decoder(8, 1, kernel_size=16, stride=8, bias=False),
    ... }
    >>> brain = EnhancementBrain(
    ...     modules, hparams={"num_spks": 1, "sample_rate": 16000},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> brain.separate(torch.randn(2, 800)).shape
    torch.Size([2, 800, 1])
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if int(self.hparams.num_spks) != 1:
            raise ValueError(
                f"enhancement needs num_spks: 1, got {self.hparams.num_spks}"
            )

    def _test_metrics(self, batch, est, targets, mix) -> None:
        _, lengths = batch.mix_sig
        total = mix.shape[1]
        for i, utt_id in enumerate(batch.id):
            n = int(round(float(lengths[i]) * total))
            row = {"snt_id": utt_id}
            row.update(
                enhancement_metrics(
                    est[i, :n, 0],
                    targets[i, :n, 0],
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

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Training / validation as in separation; the test stage writes the
        enhancement metrics."""
        if stage != sb.Stage.TEST:
            return super().on_stage_end(stage, stage_loss, epoch)
        stats = {"loss": stage_loss}
        if self._count:
            stats["si-snr"] = self._sums["si-snr"] / self._count
            stats["si-snr_i"] = self._sums["si-snr_i"] / self._count
        self.report_test(stats, ENHANCEMENT_METRICS)


def train_and_test(
    hparams_file: Union[str, Path],
    overrides: Union[str, dict, None] = None,
    run_opts: Optional[dict] = None,
    train: bool = True,
    test: bool = True,
) -> EnhancementBrain:
    """Data preparation, training (resumable) and test of an enhancement
    model.

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        Recipe hparams file.
    overrides : str or dict, optional
        Hyperpyyaml overrides.
    run_opts : dict, optional
        SpeechBrain run options.
    train : bool
        Run the training stage.
    test : bool
        Run the test stage.

    Returns
    -------
    EnhancementBrain
        With ``valid_stats`` / ``test_stats`` / ``test_results``.
    """
    return separation_recipe.train_and_test(
        hparams_file,
        overrides,
        run_opts,
        train=train,
        test=test,
        brain_class=EnhancementBrain,
    )


def run_recipe(argv: Sequence[str]) -> EnhancementBrain:
    """Command-line entry point: ``train.py <hparams.yaml> [--key value]``.

    Arguments
    ---------
    argv : sequence of str
        Command-line arguments (without the program name).

    Returns
    -------
    EnhancementBrain
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    return train_and_test(hparams_file, overrides, run_opts)
