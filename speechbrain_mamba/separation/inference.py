"""Separating a mixture file with a trained (or hub) separation model, with
the file checked first.

SpeechBrain's ``SepformerSeparation.separate_file`` reads whatever the file
holds: a stereo file becomes a batch of two "mixtures", a file of a few
samples fails inside the encoder's convolution, NaN samples come back as
NaN estimates, and a silent file divides zero by zero when the estimates
are normalised. :class:`MambaSeparation` is the same interface (it loads
the same hub folders, ``from_hparams``) with a ``separate_file`` that
refuses such files with an error naming the file, and a ``separate_batch``
that checks the tensor it is given.

Author
------
speechbrain-mamba developers
"""

import logging
import os
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation
from speechbrain.utils.data_utils import split_path
from speechbrain.utils.fetching import LocalStrategy, fetch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def check_mixture(
    mix: torch.Tensor, min_samples: int, name: str = "the mixture"
) -> None:
    """Raises ValueError unless ``mix`` is a finite ``[batch, time]`` batch
    of at least ``min_samples`` samples.

    Arguments
    ---------
    mix : torch.Tensor
        ``[batch, time]`` waveforms.
    min_samples : int
        Fewest samples the model takes (its encoder's kernel size).
    name : str
        What to call the input in the error (e.g. the file's path).

    Example
    -------
    >>> check_mixture(torch.zeros(1, 100), 16)
    >>> check_mixture(torch.zeros(1, 5), 16, "mix.wav")
    Traceback (most recent call last):
    ...
    ValueError: mix.wav has 5 samples; the model needs at least 16
    """
    if mix.dim() != 2:
        raise ValueError(
            f"{name} must be a [batch, time] tensor of mono waveforms, got "
            f"shape {tuple(mix.shape)}"
        )
    if mix.shape[1] < min_samples:
        raise ValueError(
            f"{name} has {mix.shape[1]} samples; the model needs at least "
            f"{min_samples}"
        )
    if not bool(torch.isfinite(mix).all()):
        bad = int((~torch.isfinite(mix)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite samples; the model "
            "needs finite audio"
        )


def read_mixture(
    path: PathLike, sample_rate: int, min_samples: int = 1
) -> torch.Tensor:
    """Reads a mono mixture file for separation, resampled to
    ``sample_rate``, with errors that name the file.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file (any format libsndfile reads).
    sample_rate : int
        The model's sample rate; a file at another rate is resampled.
    min_samples : int
        Fewest samples (after resampling) the model takes.

    Returns
    -------
    torch.Tensor
        ``[1, time]`` float32 waveform.

    Example
    -------
    >>> path = getfixture("tmp_path") / "stereo.wav"
    >>> sf.write(path, np.zeros((800, 2), dtype="float32"), 8000)
    >>> read_mixture(path, 8000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../stereo.wav has 2 channels; ... mono mixture ...
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mixture file not found: {path}")
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[1] != 1:
        raise ValueError(
            f"{path} has {data.shape[1]} channels; the model separates a "
            "mono mixture (downmix it first, e.g. sox in.wav -c 1 out.wav)"
        )
    if data.shape[0] == 0:
        raise ValueError(f"{path} is empty (0 samples)")
    mix = torch.from_numpy(np.ascontiguousarray(data[:, 0]))[None]
    # checked before resampling too: a NaN would spread over the signal
    check_mixture(mix, 1, path)
    if file_rate != sample_rate:
        import torchaudio.functional as AF

        logger.info(
            "%s: resampling from %d Hz to the model's %d Hz",
            path,
            file_rate,
            sample_rate,
        )
        mix = AF.resample(mix, file_rate, sample_rate)
    check_mixture(mix, min_samples, path)
    return mix


class MambaSeparation(SepformerSeparation):
    """SpeechBrain's ``SepformerSeparation`` (encoder, mask network,
    decoder) with its inputs checked: ``separate_file`` names a file that
    is not a usable mono mixture, and returns finite estimates for a
    silent one.

    Load it like SpeechBrain's class::

        model = MambaSeparation.from_hparams(source=FOLDER, savedir=TMP)
        est_sources = model.separate_file("mixture.wav")  # [1, T, spks]

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
    >>> model = MambaSeparation(
    ...     modules, hparams={"sample_rate": 8000, "num_spks": 2},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> model.separate_batch(torch.randn(1, 800)).shape
    torch.Size([1, 800, 2])
    """

    @property
    def min_samples(self) -> int:
        """Fewest samples the model takes: its encoder's kernel size."""
        conv = getattr(self.mods.encoder, "conv1d", None)
        return int(conv.kernel_size[0]) if conv is not None else 1

    def separate_batch(self, mix: torch.Tensor) -> torch.Tensor:
        """Separates a batch of mixtures after checking it.

        Arguments
        ---------
        mix : torch.Tensor
            ``[batch, time]`` mono mixtures.

        Returns
        -------
        torch.Tensor
            ``[batch, time, num_spks]`` estimated sources.
        """
        check_mixture(mix, self.min_samples)
        return super().separate_batch(mix)

    def separate_file(
        self, path: PathLike, savedir: Optional[PathLike] = None
    ) -> torch.Tensor:
        """Separates the mixture in a file (a local path, or a hub / web
        location as for SpeechBrain's ``separate_file``).

        Arguments
        ---------
        path : str or os.PathLike
            The mixture file.
        savedir : str or os.PathLike, optional
            Where a remote file is stored.

        Returns
        -------
        torch.Tensor
            ``[1, time, num_spks]`` estimated sources, each scaled to a peak
            of 1 (an all-zero estimate stays zero).
        """
        source, name = split_path(str(path))
        local = fetch(
            name,
            source=source,
            savedir=savedir,
            local_strategy=LocalStrategy.SYMLINK,
        )
        mix = read_mixture(
            local, int(self.hparams.sample_rate), self.min_samples
        )
        try:
            est = self.separate_batch(mix.to(self.device))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        peak = est.abs().amax(dim=1, keepdim=True)
        return est / peak.clamp_min(torch.finfo(est.dtype).tiny)
