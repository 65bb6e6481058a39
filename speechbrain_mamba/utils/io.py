"""Reading audio with clear errors, and the path type every module takes.

:func:`read_audio` reads a mono file and checks its sample rate, so that
data of the wrong rate stops a run with the file named. Writes go through
:mod:`speechbrain_mamba.utils.atomic`.

Author
------
speechbrain-mamba developers
"""

import os
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch

PathLike = Union[str, os.PathLike]


def read_audio(
    path: PathLike,
    sample_rate: int,
    start: int = 0,
    stop: Optional[int] = None,
) -> torch.Tensor:
    """Reads a mono audio file and checks its sample rate.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file (any format libsndfile reads: wav, flac, ...).
    sample_rate : int
        Expected sample rate in Hz; a different rate raises ``ValueError``.
    start, stop : int
        Optional frame range to read.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 waveform.

    Example
    -------
    >>> from speechbrain_mamba.utils.atomic import atomic_write_wav
    >>> tmpdir = getfixture("tmpdir")
    >>> p = atomic_write_wav(tmpdir / "y.wav", torch.ones(100) * 0.5, 8000)
    >>> x = read_audio(p, 8000, start=10, stop=20)
    >>> x.shape, round(float(x.max()), 3)
    (torch.Size([10]), 0.5)
    >>> read_audio(p, 16000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ... has sample rate 8000 Hz but 16000 Hz is expected ...
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
        data, file_rate = sf.read(
            path, start=start, stop=stop, dtype="float32", always_2d=True
        )
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if file_rate != sample_rate:
        raise ValueError(
            f"{path} has sample rate {file_rate} Hz but {sample_rate} Hz is "
            "expected (set sample_rate in the hparams to match the data, or "
            "use the data folder of the right sample rate)"
        )
    if info.frames == 0:
        raise ValueError(f"audio file {path} is empty (0 samples)")
    if data.shape[1] != 1:
        raise ValueError(
            f"{path} has {data.shape[1]} channels; mono audio is expected"
        )
    return torch.from_numpy(np.ascontiguousarray(data[:, 0]))
