"""Memory-lean inner part of a BiMamba layer on the mamba_ssm kernels.

Between the input projection and the output projection, a BiMamba layer
runs (for both directions at once, the backward one as extra channels on
the per-item reversed sequence): depthwise conv + SiLU, x_proj, dt_proj,
one selective scan with gating, and the sum of the two directions. Under
plain autograd every intermediate of that chain is kept for backward
(reversed copies, conv output, step sizes, gate, scan output: about eight
[batch, 2 d_inner, time] tensors per layer). Here only the projection
output (which autograd keeps anyway), the scan's pre-gate output and its
chunk states are kept; the cheap part before the scan is recomputed in
backward (under the same autocast state, so bit-identical) and its
gradients come from autograd, while the scan's backward is mamba_ssm's own
kernel. Same numbers as :meth:`BiMamba._both_directions_cuda` with plain
autograd, with about half the activation memory.

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


def _scan_module():
    import selective_scan_cuda  # shipped with mamba_ssm

    return selective_scan_cuda


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


class BiMambaInnerFunction(torch.autograd.Function):
    """Forward: prepare + mamba_ssm scan without keeping intermediates;
    backward: recompute the preparation, scan backward, autograd through
    the preparation."""

    @staticmethod
    def forward(
        ctx,
        x,
        z,
        conv_weight,
        conv_bias,
        x_proj_f,
        x_proj_b,
        dt_proj_f,
        dt_proj_b,
        A,
        D,
        delta_bias,
        frames,
        sizes,
        conv_silu,
        scale,
    ):
        ctx.autocast = (
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )
        ctx.sizes, ctx.conv_silu, ctx.scale = sizes, conv_silu, scale
        ctx.has_conv_bias = conv_bias is not None
        with torch.no_grad():
            u, delta, B, C, gate = prepare_scan_inputs(
                x,
                z,
                frames,
                conv_weight,
                conv_bias,
                (x_proj_f, x_proj_b),
                (dt_proj_f, dt_proj_b),
                sizes,
                conv_silu,
            )
            out, states, out_z = _scan_module().fwd(
                u, delta, A, B, C, D, gate, delta_bias, True
            )[:3]
        y = out_z.transpose(1, 2)
        d_inner = sizes[0]
        result = y[..., :d_inner] + reverse_valid(y[..., d_inner:], frames)
        ctx.save_for_backward(
            x,
            z,
            conv_weight,
            conv_bias if conv_bias is not None else x.new_empty(0),
            x_proj_f,
            x_proj_b,
            dt_proj_f,
            dt_proj_b,
            A,
            D,
            delta_bias,
            frames if frames is not None else x.new_empty(0),
            states,
            out,
        )
        ctx.has_frames = frames is not None
        return result * scale if scale != 1.0 else result

    @staticmethod
    def backward(ctx, grad):
        (
            x,
            z,
            conv_weight,
            conv_bias,
            x_proj_f,
            x_proj_b,
            dt_proj_f,
            dt_proj_b,
            A,
            D,
            delta_bias,
            frames,
            states,
            out,
        ) = ctx.saved_tensors
        frames = frames if ctx.has_frames else None
        conv_bias = conv_bias if ctx.has_conv_bias else None
        grad = grad * ctx.scale if ctx.scale != 1.0 else grad
        grad_out_z = torch.cat([grad, reverse_valid(grad, frames)], dim=-1)
        grad_out_z = grad_out_z.transpose(1, 2).contiguous()
        leaves = [
            t.detach().requires_grad_(need)
            for t, need in zip(
                (
                    x,
                    z,
                    conv_weight,
                    conv_bias,
                    x_proj_f,
                    x_proj_b,
                    dt_proj_f,
                    dt_proj_b,
                ),
                ctx.needs_input_grad[:8],
            )
            if t is not None
        ]
        if conv_bias is None:
            leaves.insert(3, None)
        enabled, dtype = ctx.autocast
        with (
            torch.enable_grad(),
            torch.autocast("cuda", dtype=dtype, enabled=enabled),
        ):
            recomputed = prepare_scan_inputs(
                leaves[0],
                leaves[1],
                frames,
                leaves[2],
                leaves[3],
                (leaves[4], leaves[5]),
                (leaves[6], leaves[7]),
                ctx.sizes,
                ctx.conv_silu,
            )
        u, delta, B, C, gate = (t.detach() for t in recomputed)
        du, ddelta, dA, dB, dC, dD, ddelta_bias, dgate = _scan_module().bwd(
            u,
            delta,
            A,
            B,
            C,
            D,
            gate,
            delta_bias,
            grad_out_z,
            states,
            out,
            None,
            True,
            False,
        )[:8]
        pairs = [
            (t, g.to(t.dtype))
            for t, g in zip(recomputed, (du, ddelta, dB, dC, dgate))
            if t.requires_grad
        ]
        if pairs:
            torch.autograd.backward(
                [t for t, _ in pairs], [g for _, g in pairs]
            )
        leaf_grads = [
            None if t is None or not t.requires_grad else t.grad for t in leaves
        ]
        return (
            *leaf_grads,
            dA,
            dD,
            ddelta_bias,
            None,
            None,
            None,
            None,
        )
