"""Both BiMamba depthwise convolutions (+ SiLU) in one Triton kernel.

The forward direction's convolution is causal; the backward direction's is
the same causal convolution applied to each item's reversed valid frames,
which in the original time order is an anti-causal convolution that sees
zeros after the item's last valid frame::

    out[t, c]      = silu(b_f[c] + sum_k w_f[c, k] x[t - (K - 1) + k, c])
    out[t, d + c]  = silu(b_b[c] + sum_k w_b[c, k] x[t + (K - 1) - k, c])

(x = 0 outside [0, length)). Input channels-last [batch, time, d] (any
time stride: a view of the input projection is fine), output
[batch, time, 2 d], the layout :mod:`bidirectional_scan` reads, so
no reversed copies are made. The backward pass recomputes the
pre-activation instead of storing it.

Author
------
speechbrain-mamba developers
"""

import torch

from speechbrain_mamba.ops.triton.bidirectional_scan import (
    available,
    interpreted,
    kernel_lengths,
)
from speechbrain_mamba.ops.triton.launch_sizes import ceil_div

if available():
    import triton
    import triton.language as tl

#: Frames and channels per program.
TIME_BLOCK = 64
CHANNEL_BLOCK = 64


if available():

    @triton.jit
    def _shifted(x_ptr, b, t, c, shift, s_xb, s_xl, limit, c_ok):
        """x[t + shift, c] for a [BT, BC] tile, 0 outside [0, limit)."""
        pos = t + shift
        mask = ((pos >= 0) & (pos < limit))[:, None] & c_ok[None, :]
        offs = b * s_xb + pos[:, None] * s_xl + c[None, :]
        return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _tap(
        x_ptr, b, t, c, c_ok, k, L, length, s_xb, s_xl,
        BACKWARD_DIRECTION: tl.constexpr, K: tl.constexpr,
    ):  # fmt: skip
        """The input tap k of each output frame sees ([BT, BC] tile)."""
        if BACKWARD_DIRECTION:  # anti-causal, zeros after the item's end
            return _shifted(x_ptr, b, t, c, K - 1 - k, s_xb, s_xl, length, c_ok)
        return _shifted(x_ptr, b, t, c, k - (K - 1), s_xb, s_xl, L, c_ok)

    @triton.jit
    def _pre_activation(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, b, t, c, c_ok, L, length,
        s_xb, s_xl, BACKWARD_DIRECTION: tl.constexpr, K: tl.constexpr,
        BT: tl.constexpr, BC: tl.constexpr,
    ):  # fmt: skip
        """Bias + depthwise convolution of one direction, [BT, BC] fp32."""
        if BACKWARD_DIRECTION:
            w_ptr = wb_ptr
            bias_ptr = bb_ptr
        else:
            w_ptr = wf_ptr
            bias_ptr = bf_ptr
        bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        acc = tl.zeros([BT, BC], tl.float32) + bias[None, :]
        for k in tl.static_range(K):
            w = tl.load(w_ptr + c * K + k, mask=c_ok, other=0.0).to(tl.float32)
            x = _tap(
                x_ptr, b, t, c, c_ok, k, L, length, s_xb, s_xl,
                BACKWARD_DIRECTION, K,
            )  # fmt: skip
            acc += w[None, :] * x
        return acc

    @triton.jit
    def _conv_forward_kernel(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, len_ptr, out_ptr,
        L, DI, s_xb, s_xl, s_ob, s_ol,
        K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
        DIRECTIONS: tl.constexpr = 2,
    ):  # fmt: skip
        b = tl.program_id(2)
        length = tl.load(len_ptr + b)
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        c_ok = c < DI
        mask = (t < L)[:, None] & c_ok[None, :]
        offs = b * s_ob + t[:, None] * s_ol + c[None, :]
        for direction in tl.static_range(DIRECTIONS):
            pre = _pre_activation(
                x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, b, t, c, c_ok, L,
                length, s_xb, s_xl, direction == 1, K, BT, BC,
            )  # fmt: skip
            out = pre * tl.sigmoid(pre)
            tl.store(
                out_ptr + offs + direction * DI,
                out.to(out_ptr.dtype.element_ty),
                mask=mask,
            )

    @triton.jit
    def _conv_grad_pre_kernel(
        x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, len_ptr, dout_ptr, dpre_ptr,
        dw_ptr, db_ptr, L, DI, s_xb, s_xl, s_ob, s_ol,
        K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
        DIRECTIONS: tl.constexpr = 2,
    ):  # fmt: skip
        """Gradient of the pre-activation (fp32, [batch, time,
        DIRECTIONS d]) and per-program partial weight and bias gradients."""
        b = tl.program_id(2)
        tile = tl.program_id(0) + b * tl.num_programs(0)
        length = tl.load(len_ptr + b)
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        c_ok = c < DI
        mask = (t < L)[:, None] & c_ok[None, :]
        offs = b * s_ob + t[:, None] * s_ol + c[None, :]
        for direction in tl.static_range(DIRECTIONS):
            pre = _pre_activation(
                x_ptr, wf_ptr, bf_ptr, wb_ptr, bb_ptr, b, t, c, c_ok, L,
                length, s_xb, s_xl, direction == 1, K, BT, BC,
            )  # fmt: skip
            gate = tl.sigmoid(pre)
            dout = tl.load(
                dout_ptr + offs + direction * DI, mask=mask, other=0.0
            ).to(tl.float32)
            dpre = dout * gate * (1 + pre * (1 - gate))
            tl.store(dpre_ptr + offs + direction * DI, dpre, mask=mask)
            part = tile * DIRECTIONS * DI + c + direction * DI
            tl.store(db_ptr + part, tl.sum(dpre, axis=0), mask=c_ok)
            for k in tl.static_range(K):
                x = _tap(
                    x_ptr, b, t, c, c_ok, k, L, length, s_xb, s_xl,
                    direction == 1, K,
                )  # fmt: skip
                tl.store(
                    dw_ptr + part * K + k, tl.sum(dpre * x, axis=0), mask=c_ok
                )

    @triton.jit
    def _conv_grad_input_kernel(
        dpre_ptr,
        wf_ptr,
        wb_ptr,
        len_ptr,
        dx_ptr,
        L,
        DI,
        s_ob,
        s_ol,
        s_dxb,
        s_dxl,
        K: tl.constexpr,
        BT: tl.constexpr,
        BC: tl.constexpr,
        DIRECTIONS: tl.constexpr = 2,
    ):
        b = tl.program_id(2)
        length = tl.load(len_ptr + b)
        t = tl.program_id(0) * BT + tl.arange(0, BT)
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        c_ok = c < DI
        dx = tl.zeros([BT, BC], tl.float32)
        for k in tl.static_range(K):
            wf = tl.load(wf_ptr + c * K + k, mask=c_ok, other=0.0)
            # forward direction: out[t'] read x[t' - (K - 1) + k]
            dpre_f = _shifted(dpre_ptr, b, t, c, K - 1 - k, s_ob, s_ol, L, c_ok)
            dx += wf.to(tl.float32)[None, :] * dpre_f
            if DIRECTIONS == 2:
                wb = tl.load(wb_ptr + c * K + k, mask=c_ok, other=0.0)
                # backward direction: out[t'] read x[t' + (K - 1) - k],
                # t < length
                dpre_b = _shifted(
                    dpre_ptr + DI, b, t, c, k - (K - 1), s_ob, s_ol, L, c_ok
                )
                dpre_b = tl.where((t < length)[:, None], dpre_b, 0.0)
                dx += wb.to(tl.float32)[None, :] * dpre_b
        mask = (t < L)[:, None] & c_ok[None, :]
        tl.store(
            dx_ptr + b * s_dxb + t[:, None] * s_dxl + c[None, :],
            dx.to(dx_ptr.dtype.element_ty),
            mask=mask,
        )


def _grid(batch: int, time: int, channels: int):
    return (
        ceil_div(time, TIME_BLOCK),
        ceil_div(channels, CHANNEL_BLOCK),
        batch,
    )


class BidirectionalConvFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton convolution kernels (both directions,
    or the causal one only when ``weight_bwd`` is None)."""

    @staticmethod
    def forward(ctx, x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, lengths):
        if not available():
            raise ImportError(
                "The fused bidirectional convolution needs Triton."
            )
        if not (x.is_cuda or interpreted()):
            raise ValueError(
                f"Triton kernels need CUDA tensors, got {x.device}"
            )
        if x.dim() != 3 or x.stride(-1) != 1:
            raise ValueError(
                "x must be [batch, time, channels] with unit channel stride"
            )
        batch, time, channels = x.shape
        kernel = weight_fwd.shape[-1]
        directions = 1 if weight_bwd is None else 2
        ctx.directions = directions
        if directions == 1:  # never read by the kernels: pointers only
            weight_bwd, bias_bwd = weight_fwd, bias_fwd
        ctx.weight_shapes = (weight_fwd.shape, weight_bwd.shape)
        weight_fwd = weight_fwd.reshape(channels, kernel).contiguous()
        weight_bwd = weight_bwd.reshape(channels, kernel).contiguous()
        lengths = kernel_lengths(lengths)
        out = torch.empty(
            batch, time, directions * channels, device=x.device, dtype=x.dtype
        )
        _conv_forward_kernel[_grid(batch, time, channels)](
            x,
            weight_fwd,
            bias_fwd,
            weight_bwd,
            bias_bwd,
            lengths,
            out,
            time,
            channels,
            x.stride(0),
            x.stride(1),
            out.stride(0),
            out.stride(1),
            K=kernel,
            BT=TIME_BLOCK,
            BC=CHANNEL_BLOCK,
            DIRECTIONS=directions,
        )
        ctx.save_for_backward(
            x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, lengths
        )
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, lengths = (
            ctx.saved_tensors
        )
        dout = dout.contiguous()
        batch, time, channels = x.shape
        kernel = weight_fwd.shape[-1]
        directions = ctx.directions
        grid = _grid(batch, time, channels)
        tiles = grid[0] * batch
        dpre = torch.empty(dout.shape, device=x.device, dtype=torch.float32)
        dw = torch.empty(
            tiles, directions * channels, kernel, device=x.device,
            dtype=torch.float32,
        )  # fmt: skip
        db = torch.empty(
            tiles, directions * channels, device=x.device, dtype=torch.float32
        )
        _conv_grad_pre_kernel[grid](
            x,
            weight_fwd,
            bias_fwd,
            weight_bwd,
            bias_bwd,
            lengths,
            dout,
            dpre,
            dw,
            db,
            time,
            channels,
            x.stride(0),
            x.stride(1),
            dout.stride(0),
            dout.stride(1),
            K=kernel,
            BT=TIME_BLOCK,
            BC=CHANNEL_BLOCK,
            DIRECTIONS=directions,
        )
        dx = torch.empty(batch, time, channels, device=x.device, dtype=x.dtype)
        _conv_grad_input_kernel[grid](
            dpre,
            weight_fwd,
            weight_bwd,
            lengths,
            dx,
            time,
            channels,
            dpre.stride(0),
            dpre.stride(1),
            dx.stride(0),
            dx.stride(1),
            K=kernel,
            BT=TIME_BLOCK,
            BC=CHANNEL_BLOCK,
            DIRECTIONS=directions,
        )
        dw = dw.sum(0)
        db = db.sum(0)
        shape_fwd, shape_bwd = ctx.weight_shapes
        grads = [
            dx,
            dw[:channels].reshape(shape_fwd).to(weight_fwd.dtype),
            db[:channels].to(bias_fwd.dtype),
            None,
            None,
            None,
        ]
        if directions == 2:
            grads[3] = dw[channels:].reshape(shape_bwd).to(weight_bwd.dtype)
            grads[4] = db[channels:].to(bias_bwd.dtype)
        return tuple(grads)


def bidirectional_conv_silu(
    x: torch.Tensor,
    weight_fwd: torch.Tensor,
    bias_fwd: torch.Tensor,
    weight_bwd: torch.Tensor,
    bias_bwd: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Causal (forward) and anti-causal (backward direction) depthwise
    convolutions with SiLU, channels last.

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, d] with unit channel stride.
    weight_fwd, weight_bwd : torch.Tensor
        Depthwise kernels [d, 1, K] (``nn.Conv1d`` layout) or [d, K].
    bias_fwd, bias_bwd : torch.Tensor
        [d].
    lengths : torch.Tensor
        Valid frames per item [batch] (integers).

    Returns
    -------
    torch.Tensor
        [batch, time, 2 d]: forward direction, then backward direction.

    Example
    -------
    >>> if torch.cuda.is_available() and available():
    ...     x = torch.randn(1, 9, 4, device="cuda")
    ...     w, b = torch.randn(4, 1, 3, device="cuda"), torch.zeros(4).cuda()
    ...     y = bidirectional_conv_silu(x, w, b, w, b, torch.tensor([9]).cuda())
    ...     assert y.shape == (1, 9, 8)
    """
    return BidirectionalConvFunction.apply(
        x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, lengths
    )


def causal_conv_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """The causal depthwise convolution with SiLU of a unidirectional
    Mamba layer, channels last: the forward direction of
    :func:`bidirectional_conv_silu` alone (same kernels).

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, d] with unit channel stride.
    weight : torch.Tensor
        Depthwise kernel [d, 1, K] (``nn.Conv1d`` layout) or [d, K].
    bias : torch.Tensor
        [d].
    lengths : torch.Tensor
        Valid frames per item [batch] (integers; a causal convolution
        never reads past a frame, so they only shape the launch).

    Returns
    -------
    torch.Tensor
        [batch, time, d].

    Example
    -------
    >>> if torch.cuda.is_available() and available():
    ...     x = torch.randn(1, 9, 4, device="cuda")
    ...     w, b = torch.randn(4, 1, 3, device="cuda"), torch.zeros(4).cuda()
    ...     lengths = torch.tensor([9], device="cuda")
    ...     y = causal_conv_silu(x, w, b, lengths)
    ...     both = bidirectional_conv_silu(x, w, b, w, b, lengths)
    ...     assert torch.equal(y, both[..., :4])
    """
    return BidirectionalConvFunction.apply(x, weight, bias, None, None, lengths)


def conv_reference(
    x: torch.Tensor,
    weight_fwd: torch.Tensor,
    bias_fwd: torch.Tensor,
    weight_bwd: torch.Tensor,
    bias_bwd: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """Plain PyTorch version of :func:`bidirectional_conv_silu` (tests).

    Arguments
    ---------
    x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, lengths
        As in :func:`bidirectional_conv_silu`.

    Returns
    -------
    torch.Tensor
        [batch, time, 2 d] (valid frames of the backward half only; the
        padded ones are 0).

    Example
    -------
    >>> x = torch.randn(1, 5, 2)
    >>> w, b = torch.randn(2, 1, 3), torch.zeros(2)
    >>> conv_reference(x, w, b, w, b, torch.tensor([5])).shape
    torch.Size([1, 5, 4])
    """
    batch, time, channels = x.shape
    kernel = weight_fwd.shape[-1]
    weights = (
        weight_fwd.reshape(channels, 1, kernel),
        weight_bwd.reshape(channels, 1, kernel),
    )
    x_cf = x.transpose(1, 2).float()
    forward = torch.nn.functional.conv1d(
        x_cf,
        weights[0].float(),
        bias_fwd.float(),
        padding=kernel - 1,
        groups=channels,
    )[..., :time]
    backward = torch.zeros_like(forward)
    for b in range(batch):
        length = int(lengths[b])
        reversed_x = x_cf[b : b + 1, :, :length].flip(-1)
        conv = torch.nn.functional.conv1d(
            reversed_x,
            weights[1].float(),
            bias_bwd.float(),
            padding=kernel - 1,
            groups=channels,
        )[..., :length]
        backward[b, :, :length] = conv[0].flip(-1)
    both = torch.cat([forward, backward], dim=1).transpose(1, 2)
    return torch.nn.functional.silu(both)
