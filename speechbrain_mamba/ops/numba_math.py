"""Vectorisable elementary functions for the optional numba CPU kernels.

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
import math
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
    >>> helpers is None or abs(helpers[1](1.0) - math.e) < 1e-6
    True
    """
    if os.environ.get("SBMAMBA_NUMBA", "1") == "0":
        return None
    try:
        import numba
        from llvmlite import ir
        from numba import types
        from numba.extending import intrinsic
    except ImportError:
        return None

    @intrinsic
    def bits_to_float32(typingctx, bits):  # pragma: no cover
        signature = types.float32(types.int32)

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.FloatType())

        return signature, codegen

    @numba.njit(fastmath=True, inline="always")
    def fast_exp(x):  # pragma: no cover
        # exp(x) = 2**n * exp(r), r = x - n ln2 (ln2 split in two parts),
        # with a degree-7 Taylor polynomial for exp(r) on |r| <= ln2 / 2.
        x = min(max(x, numba.float32(-87.0)), numba.float32(88.0))
        n = math.floor(x * numba.float32(1.4426950408889634) + 0.5)
        r = x - n * numba.float32(0.693145751953125)
        r = r - n * numba.float32(1.428606765330187e-06)
        p = numba.float32(1.0 / 5040.0)
        p = p * r + numba.float32(1.0 / 720.0)
        p = p * r + numba.float32(1.0 / 120.0)
        p = p * r + numba.float32(1.0 / 24.0)
        p = p * r + numba.float32(1.0 / 6.0)
        p = p * r + numba.float32(0.5)
        p = p * r + numba.float32(1.0)
        p = p * r + numba.float32(1.0)
        exponent = (numba.int32(n) + numba.int32(127)) << numba.int32(23)
        return p * bits_to_float32(exponent)

    @numba.njit(fastmath=True, inline="always")
    def fast_softplus(x):  # pragma: no cover
        # softplus(x) = max(x, 0) + log(m), m = 1 + exp(-|x|) in (1, 2],
        # log(m) = 2 atanh(s), s = (m - 1) / (m + 1) in (0, 1/3]
        m = numba.float32(1.0) + fast_exp(-abs(x))
        s = (m - numba.float32(1.0)) / (m + numba.float32(1.0))
        s2 = s * s
        p = numba.float32(1.0 / 13.0)
        p = p * s2 + numba.float32(1.0 / 11.0)
        p = p * s2 + numba.float32(1.0 / 9.0)
        p = p * s2 + numba.float32(1.0 / 7.0)
        p = p * s2 + numba.float32(1.0 / 5.0)
        p = p * s2 + numba.float32(1.0 / 3.0)
        p = p * s2 + numba.float32(1.0)
        return max(x, numba.float32(0.0)) + numba.float32(2.0) * s * p

    return numba, fast_exp, fast_softplus


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
