"""The part of a BiMamba layer between its projections on the mamba_ssm
kernels (the path "auto" takes for short inputs when mamba_ssm is installed,
see :func:`speechbrain_mamba.ops.backend.sequence_path`).

Both directions run at once, the backward one as extra channels on the
per-item reversed sequence: one depthwise conv + SiLU (causal_conv1d's
kernel when installed), x_proj, dt_proj, then one mamba_ssm selective scan
with gating (its B/C as a second group), whose two halves are summed.

Author
------
speechbrain-mamba developers
"""

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from speechbrain_mamba.nnet.padding import reverse_valid


def causal_conv1d_silu(
    u: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """SiLU(causal depthwise conv) with causal_conv1d's kernel.

    Arguments
    ---------
    u : torch.Tensor
        [batch, channels, time], contiguous.
    weight : torch.Tensor
        [channels, 1, width].
    bias : torch.Tensor or None
        [channels].

    Returns
    -------
    torch.Tensor
        [batch, channels, time].

    Example
    -------
    >>> callable(causal_conv1d_silu)
    True
    """
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(u, weight.squeeze(1), bias, activation="silu")


def torch_conv1d_silu(
    u: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """SiLU(causal depthwise conv) with ``F.conv1d``.

    Arguments
    ---------
    u : torch.Tensor
        [batch, channels, time].
    weight : torch.Tensor
        [channels, 1, width].
    bias : torch.Tensor or None
        [channels].

    Returns
    -------
    torch.Tensor
        [batch, channels, time].

    Example
    -------
    >>> u = torch.zeros(1, 2, 5)
    >>> u[0, :, 0] = 1.0
    >>> y = torch_conv1d_silu(u, torch.ones(2, 1, 3), None)
    >>> y[0, 0, :4].round(decimals=3)
    tensor([0.7310, 0.7310, 0.7310, 0.0000])
    """
    time = u.shape[-1]
    out = F.conv1d(
        u, weight, bias, padding=weight.shape[-1] - 1, groups=u.shape[1]
    )
    return F.silu(out[..., :time])


def prepare_scan_inputs(
    x: torch.Tensor,
    z: torch.Tensor,
    frames: Optional[torch.Tensor],
    conv_weight: torch.Tensor,
    conv_bias: Optional[torch.Tensor],
    x_proj_weights: Tuple[torch.Tensor, torch.Tensor],
    dt_proj_weights: Tuple[torch.Tensor, torch.Tensor],
    sizes: Tuple[int, int, int],
    conv_silu: Callable,
) -> Tuple[torch.Tensor, ...]:
    """The differentiable part before the scan, both directions.

    Arguments
    ---------
    x, z : torch.Tensor
        Conv input and gate, [batch, time, d_inner].
    frames : torch.Tensor or None
        Valid frames per item.
    conv_weight : torch.Tensor
        Both directions' depthwise kernels, [2 d_inner, 1, d_conv].
    conv_bias : torch.Tensor or None
        [2 d_inner].
    x_proj_weights, dt_proj_weights : tuple of torch.Tensor
        Forward and backward direction weights.
    sizes : tuple of int
        (d_inner, dt_rank, d_state).
    conv_silu : callable
        (x [batch, channels, time], weight, bias) -> silu(causal conv).

    Returns
    -------
    tuple of torch.Tensor
        u and delta [batch, 2 d_inner, time], B and C [batch, 2, d_state,
        time], gate [batch, 2 d_inner, time] (all contiguous).

    Example
    -------
    >>> x, z = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    >>> conv = lambda u, w, b: F.silu(F.conv1d(u, w, b, padding=1, groups=8))[
    ...     ..., :5
    ... ]
    >>> u, delta, B, C, gate = prepare_scan_inputs(
    ...     x, z, None, torch.randn(8, 1, 2), None,
    ...     (torch.randn(5, 4),) * 2, (torch.randn(4, 1),) * 2, (4, 1, 2),
    ...     conv,
    ... )
    >>> u.shape, B.shape
    (torch.Size([1, 8, 5]), torch.Size([1, 2, 2, 5]))
    """
    d_inner, dt_rank, d_state = sizes
    both = torch.cat([x, reverse_valid(x, frames)], dim=-1)
    u = conv_silu(both.transpose(1, 2).contiguous(), conv_weight, conv_bias)
    split = [dt_rank, d_state, d_state]
    dt_f, B_f, C_f = F.linear(
        u[:, :d_inner].transpose(1, 2), x_proj_weights[0]
    ).split(split, dim=-1)
    dt_b, B_b, C_b = F.linear(
        u[:, d_inner:].transpose(1, 2), x_proj_weights[1]
    ).split(split, dim=-1)
    delta = torch.cat(
        [
            F.linear(dt_f, dt_proj_weights[0]),
            F.linear(dt_b, dt_proj_weights[1]),
        ],
        dim=-1,
    )
    delta = delta.transpose(1, 2).contiguous()
    B = torch.stack([B_f, B_b], dim=1).transpose(-1, -2).contiguous()
    C = torch.stack([C_f, C_b], dim=1).transpose(-1, -2).contiguous()
    gate = torch.cat([z, reverse_valid(z, frames)], dim=-1)
    return u, delta, B, C, gate.transpose(1, 2).contiguous()
