"""A whole BiMamba (or unidirectional Mamba) layer in one autograd function
that keeps only its input.

From the layer input to the output projection, a BiMamba layer on the
Triton kernels runs: input projection, both depthwise convolutions with
SiLU, x_proj and dt_proj of each direction, the bidirectional scan with
gating, and the output projection. Plain autograd keeps the projection
output, the conv output, the step sizes and the gated output of every layer
(about seven d_inner-wide values per frame). :class:`BiMambaLayerFunction`
keeps the layer input and one fp32 scan state per chunk of frames; in
backward it recomputes the cheap part before the scan (under the same
autocast state, so the values are the same) and gets its gradients from
autograd, while the scan's backward kernel reruns the scan from the stored
chunk states and hands back each direction's output for the gradient of the
output projection. Same numbers as the plain Triton path, with a fraction
of its activation memory and no second forward scan. A unidirectional Mamba
layer is the same function over the forward direction alone
(:func:`mamba_scan_inputs`, the forward-only scan).

Author
------
speechbrain-mamba developers
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from speechbrain_mamba.ops.triton.bidirectional_conv import (
    bidirectional_conv_silu,
    causal_conv_silu,
)
from speechbrain_mamba.ops.triton.bidirectional_scan import (
    ScanInputs,
    gate_directions,
    kernel_layout,
    scan_backward,
    scan_forward,
)


def both_projections(
    x_proj_fwd: torch.Tensor,
    x_proj_bwd: torch.Tensor,
    dt_proj_fwd: torch.Tensor,
    dt_proj_bwd: torch.Tensor,
    d_state: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both directions' x_proj as one block-diagonal weight, so that one
    GEMM gives the rows [dt_f, B_f, C_f, dt_b, B_b, C_b], and both dt_proj
    as one weight that reads only the dt columns of that output, so that a
    second GEMM writes [batch, time, 2 d_inner] directly.

    Arguments
    ---------
    x_proj_fwd, x_proj_bwd : torch.Tensor
        [dt_rank + 2 d_state, d_inner] each.
    dt_proj_fwd, dt_proj_bwd : torch.Tensor
        [d_inner, dt_rank] each.
    d_state : int
        State size.

    Returns
    -------
    x_proj : torch.Tensor
        [2 (dt_rank + 2 d_state), 2 d_inner].
    dt_proj : torch.Tensor
        [2 d_inner, 2 (dt_rank + 2 d_state)].

    Example
    -------
    >>> x_proj, dt_proj = both_projections(
    ...     torch.ones(5, 4), torch.ones(5, 4), torch.ones(4, 1),
    ...     torch.ones(4, 1), 2,
    ... )
    >>> x_proj.shape, dt_proj.shape
    (torch.Size([10, 8]), torch.Size([8, 10]))
    >>> dt_proj[0].tolist()  # the forward dt column only
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    skip_BC = (0, 2 * d_state)
    return (
        torch.block_diag(x_proj_fwd, x_proj_bwd),
        torch.block_diag(
            F.pad(dt_proj_fwd, skip_BC), F.pad(dt_proj_bwd, skip_BC)
        ),
    )


def bimamba_scan_inputs(
    x: torch.Tensor,
    frames: torch.Tensor,
    sizes: Tuple[int, int, int],
    in_weight: torch.Tensor,
    in_bias: Optional[torch.Tensor],
    conv_weight_fwd: torch.Tensor,
    conv_bias_fwd: torch.Tensor,
    conv_weight_bwd: torch.Tensor,
    conv_bias_bwd: torch.Tensor,
    x_proj_fwd: torch.Tensor,
    x_proj_bwd: torch.Tensor,
    dt_proj_fwd: torch.Tensor,
    dt_proj_bwd: torch.Tensor,
    projections: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, ...]:
    """The differentiable part of a BiMamba layer before the scan.

    Arguments
    ---------
    x : torch.Tensor
        Layer input, [batch, time, d_model].
    frames : torch.Tensor
        Valid frames per item, [batch].
    sizes : tuple of int
        (d_inner, dt_rank, d_state).
    in_weight, in_bias : torch.Tensor
        Input projection (bias may be None).
    conv_weight_fwd, conv_bias_fwd, conv_weight_bwd, conv_bias_bwd
        Depthwise convolutions of the two directions.
    x_proj_fwd, x_proj_bwd, dt_proj_fwd, dt_proj_bwd : torch.Tensor
        Projection weights of the two directions (dt_proj without bias:
        the scan adds it).
    projections : tuple of torch.Tensor, optional
        :func:`both_projections` of those weights, when the caller already
        has them (e.g. kept between inference calls); built here if None.

    Returns
    -------
    tuple of torch.Tensor
        u and delta_raw [batch, time, 2 d_inner] (forward direction first),
        z [batch, time, d_inner], then B_fwd, C_fwd, B_bwd, C_bwd
        [batch, time, d_state] (views of the x_proj outputs).

    Example
    -------
    >>> from speechbrain_mamba.ops.triton.bidirectional_scan import available
    >>> if torch.cuda.is_available() and available():
    ...     g = lambda *shape: torch.randn(*shape, device="cuda")
    ...     u, delta_raw, z, B_f, C_f, B_b, C_b = bimamba_scan_inputs(
    ...         g(2, 9, 4), torch.tensor([9, 5], device="cuda"), (8, 1, 3),
    ...         g(16, 4), None, g(8, 1, 4), g(8), g(8, 1, 4), g(8),
    ...         g(7, 8), g(7, 8), g(8, 1), g(8, 1),
    ...     )
    ...     assert u.shape == delta_raw.shape == (2, 9, 16)
    ...     assert z.shape == (2, 9, 8) and B_b.shape == (2, 9, 3)
    """
    d_inner, dt_rank, d_state = sizes
    x_in, z = F.linear(x, in_weight, in_bias).chunk(2, dim=-1)
    u = bidirectional_conv_silu(
        x_in,
        conv_weight_fwd,
        conv_bias_fwd,
        conv_weight_bwd,
        conv_bias_bwd,
        frames,
    )
    if projections is None:
        projections = both_projections(
            x_proj_fwd, x_proj_bwd, dt_proj_fwd, dt_proj_bwd, d_state
        )
    x_dbl = F.linear(u, projections[0])
    delta_raw = F.linear(x_dbl, projections[1])
    width = dt_rank + 2 * d_state
    B_f, C_f, B_b, C_b = (
        x_dbl[..., start : start + d_state]
        for start in (
            dt_rank,
            dt_rank + d_state,
            width + dt_rank,
            width + dt_rank + d_state,
        )
    )
    return u, delta_raw, z, B_f, C_f, B_b, C_b


def mamba_scan_inputs(
    x: torch.Tensor,
    frames: torch.Tensor,
    sizes: Tuple[int, int, int],
    in_weight: torch.Tensor,
    in_bias: Optional[torch.Tensor],
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    x_proj: torch.Tensor,
    dt_proj: torch.Tensor,
) -> Tuple[Optional[torch.Tensor], ...]:
    """The differentiable part of a unidirectional Mamba layer before the
    scan (the forward direction of :func:`bimamba_scan_inputs`).

    Arguments
    ---------
    x : torch.Tensor
        Layer input, [batch, time, d_model].
    frames : torch.Tensor
        Valid frames per item, [batch].
    sizes : tuple of int
        (d_inner, dt_rank, d_state).
    in_weight, in_bias : torch.Tensor
        Input projection (bias may be None).
    conv_weight, conv_bias : torch.Tensor
        The causal depthwise convolution.
    x_proj, dt_proj : torch.Tensor
        Projection weights (dt_proj without bias: the scan adds it).

    Returns
    -------
    tuple of torch.Tensor
        u, delta_raw and z [batch, time, d_inner], B and C [batch, time,
        d_state] (views of the x_proj output), then None, None (no
        backward direction), in the order of :class:`ScanInputs`.

    Example
    -------
    >>> from speechbrain_mamba.ops.triton.bidirectional_scan import available
    >>> if torch.cuda.is_available() and available():
    ...     g = lambda *shape: torch.randn(*shape, device="cuda")
    ...     u, delta_raw, z, B, C, B_b, C_b = mamba_scan_inputs(
    ...         g(2, 9, 4), torch.tensor([9, 5], device="cuda"), (8, 1, 3),
    ...         g(16, 4), None, g(8, 1, 4), g(8), g(7, 8), g(8, 1),
    ...     )
    ...     assert u.shape == delta_raw.shape == z.shape == (2, 9, 8)
    ...     assert B.shape == (2, 9, 3) and B_b is None and C_b is None
    """
    d_inner, dt_rank, d_state = sizes
    x_in, z = F.linear(x, in_weight, in_bias).chunk(2, dim=-1)
    u = causal_conv_silu(x_in, conv_weight, conv_bias, frames)
    dt_low, B, C = torch.split(
        F.linear(u, x_proj), [dt_rank, d_state, d_state], dim=-1
    )
    delta_raw = F.linear(dt_low, dt_proj)
    return u, delta_raw, z, B, C, None, None


def _scan_inputs(x, frames, sizes, weights):
    """:func:`bimamba_scan_inputs` for the ten weights of a BiMamba layer,
    :func:`mamba_scan_inputs` for the six of a unidirectional one."""
    if len(weights) == 6:
        return mamba_scan_inputs(x, frames, sizes, *weights)
    return bimamba_scan_inputs(x, frames, sizes, *weights)


class BiMambaLayerFunction(torch.autograd.Function):
    """Forward without keeping intermediates; backward recomputes the part
    before the scan (see the module docstring).

    Inputs: x, frames, sizes, scale, A, D, delta_bias, out_weight, out_bias,
    then the weights of :func:`bimamba_scan_inputs` in its order (a BiMamba
    layer), or those of :func:`mamba_scan_inputs` (a unidirectional layer:
    A, D and delta_bias of its d_inner channels, scale 1).
    """

    @staticmethod
    def forward(
        ctx, x, frames, sizes, scale, A, D, delta_bias, out_weight, out_bias,
        *weights,
    ):  # fmt: skip
        ctx.autocast = (
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )
        ctx.sizes, ctx.scale = sizes, float(scale)
        with torch.no_grad():
            u, delta_raw, z, *BC = _scan_inputs(x, frames, sizes, weights)
            y, states, _ = scan_forward(
                ScanInputs(u, delta_raw, z, A, *BC, D, delta_bias, frames)
            )
            out = F.linear(gate_directions(y, z, scale), out_weight, out_bias)
        ctx.save_for_backward(
            x, frames, A, D, delta_bias, out_weight, out_bias, states,
            *weights,
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, dout):
        x, frames, A, D, delta_bias, out_weight, out_bias, states, *weights = (
            ctx.saved_tensors
        )
        needs = ctx.needs_input_grad
        leaves = [
            None if t is None else t.detach().requires_grad_(need)
            for t, need in zip([x, *weights], [needs[0], *needs[9:]])
        ]
        enabled, dtype = ctx.autocast
        with (
            torch.enable_grad(),
            torch.autocast("cuda", dtype=dtype, enabled=enabled),
        ):
            recomputed = _scan_inputs(leaves[0], frames, ctx.sizes, leaves[1:])
        u, delta_raw, z, *BC = (
            None if t is None else t.detach() for t in recomputed
        )
        # gradient of the gated output through the output projection
        d_gated = torch.matmul(dout, out_weight.to(dout.dtype))
        inputs = kernel_layout(
            ScanInputs(u, delta_raw, z, A, *BC, D, delta_bias, frames)
        )
        grads = scan_backward(inputs, states, d_gated, ctx.scale)
        du, ddelta, dz, dA, dB_f, dC_f, dB_b, dC_b, dD, dbias, y = grads
        pairs = [
            (t, g)
            for t, g in zip(
                recomputed, (du, ddelta, dz, dB_f, dC_f, dB_b, dC_b)
            )
            if t is not None and t.requires_grad
        ]
        if pairs:
            torch.autograd.backward(
                [t for t, _ in pairs], [g for _, g in pairs]
            )
        d_out_weight = d_out_bias = None
        if needs[7] or needs[8]:
            gated = gate_directions(y, z, ctx.scale).to(dout.dtype)
            flat = dout.reshape(-1, dout.shape[-1])
            d_out_weight = (flat.t() @ gated.reshape(-1, gated.shape[-1])).to(
                out_weight.dtype
            )
            if out_bias is not None:
                d_out_bias = flat.sum(0).to(out_bias.dtype)
        leaf_grads = [
            None if t is None or not t.requires_grad else t.grad for t in leaves
        ]
        return (
            leaf_grads[0], None, None, None, dA, dD, dbias, d_out_weight,
            d_out_bias, *leaf_grads[1:],
        )  # fmt: skip
