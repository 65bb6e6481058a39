"""Atomic file writes (text, CSV, 16-bit wav and anything written through
:func:`atomic_target`): write a temporary file next to the target, then move
it onto the target with ``os.replace``, so a reader (or a run resumed after
a kill) never sees a half-written file.

Author
------
speechbrain-mamba developers
"""

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_target(path: PathLike) -> Iterator[str]:
    """Yields a temporary file path next to ``path`` (parent folders are
    created) and moves it onto ``path`` when the block ends without an
    error; the temporary file never survives.

    Arguments
    ---------
    path : str or os.PathLike
        The file to write.

    Yields
    ------
    str
        Where to write instead.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> with atomic_target(tmpdir / "sub" / "a.txt") as tmp:
    ...     _ = Path(tmp).write_text("done")
    >>> Path(tmpdir / "sub" / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Writes a text file (UTF-8) atomically.

    Arguments
    ---------
    path : str or os.PathLike
        Destination file.
    text : str
        Its whole content.

    Returns
    -------
    pathlib.Path
        The destination path.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> atomic_write_text(tmpdir / "t.txt", "hello").read_text()
    'hello'
    """
    with atomic_target(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fout:
            fout.write(text)
    return Path(path)


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
    >>> sf.info(str(p)).frames, sf.info(str(p)).samplerate
    (80, 8000)
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
