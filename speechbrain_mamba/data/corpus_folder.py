"""Building a synthesised corpus into a folder without losing anything.

The corpus builders (:mod:`speechbrain_mamba.data.mini_corpus`,
:mod:`speechbrain_mamba.separation.enhancement.mini_voicebank`) write a
corpus into a temporary folder next to its destination and rename it into
place when complete. A marker file in the corpus records the builder's
parameters and every file it wrote (size and SHA-256), so that

* a second call with the same parameters returns at once;
* a rebuild replaces an older corpus only if the folder holds nothing but
  files the builder wrote there, unchanged: files it did not write are
  never deleted, and the build stops with an error naming the folder and
  the files;
* builds into one folder swap their results in turn under a lock: of two
  builds of other parameters running at the same time, the later one stops
  with an error; identical ones both succeed.

Author
------
speechbrain-mamba developers
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from speechbrain_mamba.data.espeak import (
    EspeakNotFoundError,
    espeak_version,
    find_espeak,
)
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

__all__ = [
    "CorpusGenerator",
    "build_corpus_folder",
    "check_replaceable",
    "corpus_files",
    "folder_lock",
    "foreign_files",
    "marker_params",
    "read_marker",
]


@dataclass(frozen=True)
class CorpusGenerator:
    """A corpus builder as its marker file records it.

    Arguments
    ---------
    name : str
        The marker's ``generator`` entry (a module path).
    version : int
        The marker's ``version`` entry, bumped when the content changes.
    marker_name : str
        Name of the marker file inside the corpus folder.
    title : str
        The builder as error messages name it.
    described : tuple of str
        Parameters named when two builds of one folder collide.

    Example
    -------
    >>> gen = CorpusGenerator("pkg.mod", 1, ".mod.json", "the builder")
    >>> gen.described
    ('seed', 'num_utterances', 'max_words')
    """

    name: str
    version: int
    marker_name: str
    title: str
    described: tuple = ("seed", "num_utterances", "max_words")

    def describe(self, params: dict) -> str:
        """The :attr:`described` parameters in one line.

        Arguments
        ---------
        params : dict
            Parameters (or a marker).

        Returns
        -------
        str
            ``"name value"`` pairs, comma separated.

        Example
        -------
        >>> gen = CorpusGenerator("m", 1, ".m.json", "m", ("seed", "n"))
        >>> gen.describe({"seed": 3, "n": 8, "other": 1})
        'seed 3, n 8'
        """
        return ", ".join(f"{k} {params.get(k)}" for k in self.described)


def read_marker(folder: Path, generator: CorpusGenerator) -> Optional[dict]:
    """The marker of the corpus in ``folder``.

    Arguments
    ---------
    folder : pathlib.Path
        A corpus folder.
    generator : CorpusGenerator
        Its builder (names the marker file).

    Returns
    -------
    dict or None
        The marker, or None where there is none or it is not a JSON object.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> gen = CorpusGenerator("m", 1, ".m.json", "m")
    >>> _ = (folder / ".m.json").write_text('{"seed": 1}')
    >>> read_marker(folder, gen), read_marker(folder / "none", gen)
    ({'seed': 1}, None)
    """
    try:
        with open(folder / generator.marker_name, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def marker_params(marker: Optional[dict], *drop: str) -> Optional[dict]:
    """A marker's parameters: everything but its file list (and ``drop``).

    Arguments
    ---------
    marker : dict or None
        A marker (None passes through).
    *drop : str
        Further entries left out.

    Returns
    -------
    dict or None
        The parameters.

    Example
    -------
    >>> marker_params({"seed": 1, "espeak": "1.51", "files": {}}, "espeak")
    {'seed': 1}
    """
    if marker is None:
        return None
    return {k: v for k, v in marker.items() if k not in ("files", *drop)}


def _walk_files(folder: Path) -> list:
    """Relative paths (``/``-separated) of everything in ``folder`` that is
    not a folder (symbolic links included, not followed), sorted."""
    stack = [""]
    found = []
    while stack:
        rel = stack.pop()
        with os.scandir(folder / rel) as entries:
            for entry in entries:
                path = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path + "/")
                else:
                    found.append(path)
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_files(folder: Path) -> dict:
    """The file list a marker records.

    Arguments
    ---------
    folder : pathlib.Path
        A freshly built corpus.

    Returns
    -------
    dict
        ``{relative path: [size, sha256]}`` of every file in ``folder``.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> (folder / "a").mkdir()
    >>> _ = (folder / "a" / "x.txt").write_bytes(b"abc")
    >>> corpus_files(folder)["a/x.txt"][0]
    3
    """
    return {
        rel: [(folder / rel).stat().st_size, _sha256(folder / rel)]
        for rel in _walk_files(folder)
    }


def foreign_files(
    folder: Path, marker: dict, generator: CorpusGenerator, hashes: bool
) -> list:
    """Files of ``folder`` that the corpus recorded in ``marker`` did not
    write, or that changed since.

    Arguments
    ---------
    folder : pathlib.Path
        A corpus folder.
    marker : dict
        Its marker (with the file list).
    generator : CorpusGenerator
        Its builder (the marker file itself is not listed).
    hashes : bool
        Compare SHA-256 digests too, not only sizes.

    Returns
    -------
    list of str
        Relative paths, sorted. Files of the corpus that are missing are
        not listed (replacing the folder loses nothing of the user's).

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> gen = CorpusGenerator("m", 1, ".m.json", "m")
    >>> _ = (folder / "x.txt").write_text("abc")
    >>> marker = {"files": corpus_files(folder)}
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> _ = (folder / "x.txt").write_text("abd")
    >>> foreign_files(folder, marker, gen, False)
    ['notes.txt']
    >>> foreign_files(folder, marker, gen, True)
    ['notes.txt', 'x.txt']
    """
    recorded = marker.get("files", {})
    foreign = []
    for rel in _walk_files(folder):
        if rel == generator.marker_name:
            continue
        path = folder / rel
        entry = recorded.get(rel)
        if entry is None or path.is_symlink():
            foreign.append(rel)
        elif path.stat().st_size != entry[0]:
            foreign.append(rel)
        elif hashes and _sha256(path) != entry[1]:
            foreign.append(rel)
    return foreign


def check_replaceable(
    folder: Path,
    marker: Optional[dict],
    generator: CorpusGenerator,
    hashes: bool,
    where: Path,
) -> None:
    """Raises ``FileExistsError`` unless replacing ``folder`` (a corpus
    folder, or the copy of one moved aside) deletes only files that the
    builder wrote there.

    Arguments
    ---------
    folder : pathlib.Path
        The non-empty folder to replace.
    marker : dict or None
        Its marker.
    generator : CorpusGenerator
        The builder that would replace it.
    hashes : bool
        Compare SHA-256 digests too (see :func:`foreign_files`).
    where : pathlib.Path
        The folder named in messages.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> gen = CorpusGenerator("m", 1, ".m.json", "the m builder")
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> check_replaceable(folder, None, gen, False, folder)
    Traceback (most recent call last):
    ...
    FileExistsError: ... not made by the m builder (no .m.json); ...
    >>> check_replaceable(folder, {"files": {}}, gen, False, folder)
    Traceback (most recent call last):
    ...
    FileExistsError: ... did not write (or that changed since): notes.txt; ...
    """
    if marker is None:
        raise FileExistsError(
            f"{where} is not empty and was not made by {generator.title} "
            f"(no {generator.marker_name}); refusing to overwrite it. Choose "
            "a new or empty folder."
        )
    if "files" not in marker:
        raise FileExistsError(
            f"{where} holds a corpus of an older version of the generator, "
            "which did not record its files, so files added to it cannot "
            "be told apart from the corpus; refusing to replace it. Delete "
            "it yourself (or choose another folder) and build again."
        )
    foreign = foreign_files(folder, marker, generator, hashes)
    if foreign:
        listed = ", ".join(foreign[:5])
        if len(foreign) > 5:
            listed += f" and {len(foreign) - 5} more"
        raise FileExistsError(
            f"{where} holds files that the corpus built there did not write "
            f"(or that changed since): {listed}; refusing to replace it, "
            "which would delete them. Move them elsewhere (or choose "
            "another folder) and build again."
        )


@contextlib.contextmanager
def folder_lock(final: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``final``'s hidden sibling
    ``.NAME.lock`` (``fcntl.flock``: released if the process dies), which
    is deleted on release. Builds into one folder swap it in turn.

    Arguments
    ---------
    final : pathlib.Path
        The corpus folder (need not exist; its parent must).

    Yields
    ------
    None
        While the lock is held.

    Example
    -------
    >>> final = getfixture("tmp_path") / "corpus"
    >>> with folder_lock(final):
    ...     (final.parent / ".corpus.lock").exists()
    True
    >>> (final.parent / ".corpus.lock").exists()
    False
    """
    path = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The previous holder may have deleted the file while this
            # process waited on it: lock the file that is there now.
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def build_corpus_folder(
    out_dir: PathLike,
    generator: CorpusGenerator,
    params: dict,
    force: bool,
    espeak: Optional[str],
    write: Callable[[Path, Path, str], int],
    label: str,
) -> Path:
    """Runs ``write(tmp_dir, final_dir, espeak_binary)`` in a temporary
    folder and moves the result to ``out_dir``.

    Never deletes a file it did not write: a corpus already in ``out_dir``
    is replaced only if it holds exactly the files its marker records
    (checked by name and size before the build, by SHA-256 too at the
    swap); anything else there stops the build with the files named. The
    swap holds a lock (``.NAME.lock`` next to ``out_dir``) and re-reads
    the marker: if another build finished there meanwhile, an identical
    one is kept (both builds succeed) and a different one stops this
    build with an error instead of being replaced. A complete corpus
    with these parameters is returned as it is, without espeak-ng.

    Arguments
    ---------
    out_dir : str or os.PathLike
        The corpus folder.
    generator : CorpusGenerator
        The builder (its name and version go into the marker).
    params : dict
        The build's parameters (JSON values), recorded in the marker with
        the espeak-ng version and compared with an existing one.
    force : bool
        Rebuild even if ``out_dir`` holds this corpus already.
    espeak : str, optional
        espeak-ng executable.
    write : callable
        Writes the corpus into its first argument (the final folder is the
        second, for paths written into files) with the espeak-ng
        executable given third; returns the number of files, for the log.
    label : str
        The corpus as log messages name it.

    Returns
    -------
    pathlib.Path
        ``out_dir``, resolved.

    Example
    -------
    >>> gen = CorpusGenerator("m", 1, ".m.json", "the m builder")
    >>> def write(tmp, final, binary):
    ...     _ = (tmp / "a.txt").write_text("corpus")
    ...     return 1
    >>> out = getfixture("tmp_path") / "corpus"
    >>> args = (gen, {"seed": 0}, False, None, write, "m")
    >>> root = build_corpus_folder(out, *args)
    >>> sorted(p.name for p in root.iterdir())
    ['.m.json', 'a.txt']
    >>> _ = (root / "notes.txt").write_text("mine")
    >>> build_corpus_folder(out, gen, {"seed": 1}, *args[2:])
    Traceback (most recent call last):
    ...
    FileExistsError: ... did not write (or that changed since): notes.txt; ...
    """
    final = Path(out_dir).expanduser().resolve()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder")
    marker = read_marker(final, generator) if final.is_dir() else None
    params = {
        "generator": generator.name,
        "version": generator.version,
        **params,
    }
    try:
        binary = find_espeak(espeak)  # fail before touching the disk
    except EspeakNotFoundError:
        # A complete corpus stays usable on a machine without espeak-ng.
        if marker and not force:
            if marker_params(marker, "espeak") == params:
                logger.info("%s: already built (%s)", label, final)
                return final
        raise
    params["espeak"] = espeak_version(binary)
    if marker_params(marker) == params and not force:
        logger.info("%s: already built, skipping (%s)", label, final)
        return final
    if final.is_dir() and any(final.iterdir()):
        # Fails before the work; checked again, with hashes, at the swap.
        check_replaceable(final, marker, generator, False, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    start = time.perf_counter()
    try:
        count = write(tmp, final, binary)
        record = {**params, "files": corpus_files(tmp)}
        with open(
            tmp / generator.marker_name, "w", encoding="utf-8", newline="\n"
        ) as f:
            f.write(json.dumps(record, indent=2, sort_keys=True))
        with folder_lock(final):
            if not _swap_in(tmp, final, marker, params, generator):
                logger.info(
                    "%s: an identical build finished first (%s)", label, final
                )
                return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "%s: built %d files in %.1f s (%s)",
        label,
        count,
        time.perf_counter() - start,
        final,
    )
    return final


def _swap_in(
    tmp: Path,
    final: Path,
    marker: Optional[dict],
    params: dict,
    generator: CorpusGenerator,
) -> bool:
    """Moves the built corpus ``tmp`` to ``final`` (under the folder's
    lock). ``marker`` is what ``final`` held when the build started.
    Returns False, leaving ``final`` as it is, if another build of the same
    parameters finished there meanwhile; raises ``FileExistsError`` if one
    of other parameters did, or if ``final`` holds files the builder did
    not write."""
    current = read_marker(final, generator) if final.is_dir() else None
    if current != marker:  # another build finished while this one ran
        if marker_params(current) == params:
            return False
        if current is not None:
            raise FileExistsError(
                f"another build wrote a corpus of other parameters into "
                f"{final} while this one ran ({generator.describe(current)}; "
                f"this one: {generator.describe(params)}); it was kept and "
                "this build discarded. Build each corpus into its own folder."
            )
    if final.exists():
        # Moved aside first, so nothing can be added after the check.
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex}"
        os.rename(final, old)
        try:
            if any(old.iterdir()):
                check_replaceable(old, current, generator, True, final)
        except BaseException:
            os.rename(old, final)
            raise
        try:
            os.rename(tmp, final)
        except OSError:
            # Something took the name meanwhile: keep the old corpus.
            if not final.exists():
                os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return True
