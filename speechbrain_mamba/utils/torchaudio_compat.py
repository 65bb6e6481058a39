"""Tolerant import of torchaudio.

Some environments pair a CPU build of PyTorch with a torchaudio wheel whose
native extension was built against CUDA. Loading that extension raises
``OSError`` (e.g. ``libc10_cuda.so`` not found), and because SpeechBrain
imports torchaudio at import time, ``import speechbrain`` fails too.

torchaudio works without its native extension for everything this package
and SpeechBrain's recipes use (audio I/O goes through soundfile). This module
imports torchaudio once, and if its native extension cannot be loaded it
retries in pure-Python mode, so that a later ``import speechbrain`` succeeds.

Author
------
speechbrain-mamba developers
"""

import importlib
import logging
import sys
from types import ModuleType
from typing import Optional

logger = logging.getLogger(__name__)

_EXTENSION_UTILS = "torchaudio._extension.utils"

#: Set to the original error when torchaudio runs without its native library.
NATIVE_EXTENSION_ERROR: Optional[BaseException] = None


def _load_lib_or_skip(original_loader):
    """Wraps torchaudio's extension loader so that a library that cannot be
    loaded counts as absent instead of raising."""

    def load_lib(lib: str) -> bool:
        try:
            return original_loader(lib)
        except OSError as err:
            logger.debug(
                "torchaudio: skipping native library %s (%s)", lib, err
            )
            return False

    load_lib.__wrapped__ = original_loader
    return load_lib


def import_torchaudio() -> Optional[ModuleType]:
    """Imports torchaudio, falling back to pure-Python mode when its native
    extension cannot be loaded next to the installed PyTorch.

    Returns
    -------
    module or None
        The torchaudio module, or None when torchaudio is not installed.

    Example
    -------
    >>> ta = import_torchaudio()
    >>> ta is None or hasattr(ta, "__version__")
    True
    """
    global NATIVE_EXTENSION_ERROR
    if "torchaudio" in sys.modules:
        return sys.modules["torchaudio"]
    try:
        return importlib.import_module("torchaudio")
    except ImportError as err:
        if getattr(err, "name", None) == "torchaudio":
            return None
        raise
    except OSError as err:
        utils = sys.modules.get(_EXTENSION_UTILS)
        if utils is None or not hasattr(utils, "_load_lib"):
            raise
        NATIVE_EXTENSION_ERROR = err
        utils._load_lib = _load_lib_or_skip(utils._load_lib)
        # The failed import left half-initialised parents behind: drop them
        # (but keep the patched utils module) and import again.
        for name in list(sys.modules):
            if (name == "torchaudio" or name.startswith("torchaudio.")) and (
                name != _EXTENSION_UTILS
            ):
                del sys.modules[name]
        module = importlib.import_module("torchaudio")
        logger.info(
            "torchaudio's native extension could not be loaded (%s); "
            "using torchaudio in pure-Python mode.",
            err,
        )
        return module
