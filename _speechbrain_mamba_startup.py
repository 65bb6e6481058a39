"""Start-up hook of speechbrain-mamba: ``import torchaudio`` (and so
``import speechbrain``) works even when torchaudio's native extension cannot
load next to the installed PyTorch.

Some environments, this project's CPU install among them, pair a CPU build
of PyTorch with a torchaudio wheel whose native extension was built against
CUDA; loading it raises ``OSError`` (e.g. ``libc10_cuda.so`` not found).
torchaudio works without the extension for everything SpeechBrain's recipes
use, if only its loader treats the library as absent.

The package installs ``speechbrain_mamba.pth`` next to this module. Python
runs that file's one line at start-up, which calls :func:`install`. It puts
a finder first on ``sys.meta_path`` and imports nothing: the finder acts
once, when some code first imports torchaudio, and then removes itself. A
torchaudio that imports fine is imported unchanged; only when its native
extension raises ``OSError`` is the extension loader wrapped so that a
library that cannot load counts as absent, and torchaudio's module is
executed again (pure-Python mode). Setting the environment variable
``SPEECHBRAIN_MAMBA_TORCHAUDIO_HOOK=0`` turns the hook off.

This module lives at the top level (not inside the package) so that the
start-up line does not import the package and its dependencies.

Author
------
speechbrain-mamba developers
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from types import ModuleType

TORCHAUDIO = "torchaudio"
EXTENSION_UTILS = "torchaudio._extension.utils"
DISABLE_VARIABLE = "SPEECHBRAIN_MAMBA_TORCHAUDIO_HOOK"

#: The original error, once torchaudio runs without its native library.
NATIVE_EXTENSION_ERROR: BaseException | None = None


def _logger():
    # imported here: logging is not needed (and not imported) at start-up
    import logging

    return logging.getLogger(__name__)


def _load_lib_or_skip(original):
    """Wraps torchaudio's extension loader so that a library that cannot be
    loaded counts as absent (returns False) instead of raising."""

    def load_lib(lib: str) -> bool:
        try:
            return original(lib)
        except OSError as err:
            _logger().debug(
                "torchaudio: skipping native library %s (%s)", lib, err
            )
            return False

    load_lib.__wrapped__ = original
    return load_lib


def tolerate_unloadable_extension(err: OSError) -> bool:
    """After a torchaudio import failed with ``err``, makes its extension
    loader skip libraries that cannot load.

    Arguments
    ---------
    err : OSError
        The error of the failed import.

    Returns
    -------
    bool
        True when the loader was wrapped (import torchaudio again), False
        when the error did not come from a half-imported torchaudio
        extension loader (re-raise it).

    Example
    -------
    >>> tolerate_unloadable_extension(OSError("x")) in (True, False)
    True
    """
    global NATIVE_EXTENSION_ERROR
    utils = sys.modules.get(EXTENSION_UTILS)
    loader = getattr(utils, "_load_lib", None)
    if loader is None:
        return False
    NATIVE_EXTENSION_ERROR = err
    if not hasattr(loader, "__wrapped__"):
        utils._load_lib = _load_lib_or_skip(loader)
    return True


def forget_partial_import(keep: tuple = ()) -> None:
    """Drops the torchaudio modules a failed import left half-initialised
    (except the patched extension loader module and ``keep``).

    Arguments
    ---------
    keep : tuple of str
        Further module names to keep.

    Example
    -------
    >>> forget_partial_import(keep=tuple(sys.modules))
    """
    for name in list(sys.modules):
        if name == TORCHAUDIO or name.startswith(TORCHAUDIO + "."):
            if name != EXTENSION_UTILS and name not in keep:
                del sys.modules[name]


class _TolerantLoader:
    """Runs torchaudio's own loader; on the native-extension ``OSError``
    makes the extension optional and runs the module again."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        except OSError as err:
            if not tolerate_unloadable_extension(err):
                raise
            forget_partial_import(keep=(module.__name__,))
            self.loader.exec_module(module)
            _logger().info(
                "torchaudio's native extension could not be loaded (%s); "
                "using torchaudio in pure-Python mode.",
                err,
            )
        finally:
            # leave no trace of the wrapper on the module
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader

    def __getattr__(self, name):
        return getattr(self.loader, name)


class TorchaudioFinder:
    """A ``sys.meta_path`` finder that answers only for the first import of
    torchaudio (then removes itself) and hands back torchaudio's own spec
    with a :class:`_TolerantLoader`."""

    def find_spec(self, name, path=None, target=None):
        """The spec of torchaudio with a tolerant loader; None for any
        other module (the next finders look for it)."""
        if name != TORCHAUDIO:
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _TolerantLoader(spec.loader)
        return spec


def uninstall() -> None:
    """Removes the finder from ``sys.meta_path`` (if there).

    Example
    -------
    >>> uninstall()
    >>> any(isinstance(f, TorchaudioFinder) for f in sys.meta_path)
    False
    """
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if not isinstance(finder, TorchaudioFinder)
    ]


def install() -> bool:
    """Puts the finder first on ``sys.meta_path`` unless torchaudio is
    imported already or the hook is turned off; never raises.

    Returns
    -------
    bool
        Whether the finder is in place.

    Example
    -------
    >>> expected = TORCHAUDIO not in sys.modules and (
    ...     os.environ.get(DISABLE_VARIABLE) != "0"
    ... )
    >>> install() == expected
    True
    >>> uninstall()
    """
    try:
        if os.environ.get(DISABLE_VARIABLE, "1") == "0":
            return False
        if TORCHAUDIO in sys.modules:
            return False
        if not any(isinstance(f, TorchaudioFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, TorchaudioFinder())
        return True
    except Exception:  # a start-up hook must never stop Python
        return False


def import_torchaudio() -> ModuleType | None:
    """Imports torchaudio, in pure-Python mode when its native extension
    cannot be loaded; works with or without the start-up hook.

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
    if TORCHAUDIO in sys.modules:
        return sys.modules[TORCHAUDIO]
    try:
        return importlib.import_module(TORCHAUDIO)
    except ImportError as err:
        if getattr(err, "name", None) == TORCHAUDIO:
            return None
        raise
    except OSError as err:
        if not tolerate_unloadable_extension(err):
            raise
        forget_partial_import()
        module = importlib.import_module(TORCHAUDIO)
        _logger().info(
            "torchaudio's native extension could not be loaded (%s); "
            "using torchaudio in pure-Python mode.",
            err,
        )
        return module
