"""Atomic file writes (text, CSV, 16-bit wav and anything written through
:func:`atomic_target`): write a temporary file next to the target, then move
it onto the target with ``os.replace``, so a reader (or a run resumed after
a kill) never sees a half-written file. Folders written whole (the hub
exports of every task) go through :func:`atomic_folder`: a non-empty
target is refused unless forced, and a forced one is replaced by a folder
written next to it, so old and new files never mix.

Author
------
speechbrain-mamba developers
"""

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechbrain_mamba.utils.io import PathLike


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


class NonEmptyFolderError(FileExistsError):
    """A folder to be written whole (an export) already holds files."""


def _describe_content(folder: Path, shown: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir())
    listed = ", ".join(names[:shown])
    if len(names) > shown:
        listed += f" and {len(names) - shown} more"
    return listed


def check_target_folder(folder: PathLike, force: bool = False) -> Path:
    """Checks that a folder may be written whole: it is missing or empty,
    or ``force`` allows replacing its content.

    Arguments
    ---------
    folder : str or os.PathLike
        The folder an export is going to write.
    force : bool
        Accept a non-empty folder (its content will be replaced).

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    NonEmptyFolderError
        The folder holds files and ``force`` is False; the message names
        the folder and its content.
    NotADirectoryError
        The path is a file.

    Example
    -------
    >>> tmpdir = Path(getfixture("tmpdir"))
    >>> check_target_folder(tmpdir / "new") == tmpdir / "new"
    True
    >>> _ = (tmpdir / "new").mkdir(), (tmpdir / "new" / "a.yaml").touch()
    >>> check_target_folder(tmpdir / "new")
    Traceback (most recent call last):
    ...
    speechbrain_mamba.utils.atomic.NonEmptyFolderError: ...new is not empty \
(it holds a.yaml): choose a new or empty folder, or pass --force \
(force=True) to replace its content
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    if not force and folder.is_dir() and any(folder.iterdir()):
        raise NonEmptyFolderError(
            f"{folder} is not empty (it holds {_describe_content(folder)}): "
            f"choose a new or empty folder, or pass --force (force=True) "
            f"to replace its content"
        )
    return folder


@contextlib.contextmanager
def atomic_folder(
    folder: PathLike, force: bool = False, sources: Iterable[PathLike] = ()
) -> Iterator[Path]:
    """Writes a folder whole: yields a new empty folder next to ``folder``;
    when the block ends without an error, that folder takes the place of
    ``folder`` (whose old content, if any, is deleted), so ``folder``
    never mixes old and new files. On an error ``folder`` is untouched.

    The swap is two renames: ``folder`` to a hidden sibling, then the new
    folder to ``folder``; a crash between them leaves the old content in
    the sibling ``.NAME.*.old``.

    Arguments
    ---------
    folder : str or os.PathLike
        The folder to write (its parent is created).
    force : bool
        Replace a non-empty ``folder``; without it a non-empty folder
        raises :class:`NonEmptyFolderError`, checked on entry and again
        before the swap.
    sources : iterable of str or os.PathLike
        Paths the writer reads (an experiment folder): replacing a folder
        that holds one of them is refused, even with ``force``.

    Yields
    ------
    pathlib.Path
        The folder to write into.

    Example
    -------
    >>> tmpdir = Path(getfixture("tmpdir"))
    >>> with atomic_folder(tmpdir / "hub") as tmp:
    ...     _ = (tmp / "old.txt").write_text("1")
    >>> with atomic_folder(tmpdir / "hub", force=True) as tmp:
    ...     _ = (tmp / "new.txt").write_text("2")
    >>> sorted(p.name for p in tmpdir.iterdir())
    ['hub']
    >>> [p.name for p in (tmpdir / "hub").iterdir()]
    ['new.txt']
    """
    folder = check_target_folder(folder, force)
    target = folder.resolve()
    for source in sources:
        source = Path(source).resolve()
        if source == target or target in source.parents:
            raise ValueError(
                f"refusing to write {folder}: it holds {source}, which "
                f"the export reads; choose another folder"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp's folder is private (0700); a plain mkdir follows the umask
    stem = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp = stem.with_name(stem.name + ".new")
    old = stem.with_name(stem.name + ".old")
    try:
        tmp.mkdir()
        yield tmp
        check_target_folder(folder, force)
        if folder.exists():
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except OSError:
            if old.exists():
                os.rename(old, folder)
            raise
    finally:
        for path in (tmp, old):
            if path.exists():
                shutil.rmtree(path)
        stem.rmdir()
