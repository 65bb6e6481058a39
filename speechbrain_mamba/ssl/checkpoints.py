"""Former home of :class:`CompleteCheckpointer`, kept so that recipe YAML
files naming ``speechbrain_mamba.ssl.checkpoints.CompleteCheckpointer``
keep working. The class now lives in
:mod:`speechbrain_mamba.utils.checkpoints` (it is used by every recipe).

Example
-------
>>> from speechbrain_mamba.utils import checkpoints
>>> CompleteCheckpointer is checkpoints.CompleteCheckpointer
True

Author
------
speechbrain-mamba developers
"""

from speechbrain_mamba.utils.checkpoints import (
    COMPLETE_MARKER,
    SAVING_MARKER,
    CompleteCheckpointer,
    checkpoint_status,
)

__all__ = [
    "COMPLETE_MARKER",
    "SAVING_MARKER",
    "CompleteCheckpointer",
    "checkpoint_status",
]
