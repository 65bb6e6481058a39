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

- it has ``COMPLETE``: a checkpoint this class finished;
- it has ``SAVING`` but no ``COMPLETE``: the save was interrupted. The
  folder is ignored (with a warning) and deleted at the next successful
  save;
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
from typing import Iterable, Union

import yaml
from speechbrain.utils.checkpoints import METAFNAME, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

#: File written into a checkpoint folder once all its files are saved.
COMPLETE_MARKER = "COMPLETE"
#: File written into a checkpoint folder before any of its files.
SAVING_MARKER = "SAVING"
#: Suffix of SpeechBrain's per-recoverable files.
PARAMFILE_EXT = ".ckpt"


def _intact_paramfile(path: Path) -> bool:
    """Whether a ``.ckpt`` file is non-empty and, when it is a zip archive
    (``torch.save``), not cut short (a cut zip lacks its central
    directory)."""
    try:
        if path.stat().st_size == 0:
            return False
        with open(path, "rb") as fin:
            head = fin.read(2)
        return head != b"PK" or zipfile.is_zipfile(path)
    except OSError:
        return False


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
        ``"complete"`` (``COMPLETE`` marker), ``"interrupted"`` (``SAVING``
        marker without ``COMPLETE``), ``"legacy"`` (no marker, files look
        whole) or ``"broken"`` (no marker; unreadable ``CKPT.yaml``, an
        empty or cut-short ``.ckpt`` file, or a required file missing).

    Example
    -------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp()) / "CKPT+old"
    >>> folder.mkdir()
    >>> _ = (folder / "CKPT.yaml").write_text("end-of-epoch: true")
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
    try:
        with open(path / METAFNAME, encoding="utf-8") as fin:
            meta = yaml.safe_load(fin)
    except (OSError, yaml.YAMLError):
        return "broken"
    if not isinstance(meta, dict):
        return "broken"
    for name in required:
        if not (path / f"{name}{PARAMFILE_EXT}").is_file():
            return "broken"
    for file in path.glob(f"*{PARAMFILE_EXT}"):
        if not _intact_paramfile(file):
            return "broken"
    return "legacy"


class CompleteCheckpointer(Checkpointer):
    """``Checkpointer`` that only lists fully written checkpoints.

    Arguments are those of SpeechBrain's ``Checkpointer``. Saving must be
    called on every process under DDP, as with SpeechBrain's class; only
    the main process writes the markers and removes interrupted saves.

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
    """

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
        usable = []
        for folder in super()._list_checkpoint_dirs():
            status = checkpoint_status(folder, required)
            if status in ("complete", "legacy"):
                usable.append(folder)
            elif status == "interrupted":
                logger.warning(
                    "ignoring the checkpoint %s: the run was stopped while "
                    "saving it",
                    folder,
                )
            else:
                logger.warning(
                    "ignoring the checkpoint %s: it has no %s marker and "
                    "its files are incomplete (CKPT.yaml unreadable, a "
                    ".ckpt file empty or cut short, or a recoverable of %s "
                    "missing)",
                    folder,
                    COMPLETE_MARKER,
                    required,
                )
        return usable

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

    def save_checkpoint(self, *args, **kwargs):
        """Saves like SpeechBrain, then (main process, once every process
        has saved) marks the checkpoint complete and deletes interrupted
        saves.

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
            for other in super()._list_checkpoint_dirs():
                if checkpoint_status(other) == "interrupted":
                    shutil.rmtree(other, ignore_errors=True)
                    logger.info("removed the interrupted checkpoint %s", other)
        ddp_barrier()  # the markers are visible to every process
        return ckpt
