"""Tolerant import of torchaudio.

Some environments pair a CPU build of PyTorch with a torchaudio wheel whose
native extension was built against CUDA. Loading that extension raises
``OSError`` (e.g. ``libc10_cuda.so`` not found), and because SpeechBrain
imports torchaudio at import time, ``import speechbrain`` fails too.

torchaudio works without its native extension for everything this package
and SpeechBrain's recipes use (audio I/O goes through soundfile). The
installed package fixes this at interpreter start-up, so that a plain
``import speechbrain`` works (see the top-level module
``_speechbrain_mamba_startup`` and its ``speechbrain_mamba.pth``); importing
``speechbrain_mamba`` also calls :func:`import_torchaudio`, which covers a
source checkout used without installing it.

Author
------
speechbrain-mamba developers
"""

from types import ModuleType
from typing import Optional

import _speechbrain_mamba_startup as startup

#: The original error when torchaudio runs without its native library.
NATIVE_EXTENSION_ERROR: Optional[BaseException] = None


def import_torchaudio() -> Optional[ModuleType]:
    """Imports torchaudio, falling back to pure-Python mode when its native
    extension cannot be loaded next to the installed PyTorch.

    Returns
    -------
    module or None
        The torchaudio module, or None when torchaudio is not installed.

    Example
    -------
    >>> import sys
    >>> ta = import_torchaudio()
    >>> ta is None or ta is sys.modules["torchaudio"]
    True
    """
    global NATIVE_EXTENSION_ERROR
    module = startup.import_torchaudio()
    NATIVE_EXTENSION_ERROR = startup.NATIVE_EXTENSION_ERROR
    return module
