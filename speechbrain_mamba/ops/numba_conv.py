"""Optional numba kernel: Mamba's depthwise conv + SiLU on CPU (inference).

One fused pass over a channels-last ``[batch, time, channels]`` tensor
replaces the padding, the per-tap multiply-adds, the bias and the SiLU of
:func:`speechbrain_mamba.ops.depthwise_conv.depthwise_conv_channels_last`.
Frames at or after an item's valid length count as zeros, so the backward
(anti-causal) direction starts at each item's true end.

Author
------
speechbrain-mamba developers
"""

import functools
from typing import Optional

import numpy as np
import torch

from speechbrain_mamba.ops import numba_math

TILE = 16


@functools.lru_cache(maxsize=None)
def _kernel(taps: int):
    numba, fast_exp, _ = numba_math.load()
    W = TILE
    K = taps

    @numba.njit(parallel=True, fastmath=True, nogil=True)
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


def conv_silu_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    frames: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """silu(depthwise causal (or anti-causal) conv(x)), channels last.

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, channels].
    weight : torch.Tensor
        Depthwise Conv1d weight, [channels, 1, K].
    bias : torch.Tensor, optional
        [channels].
    frames : torch.Tensor, optional
        Valid frames per item; later frames count as zeros.
    reverse : bool
        Anti-causal convolution (the causal one of the reversed sequence).

    Returns
    -------
    torch.Tensor
        [batch, time, channels] fp32.

    Example
    -------
    >>> from speechbrain_mamba.ops.depthwise_conv import (
    ...     depthwise_conv_channels_last)
    >>> conv = torch.nn.Conv1d(20, 20, 4, groups=20)
    >>> x = torch.randn(2, 9, 20)
    >>> ref = torch.nn.functional.silu(
    ...     depthwise_conv_channels_last(x, conv.weight, conv.bias, True))
    >>> if numba_math.load() is not None:
    ...     y = conv_silu_channels_last(x, conv.weight, conv.bias, None, True)
    ... else:
    ...     y = ref
    >>> torch.allclose(y, ref, atol=1e-5)
    True
    """
    if numba_math.load() is None:
        raise ImportError(
            "The numba CPU conv needs numba: pip install numba "
            "(or speechbrain-mamba[cpu-jit]); it is off when SBMAMBA_NUMBA=0."
        )
    batch, time, channels = x.shape
    padded = -(-channels // TILE) * TILE
    extra = padded - channels
    with torch.no_grad():
        xf = x.detach().float()
        w = weight.detach().float()[:, 0, :]
        b = (
            bias.detach().float()
            if bias is not None
            else xf.new_zeros(channels)
        )
        if extra:
            xf = torch.nn.functional.pad(xf, (0, extra))
            w = torch.nn.functional.pad(w, (0, 0, 0, extra))
            b = torch.nn.functional.pad(b, (0, extra))
        if frames is None:
            frames = torch.full((batch,), time, dtype=torch.int64)
        y = torch.empty(batch, time, padded)
        numba_math.set_threads()
        _kernel(w.shape[1])(
            xf.contiguous().numpy(),
            w.contiguous().numpy(),
            b.contiguous().numpy(),
            y.numpy(),
            frames.to(device="cpu", dtype=torch.int64).numpy(),
            reverse,
        )
    return y[..., :channels] if extra else y
