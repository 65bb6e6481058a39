"""File input/output for the separation tools: audio reading with clear
errors, and atomic writes (temporary file + ``os.replace``) of text, CSV and
audio files, so that an interrupted run never leaves half-written outputs.

Author
------
speechbrain-mamba developers
"""

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import torch

from speechbrain_mamba.utils.atomic import (  # noqa: F401 (re-exported)
    atomic_target,
    atomic_write_text,
)

PathLike = Union[str, os.PathLike]


def atomic_write_csv(
    path: PathLike, fieldnames: Sequence[str], rows: Iterable[dict]
) -> Path:
    """Writes a CSV file (header + rows) atomically.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    fieldnames : sequence of str
        Column names, in order.
    rows : iterable of dict
        One mapping per row (missing columns are left empty).

    Returns
    -------
    pathlib.Path
        The destination path.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> rows = [{"ID": "a", "x": 1}]
    >>> p = atomic_write_csv(tmpdir / "t.csv", ["ID", "x"], rows)
    >>> p.read_text().splitlines()
    ['ID,x', 'a,1']
    """
    with atomic_target(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fout:
            writer = csv.DictWriter(
                fout, fieldnames=list(fieldnames), lineterminator="\n"
            )
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
    return Path(path)


def atomic_write_wav(
    path: PathLike, signal: torch.Tensor, sample_rate: int
) -> Path:
    """Writes a mono float signal as a 16-bit PCM wav file, atomically.

    Arguments
    ---------
    path : str or os.PathLike
        Destination ``.wav`` file.
    signal : torch.Tensor
        ``[T]`` waveform; values outside [-1, 1] are clipped by the encoder.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    pathlib.Path
        The destination path.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> p = atomic_write_wav(tmpdir / "x.wav", torch.zeros(80), 8000)
    >>> read_audio(p, 8000).shape
    torch.Size([80])
    """
    signal = torch.as_tensor(signal).detach().float().cpu()
    if signal.dim() != 1:
        raise ValueError(
            f"expected a 1-D signal, got shape {tuple(signal.shape)}"
        )
    with atomic_target(path) as tmp:
        sf.write(
            tmp,
            signal.numpy().astype(np.float32),
            sample_rate,
            format="WAV",
            subtype="PCM_16",
        )
    return Path(path)


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
    >>> tmpdir = getfixture("tmpdir")
    >>> p = atomic_write_wav(tmpdir / "y.wav", torch.ones(100) * 0.5, 8000)
    >>> read_audio(p, 8000, start=10, stop=20).shape
    torch.Size([10])
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
