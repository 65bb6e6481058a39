"""Atomic file writes: write a temporary file next to the target, then move
it onto the target with ``os.replace``, so a reader (or a run resumed after
a kill) never sees a half-written file.

Author
------
speechbrain-mamba developers
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

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
