"""A SpeechBrain ``Checkpointer`` that never resumes from a half-written
checkpoint.

SpeechBrain writes a checkpoint folder file by file (``CKPT.yaml`` first).
A run killed in the middle leaves a folder that looks like the newest
checkpoint but holds truncated files, and the next run fails to load it
(``EOFError``), so the recipe cannot resume. :class:`CompleteCheckpointer`
writes a ``COMPLETE`` marker once every file is saved, ignores folders
without it when listing checkpoints (with a warning), and removes such
leftovers at its next successful save. Use it in a recipe YAML in place of
SpeechBrain's class::

    checkpointer: !new:speechbrain_mamba.ssl.checkpoints.CompleteCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: ...

Checkpoints written by SpeechBrain's own ``Checkpointer`` have no marker and
are not resumed from.

Author
------
speechbrain-mamba developers
"""

import logging
import shutil
from pathlib import Path

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process

logger = logging.getLogger(__name__)

#: File written into a checkpoint folder once all its files are saved.
COMPLETE_MARKER = "COMPLETE"


class CompleteCheckpointer(Checkpointer):
    """``Checkpointer`` that only lists fully written checkpoints.

    Arguments are those of SpeechBrain's ``Checkpointer``.

    Example
    -------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpter = CompleteCheckpointer(folder, {"model": model})
    >>> _ = ckpter.save_checkpoint(name="good")
    >>> broken = folder / "CKPT+broken"  # a run killed while saving
    >>> broken.mkdir()
    >>> _ = (broken / "CKPT.yaml").write_text("end-of-epoch: true")
    >>> [Path(c.path).name for c in ckpter.list_checkpoints()]
    ['CKPT+good']
    """

    def _list_checkpoint_dirs(self):
        dirs = super()._list_checkpoint_dirs()
        complete = [d for d in dirs if (Path(d) / COMPLETE_MARKER).is_file()]
        for d in dirs:
            if d not in complete:
                logger.warning(
                    "ignoring the incomplete checkpoint %s (the run was "
                    "stopped while saving it)",
                    d,
                )
        return complete

    def save_checkpoint(self, *args, **kwargs):
        """Saves like SpeechBrain, then marks the checkpoint complete and
        removes incomplete leftovers (main process)."""
        ckpt = super().save_checkpoint(*args, **kwargs)
        if ckpt is not None and if_main_process():
            (Path(ckpt.path) / COMPLETE_MARKER).write_text("")
            for d in super()._list_checkpoint_dirs():
                if not (Path(d) / COMPLETE_MARKER).is_file():
                    shutil.rmtree(d, ignore_errors=True)
                    logger.info("removed the incomplete checkpoint %s", d)
        return ckpt
