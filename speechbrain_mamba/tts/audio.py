"""Audio reading and writing for the TTS pipeline: mono float waveforms at a
requested sample rate, clear errors for missing, empty or corrupt files,
atomic writes.

Author
------
speechbrain-mamba developers
"""

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechbrain_mamba.utils.atomic import atomic_write_wav
from speechbrain_mamba.utils.io import PathLike


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int):
    """Resamples a [..., time] waveform (band-limited sinc interpolation).

    Arguments
    ---------
    waveform : torch.Tensor
        [..., time] float.
    orig_rate : int
        Its sample rate.
    new_rate : int
        Wanted sample rate.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> resample(torch.zeros(16000), 16000, 24000).shape
    torch.Size([24000])
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(
            f"sample rates must be positive, got {orig_rate} -> {new_rate}"
        )
    if orig_rate == new_rate:
        return waveform
    # torchaudio is importable: the package's __init__ made sure of it
    import torchaudio.functional as AF

    return AF.resample(waveform, int(orig_rate), int(new_rate))


def load_audio(path: PathLike, sample_rate: int) -> torch.Tensor:
    """Reads an audio file as a mono float waveform at ``sample_rate``.

    Arguments
    ---------
    path : str or Path
        Audio file (any format soundfile reads: wav, flac, ogg...).
    sample_rate : int
        Sample rate of the result (the file is resampled if needed).

    Returns
    -------
    torch.Tensor
        [time] float32.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "tone.wav"
    >>> write_audio(path, torch.ones(800) * 0.1, 8000)
    >>> load_audio(path, 16000).shape
    torch.Size([1600])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    waveform = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return resample(waveform, rate, sample_rate)


def write_audio(path: PathLike, waveform: torch.Tensor, sample_rate: int):
    """Writes a mono waveform as 16-bit WAV, atomically (temporary file then
    rename).

    Arguments
    ---------
    path : str or Path
        Destination (its folder is created).
    waveform : torch.Tensor
        [time] float in [-1, 1] (clipped).
    sample_rate : int
        Sample rate.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.wav"
    >>> write_audio(path, torch.zeros(10), 8000)
    >>> sf.info(str(path)).frames
    10
    """
    atomic_write_wav(path, waveform.detach().clamp(-1, 1), sample_rate)
