"""Depthwise causal (or anti-causal) convolution in channels-last layout.

Mamba's short convolution has 4 taps per channel. On CPU, a handful of
shifted multiply-adds over a ``[batch, time, channels]`` tensor is much
faster than a grouped ``conv1d`` (which also needs two transposes), and it
is differentiable. The anti-causal form is the causal convolution of the
time-reversed sequence, without reversing anything.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch
import torch.nn.functional as F


def depthwise_conv_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise convolution with zero history, channels last.

    Causal: ``y[t] = bias + sum_k weight[:, 0, k] * x[t - K + 1 + k]``;
    with ``reverse=True`` it is the same convolution applied to the
    time-reversed sequence, expressed in the original time order:
    ``y[t] = bias + sum_k weight[:, 0, k] * x[t + K - 1 - k]``.

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, channels].
    weight : torch.Tensor
        Conv1d weight of a depthwise conv, [channels, 1, K].
    bias : torch.Tensor, optional
        [channels].
    reverse : bool
        Anti-causal (backward-direction) convolution.

    Returns
    -------
    torch.Tensor
        [batch, time, channels].

    Example
    -------
    >>> conv = torch.nn.Conv1d(3, 3, 4, groups=3, padding=3)
    >>> x = torch.randn(2, 10, 3)
    >>> ref = conv(x.transpose(1, 2))[..., :10].transpose(1, 2)
    >>> y = depthwise_conv_channels_last(x, conv.weight, conv.bias)
    >>> torch.allclose(y, ref, atol=1e-6)
    True
    >>> ref_b = conv(x.flip(1).transpose(1, 2))[..., :10].transpose(1, 2)
    >>> y_b = depthwise_conv_channels_last(x, conv.weight, conv.bias, True)
    >>> torch.allclose(y_b, ref_b.flip(1), atol=1e-6)
    True
    """
    taps = weight.shape[-1]
    time = x.shape[1]
    w = weight[:, 0, :].to(x.dtype)  # [channels, K]
    if reverse:
        padded = F.pad(x, (0, 0, 0, taps - 1))
        offsets = [taps - 1 - k for k in range(taps)]
    else:
        padded = F.pad(x, (0, 0, taps - 1, 0))
        offsets = list(range(taps))
    y = padded[:, offsets[0] : offsets[0] + time] * w[:, 0]
    for k in range(1, taps):
        start = offsets[k]
        y = torch.addcmul(y, padded[:, start : start + time], w[:, k])
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y
