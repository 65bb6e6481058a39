"""A SpeechBrain ``Checkpointer`` that never resumes from a half-written
checkpoint.

SpeechBrain writes a checkpoint folder file by file (``CKPT.yaml`` first).
A run killed in the middle leaves a folder that looks like the newest
checkpoint but holds truncated or missing files, and the next run fails to
load it (``EOFError``, "missing a load path"), so the recipe cannot resume.
:class:`CompleteCheckpointer` brackets every save with two markers:

1. ``SAVING`` is written into the new folder before anything else (then
   ``CKPT.yaml``, written atomically, then the recoverables' files);
2. ``COMPLETE`` is written once every process has saved its files, and
   ``SAVING`` is removed.

When listing checkpoints (``recover_if_possible``, ``find_checkpoint``,
``save_and_keep_only``, ...) it keeps a folder when (see
:func:`checkpoint_status`):

- it has ``COMPLETE``: a checkpoint this class finished. Its files are
  still checked as for a legacy folder (below): one that fails (a file
  cut short, emptied or deleted after the save, ``CKPT.yaml`` damaged) is
  never skipped silently: :class:`DamagedCheckpointError` names the
  folder, the file, what is wrong and how to recover (move the folder
  away to resume from the previous complete checkpoint, which it names).
  ``skip_damaged=True`` skips such folders with a warning instead;
- it has ``SAVING`` but no ``COMPLETE``: the save was interrupted. The
  folder is ignored (with a warning) and deleted at the next successful
  save, even when the kill came before ``CKPT.yaml`` was written;
- it has neither marker: a *legacy* checkpoint, written by SpeechBrain's own
  ``Checkpointer`` (a run from before this class was used, a converted
  release, a hub folder). Its completeness cannot be known from a marker,
  so it is checked: ``CKPT.yaml`` must parse, no ``.ckpt`` file may be
  empty or a cut-short ``torch.save`` archive, and every recoverable that
  is not optional must have its file. A legacy folder that passes is used
  like a complete one; one that fails is ignored with a warning but never
  deleted (it may still be worth inspecting by hand).

Use it in a recipe YAML in place of SpeechBrain's class::

    checkpointer: !new:speechbrain_mamba.utils.checkpoints.CompleteCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: ...

Author
------
speechbrain-mamba developers
"""

import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Union

import yaml
from speechbrain.utils.checkpoints import CKPT_PREFIX, METAFNAME, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

#: File written into a checkpoint folder once all its files are saved.
COMPLETE_MARKER = "COMPLETE"
#: File written into a checkpoint folder before any of its files.
SAVING_MARKER = "SAVING"
#: Suffix of SpeechBrain's per-recoverable files.
PARAMFILE_EXT = ".ckpt"
#: Keys SpeechBrain's ``Checkpointer`` writes into every ``CKPT.yaml``.
META_KEYS = ("unixtime", "end-of-epoch")


class Damage(NamedTuple):
    """What makes a checkpoint folder unusable: the file and the problem."""

    file: str
    problem: str


class DamagedCheckpointError(RuntimeError):
    """A checkpoint marked ``COMPLETE`` whose files cannot be loaded.

    Arguments
    ---------
    folder : pathlib.Path
        The damaged ``CKPT+...`` folder.
    damage : Damage
        The file and what is wrong with it.
    previous : pathlib.Path, optional
        The newest other usable checkpoint of the same directory, from
        which training resumes once ``folder`` is moved away.
    """

    def __init__(
        self, folder: Path, damage: Damage, previous: Optional[Path] = None
    ):
        self.folder = Path(folder)
        self.damage = damage
        self.previous = previous
        if previous is not None:
            recovery = (
                f"to resume from the previous complete checkpoint "
                f"{previous}, move or delete {self.folder}"
            )
        else:
            recovery = (
                f"there is no earlier complete checkpoint: move or delete "
                f"{self.folder} to start training from scratch"
            )
        super().__init__(
            f"damaged checkpoint {self.folder}: {damage.file} "
            f"{damage.problem}. The folder was marked {COMPLETE_MARKER}, so "
            f"the file changed after the save (disk full or failing, an "
            f"interrupted copy, a hand edit). To recover: {recovery} (or "
            f"give the checkpointer skip_damaged=True to skip damaged "
            f"checkpoints with a warning)"
        )


def _paramfile_damage(path: Path) -> Optional[str]:
    """What is wrong with a ``.ckpt`` file (``None`` when it looks whole):
    empty, unreadable, or a zip archive (``torch.save``) cut short (a cut
    zip lacks its central directory)."""
    try:
        if path.stat().st_size == 0:
            return "is empty"
        with open(path, "rb") as fin:
            head = fin.read(2)
        if head == b"PK" and not zipfile.is_zipfile(path):
            return "is cut short (a torch.save archive without its end)"
    except OSError as err:
        return f"cannot be read ({err})"
    return None


def checkpoint_damage(
    path: Union[str, os.PathLike], required: Iterable[str] = ()
) -> Optional[Damage]:
    """Checks that a checkpoint folder's files can be loaded, without
    loading them: ``CKPT.yaml`` parses into a mapping with SpeechBrain's
    keys, every required recoverable has its file and no ``.ckpt`` file is
    empty or a cut-short ``torch.save`` archive.

    Arguments
    ---------
    path : str or os.PathLike
        The ``CKPT+...`` folder.
    required : iterable of str
        Recoverable names whose ``NAME.ckpt`` must be there.

    Returns
    -------
    Damage or None
        The first problem found (file and description), ``None`` if none.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "CKPT+a"
    >>> folder.mkdir()
    >>> _ = (folder / "CKPT.yaml").write_text("unixtime: 1")
    >>> checkpoint_damage(folder)
    Damage(file='CKPT.yaml', problem='lacks the key end-of-epoch')
    >>> _ = (folder / "CKPT.yaml").write_text("unixtime: 1\\nend-of-epoch: 1")
    >>> _ = (folder / "model.ckpt").write_bytes(b"")
    >>> checkpoint_damage(folder, required=["model", "optimizer"]).file
    'optimizer.ckpt'
    >>> checkpoint_damage(folder, required=["model"])
    Damage(file='model.ckpt', problem='is empty')
    """
    path = Path(path)
    try:
        with open(path / METAFNAME, encoding="utf-8") as fin:
            meta = yaml.safe_load(fin)
    except FileNotFoundError:
        return Damage(METAFNAME, "is missing")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())
        return Damage(METAFNAME, f"cannot be read ({reason})")
    if not isinstance(meta, dict):
        return Damage(METAFNAME, "is empty or cut short (not a mapping)")
    for key in META_KEYS:
        if key not in meta:
            return Damage(METAFNAME, f"lacks the key {key}")
    for name in required:
        if not (path / f"{name}{PARAMFILE_EXT}").is_file():
            return Damage(
                f"{name}{PARAMFILE_EXT}",
                f"is missing (the recoverable {name!r} has no file)",
            )
    for file in sorted(path.glob(f"*{PARAMFILE_EXT}")):
        problem = _paramfile_damage(file)
        if problem is not None:
            return Damage(file.name, problem)
    return None


def checkpoint_status(
    path: Union[str, os.PathLike], required: Iterable[str] = ()
) -> str:
    """Classifies a ``CKPT+...`` folder by how completely it was written.

    Arguments
    ---------
    path : str or os.PathLike
        The checkpoint folder (holding ``CKPT.yaml``).
    required : iterable of str
        Recoverable names whose ``NAME.ckpt`` a legacy (marker-less) folder
        must hold to count as complete.

    Returns
    -------
    str
        ``"complete"`` (``COMPLETE`` marker; its files are checked
        separately, see :func:`checkpoint_damage`), ``"interrupted"``
        (``SAVING`` marker without ``COMPLETE``), ``"legacy"`` (no marker,
        files look whole) or ``"broken"`` (no marker and
        :func:`checkpoint_damage` finds a problem).

    Example
    -------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp()) / "CKPT+old"
    >>> folder.mkdir()
    >>> _ = (folder / "CKPT.yaml").write_text("unixtime: 1\\nend-of-epoch: 1")
    >>> torch.save({"w": torch.zeros(8)}, folder / "model.ckpt")
    >>> checkpoint_status(folder, required=["model"])
    'legacy'
    >>> checkpoint_status(folder, required=["model", "optimizer"])
    'broken'
    >>> data = (folder / "model.ckpt").read_bytes()
    >>> _ = (folder / "model.ckpt").write_bytes(data[: len(data) // 2])
    >>> checkpoint_status(folder, required=["model"])
    'broken'
    >>> _ = (folder / SAVING_MARKER).write_text("")
    >>> checkpoint_status(folder)
    'interrupted'
    >>> _ = (folder / COMPLETE_MARKER).write_text("")
    >>> checkpoint_status(folder)
    'complete'
    """
    path = Path(path)
    if (path / COMPLETE_MARKER).is_file():
        return "complete"
    if (path / SAVING_MARKER).is_file():
        return "interrupted"
    if checkpoint_damage(path, required) is not None:
        return "broken"
    return "legacy"


class CompleteCheckpointer(Checkpointer):
    """``Checkpointer`` that only lists fully written checkpoints.

    Saving must be called on every process under DDP, as with SpeechBrain's
    class; only the main process writes the markers and removes
    interrupted saves.

    Arguments
    ---------
    *args, **kwargs
        Those of SpeechBrain's ``Checkpointer``.
    skip_damaged : bool
        What to do with a ``COMPLETE`` checkpoint whose files are damaged
        (see :func:`checkpoint_damage`): ``False`` (default) raises
        :class:`DamagedCheckpointError` whenever the checkpoints are listed
        (recovery, saving, export); ``True`` skips it with a warning (it
        stays on disk), so training resumes from the newest intact one.

    Example
    -------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpter = CompleteCheckpointer(folder, {"model": model})
    >>> good = ckpter.save_checkpoint(name="good")
    >>> sorted(p.name for p in good.path.iterdir())
    ['CKPT.yaml', 'COMPLETE', 'model.ckpt']
    >>> broken = folder / "CKPT+broken"  # a run killed while saving
    >>> broken.mkdir()
    >>> _ = (broken / SAVING_MARKER).write_text("")
    >>> _ = (broken / "CKPT.yaml").write_text("end-of-epoch: true")
    >>> [Path(c.path).name for c in ckpter.list_checkpoints()]
    ['CKPT+good']
    >>> _ = (good.path / "model.ckpt").write_bytes(b"")  # damaged later
    >>> ckpter.find_checkpoint()
    Traceback (most recent call last):
    ...
    speechbrain_mamba.utils.checkpoints.DamagedCheckpointError: damaged \
checkpoint ...CKPT+good: model.ckpt is empty. ...
    """

    def __init__(self, *args, skip_damaged: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_damaged = skip_damaged

    def _required_recoverables(self) -> list:
        if self.allow_partial_load:
            return []
        return [
            name
            for name in self.recoverables
            if not self.optional_recoverables.get(name, False)
            and "dataloader" not in name
        ]

    def _list_checkpoint_dirs(self):
        required = self._required_recoverables()
        usable, damaged = [], []
        for folder in super()._list_checkpoint_dirs():
            status = checkpoint_status(folder, required)
            if status == "complete":
                damage = checkpoint_damage(folder, required)
                if damage is None:
                    usable.append(folder)
                else:
                    damaged.append((folder, damage))
            elif status == "legacy":
                usable.append(folder)
            elif status == "interrupted":
                logger.warning(
                    "ignoring the checkpoint %s: the run was stopped while "
                    "saving it",
                    folder,
                )
            else:
                logger.warning(
                    "ignoring the checkpoint %s: it has no %s marker and %s %s",
                    folder,
                    COMPLETE_MARKER,
                    *checkpoint_damage(folder, required),
                )
        for folder, damage in sorted(damaged, reverse=True):
            if not self.skip_damaged:
                raise DamagedCheckpointError(
                    folder, damage, self._newest(usable)
                )
            logger.warning(
                "skipping the damaged checkpoint %s (skip_damaged=True): %s %s",
                folder,
                *damage,
            )
        return usable

    @staticmethod
    def _newest(folders: list) -> Optional[Path]:
        """The folder whose ``CKPT.yaml`` has the latest ``unixtime``."""
        if not folders:
            return None
        ckpts = Checkpointer._construct_checkpoint_objects(folders)
        return max(ckpts, key=lambda c: c.meta["unixtime"]).path

    def _save_checkpoint_metafile(
        self, fpath, meta_to_include=None, end_of_epoch=True
    ):
        # Called by the main process right after creating the folder and
        # before any recoverable is saved: mark the save as in progress,
        # then write CKPT.yaml through a temporary file.
        fpath = Path(fpath)
        (fpath.parent / SAVING_MARKER).write_text("")
        tmp = fpath.with_name(fpath.name + ".tmp")
        meta = super()._save_checkpoint_metafile(
            tmp, meta_to_include or {}, end_of_epoch
        )
        os.replace(tmp, fpath)
        return meta

    def _remove_interrupted_saves(self) -> None:
        """Deletes this directory's ``CKPT+...`` folders whose save was
        interrupted: a ``SAVING`` marker without ``COMPLETE`` (with or
        without ``CKPT.yaml``: a kill may come before it is written), or
        nothing at all (a kill between creating the folder and marking
        it)."""
        for folder in self.checkpoints_dir.glob(f"{CKPT_PREFIX}+*"):
            if not folder.is_dir() or folder.is_symlink():
                continue
            if checkpoint_status(folder) == "interrupted":
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed the interrupted checkpoint %s", folder)
            elif not any(folder.iterdir()):
                folder.rmdir()
                logger.info("removed the empty checkpoint folder %s", folder)

    def save_checkpoint(self, *args, **kwargs):
        """Saves like SpeechBrain, then (main process, once every process
        has saved) marks the checkpoint complete and deletes interrupted
        saves of this checkpoint directory.

        Arguments
        ---------
        *args, **kwargs
            Those of ``Checkpointer.save_checkpoint``.

        Returns
        -------
        Checkpoint or None
            The saved checkpoint (``None`` on other processes).
        """
        ckpt = super().save_checkpoint(*args, **kwargs)
        ddp_barrier()  # every process has written its files
        if ckpt is not None and if_main_process():
            folder = Path(ckpt.path)
            (folder / COMPLETE_MARKER).write_text("")
            (folder / SAVING_MARKER).unlink(missing_ok=True)
            self._remove_interrupted_saves()
        ddp_barrier()  # the markers are visible to every process
        return ckpt
