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

import torch

from speechbrain_mamba.ops import numba_math

TILE = 16


@functools.lru_cache(maxsize=None)
def _kernel(taps: int):
    """The conv compiled for one kernel size (a compile-time constant)."""
    numba_math.load()
    from speechbrain_mamba.ops import numba_functions

    return numba_functions.make_conv_kernel(taps, TILE)


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
