"""Vectorisable elementary functions for the numba CPU kernels.

LLVM only vectorises a loop if every call in it can be vectorised, and the
C library's ``exp``/``log1p`` cannot. These inlined versions use only
arithmetic (plus one integer-to-float bit cast), so the kernels' inner loops
compile to SIMD code. Accuracy: relative error below 1e-7 for ``exp`` on
[-87, 88] and absolute error below 1e-6 for ``softplus``.

This module imports numba at import time; use
:func:`speechbrain_mamba.ops.numba_math.load`, which imports it only when
numba is installed. The functions live at module level so that the kernels
that call them can be cached on disk.

Author
------
speechbrain-mamba developers
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = [
    "fast_exp",
    "fast_softplus",
    "make_conv_kernel",
    "make_scan_kernel",
]


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


def make_scan_kernel(d_state: int, tile: int):
    """Compiles the selective scan for one d_state and tile width (both
    compile-time constants, so that the loops unroll)."""
    W = tile
    NS = d_state

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
    def scan(
        u,
        delta,
        z,
        D,
        A,
        Bt,
        Ct,
        state,
        y,
        gate,
        frames,
        reverse,
        bias,
        softplus,
    ):  # pragma: no cover
        # u, delta, z, y: [b, L, d] (channels last); D: [d]; A: [NS, d];
        # Bt, Ct: [b, g, L, NS]; state: [b, NS, d], updated in place.
        # d is a multiple of W and every tile lies inside one group.
        # frames: [b] valid frames; reverse: scan from frames[b] - 1 to 0.
        batch, length, d_inner = delta.shape
        tiles = d_inner // W
        per_group = d_inner // Bt.shape[1]
        for job in numba.prange(batch * tiles):
            b = job // tiles
            c0 = (job - b * tiles) * W
            g = c0 // per_group
            h = np.empty((NS, W), np.float32)
            a = np.empty((NS, W), np.float32)
            for k in range(NS):
                for c in range(W):
                    h[k, c] = state[b, k, c0 + c]
                    a[k, c] = A[k, c0 + c]
            skip = np.empty(W, np.float32)
            for c in range(W):
                skip[c] = D[c0 + c]
            dt = np.empty(W, np.float32)
            du = np.empty(W, np.float32)
            acc = np.empty(W, np.float32)
            valid = frames[b]
            for step in range(valid):
                t = valid - 1 - step if reverse else step
                for c in range(W):
                    dt[c] = delta[b, t, c0 + c] + bias[c0 + c]
                if softplus:
                    for c in range(W):
                        dt[c] = fast_softplus(dt[c])
                for c in range(W):
                    du[c] = dt[c] * u[b, t, c0 + c]
                    acc[c] = skip[c] * u[b, t, c0 + c]
                for k in range(NS):
                    bk = Bt[b, g, t, k]
                    ck = Ct[b, g, t, k]
                    for c in range(W):
                        hk = fast_exp(dt[c] * a[k, c]) * h[k, c] + du[c] * bk
                        h[k, c] = hk
                        acc[c] += hk * ck
                if gate:
                    for c in range(W):
                        zc = z[b, t, c0 + c]
                        y[b, t, c0 + c] = acc[c] * zc / (1.0 + fast_exp(-zc))
                else:
                    for c in range(W):
                        y[b, t, c0 + c] = acc[c]
            for k in range(NS):
                for c in range(W):
                    state[b, k, c0 + c] = h[k, c]

    return scan


def make_conv_kernel(taps: int, tile: int):
    """Compiles the depthwise conv + SiLU for one kernel size and tile
    width (compile-time constants)."""
    W = tile
    K = taps

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
    def conv_silu(x, weight, bias, y, frames, reverse):  # pragma: no cover
        # x, y: [b, L, d] (d multiple of W); weight: [d, K]; bias: [d]
        batch, length, channels = x.shape
        tiles = channels // W
        for job in numba.prange(batch * tiles):
            b = job // tiles
            c0 = (job - b * tiles) * W
            valid = frames[b]
            acc = np.empty(W, np.float32)
            for t in range(length):
                for c in range(W):
                    acc[c] = bias[c0 + c]
                for k in range(K):
                    src = t + K - 1 - k if reverse else t - K + 1 + k
                    if src >= 0 and src < valid:
                        for c in range(W):
                            acc[c] += weight[c0 + c, k] * x[b, src, c0 + c]
                for c in range(W):
                    a = acc[c]
                    y[b, t, c0 + c] = a / (numba.float32(1.0) + fast_exp(-a))

    return conv_silu
