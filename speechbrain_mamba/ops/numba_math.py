"""Loader of the optional numba CPU kernels' helpers.

LLVM only vectorises a loop if every call in it can be vectorised, and the
C library's ``exp``/``log1p`` cannot. These inlined versions use only
arithmetic (plus one integer-to-float bit cast), so the kernels' inner loops
compile to SIMD code. Accuracy: relative error below 1e-7 for ``exp`` on
[-87, 88] and absolute error below 1e-6 for ``softplus``.

numba is optional; :func:`load` returns None without it (or when the
environment variable ``SBMAMBA_NUMBA=0`` disables the kernels).

Author
------
speechbrain-mamba developers
"""

import functools
import os


@functools.lru_cache(maxsize=1)
def load():
    """Imports numba and compiles the helpers once.

    Returns
    -------
    tuple or None
        ``(numba, fast_exp, fast_softplus)``, or None when unavailable.

    Example
    -------
    >>> helpers = load()
    >>> helpers is None or abs(helpers[1](1.0) - 2.718281828) < 1e-6
    True
    """
    if os.environ.get("SBMAMBA_NUMBA", "1") == "0":
        return None
    try:
        import numba
    except ImportError:
        return None
    if "NUMBA_THREADING_LAYER" not in os.environ:
        # OpenMP worker threads keep spinning after a kernel returns and
        # slow down the PyTorch ops that follow on small machines.
        numba.config.THREADING_LAYER = "workqueue"

    from speechbrain_mamba.ops import numba_functions

    return numba, numba_functions.fast_exp, numba_functions.fast_softplus


def set_threads() -> None:
    """Lets numba use as many threads as PyTorch does (they share cores)."""
    import torch

    helpers = load()
    if helpers is None:
        return
    numba = helpers[0]
    wanted = max(
        1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    )
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


__all__ = ["load", "set_threads"]
