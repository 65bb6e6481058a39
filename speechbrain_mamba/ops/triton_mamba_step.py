"""One decoding step of a unidirectional Mamba block in two Triton kernels.

Generating one token at a time (the AR model of VALL-M, a Mamba decoder)
runs every layer on a single frame: a few megabytes of weights per layer and
no real parallel work. With one PyTorch or cuBLAS call per operation
(add + norm, in_proj, conv window, SiLU, x_proj, dt_proj, state update,
gate, out_proj: ten to fifteen launches per layer), the step is bound by
kernel launches, on the host and on the GPU. Here a pre-norm residual block
(``residual += mixer(norm(residual))``) takes two launches:

``_step_input_kernel`` (a program per block of channels and per item):
    the norm of the residual stream, the in_proj rows of its channels (x
    and z), the causal conv window (the conv state is shifted in place),
    SiLU, and the block's share of x_proj, added with atomics to a zeroed
    buffer (dt_low, B and C).
``_step_state_kernel`` (a program per block of channels and per item):
    dt_proj, softplus,
    the state update ``h = exp(dt A) h + dt B x`` (in place), the readout
    ``y = C . h + D x``, the gate ``y silu(z)``, and the block's share of
    out_proj, added to the fp32 residual stream with atomics.

Everything is computed in fp32 from weights of any dtype (the result does
not depend on autocast), the residual stream stays in fp32, and the caches
are updated in place, so a whole decoding step can be recorded in a CUDA
graph and replayed (the state of a Mamba decoder has a fixed size, unlike a
key/value cache). The pure-PyTorch step is the reference
(``tests/test_triton_mamba_step.py``).

Author
------
speechbrain-mamba developers
"""

import os
from typing import Optional

import torch
from torch import nn

from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.nnet.norm import RMSNorm

try:  # optional: only present with a CUDA build of PyTorch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

# Block sizes tuned on an H200 (d_model 1024, 24 layers, one item, fp32
# weights, CUDA graph): 2-8 channels, 256 / 1024 elements, 2-8 warps for
# the input kernel, 4-32 channels for the state kernel; 17.9 us per layer
# (18-34 us for the other choices; mamba_ssm's one-step path: 38.7 us).

#: Channels per program of the input kernel (in_proj rows of x and of z).
INPUT_CHANNEL_BLOCK = 8
#: d_model elements per iteration of the input kernel's in_proj loop.
INPUT_MODEL_BLOCK = 1024
#: Warps per program of the input kernel.
INPUT_WARPS = 8
#: Channels per program of the state kernel.
STATE_CHANNEL_BLOCK = 8
#: d_model elements per iteration of the state kernel's out_proj loop.
STATE_MODEL_BLOCK = 1024
#: Warps per program of the state kernel.
STATE_WARPS = 8
#: Largest batch the fused step takes: each item is a program of its own
#: that reads the weights again, so the time grows with the batch (H200, d
#: 1024, graphed, per layer: 17.9 / 24.3 / 38.6 / 65.0 / 116 us at 1 / 2 / 4
#: / 8 / 16 items), while the per-operation path batches its matrix
#: products (mamba_ssm's: 67-72 us from 1 to 32 items).
MAX_BATCH = 8


def available() -> bool:
    """Whether Triton can be imported.

    Returns
    -------
    bool

    Example
    -------
    >>> isinstance(available(), bool)
    True
    """
    return triton is not None


if triton is not None:

    @triton.jit
    def _step_input_kernel(
        residual_ptr,
        norm_weight_ptr,
        norm_bias_ptr,
        eps,
        in_weight_ptr,
        in_bias_ptr,
        conv_state_ptr,
        conv_weight_ptr,
        conv_bias_ptr,
        x_proj_ptr,
        x_out_ptr,
        z_out_ptr,
        projection_ptr,
        d_model,
        d_inner,
        proj_size,
        stride_state_b,
        stride_state_c,
        stride_state_k,
        IS_RMS: tl.constexpr,
        HAS_NORM_BIAS: tl.constexpr,
        HAS_IN_BIAS: tl.constexpr,
        HAS_CONV_BIAS: tl.constexpr,
        D_CONV: tl.constexpr,
        MODEL_PAD: tl.constexpr,
        MODEL_BLOCK: tl.constexpr,
        CHANNELS: tl.constexpr,
        PROJ_PAD: tl.constexpr,
    ):
        block = tl.program_id(0)
        item = tl.program_id(1)
        row = residual_ptr + item * d_model

        # norm statistics of the residual stream (fp32)
        offs = tl.arange(0, MODEL_PAD)
        valid = offs < d_model
        r = tl.load(row + offs, mask=valid, other=0.0)
        if IS_RMS:
            mean = 0.0
            var = tl.sum(r * r, axis=0) / d_model
        else:
            mean = tl.sum(r, axis=0) / d_model
            centred = tl.where(valid, r - mean, 0.0)
            var = tl.sum(centred * centred, axis=0) / d_model
        rstd = 1.0 / tl.sqrt(var + eps)

        # in_proj rows of this block's channels: x (first half), z (second)
        chan = block * CHANNELS + tl.arange(0, CHANNELS)
        chan_ok = chan < d_inner
        acc_x = tl.zeros([CHANNELS], dtype=tl.float32)
        acc_z = tl.zeros([CHANNELS], dtype=tl.float32)
        for start in range(0, d_model, MODEL_BLOCK):
            k = start + tl.arange(0, MODEL_BLOCK)
            k_ok = k < d_model
            normed = (tl.load(row + k, mask=k_ok, other=0.0) - mean) * rstd
            normed *= tl.load(norm_weight_ptr + k, mask=k_ok, other=0.0).to(
                tl.float32
            )
            if HAS_NORM_BIAS:
                normed += tl.load(norm_bias_ptr + k, mask=k_ok, other=0.0).to(
                    tl.float32
                )
            normed = tl.where(k_ok, normed, 0.0)
            tile_ok = chan_ok[:, None] & k_ok[None, :]
            w_x = tl.load(
                in_weight_ptr + chan[:, None] * d_model + k[None, :],
                mask=tile_ok,
                other=0.0,
            ).to(tl.float32)
            acc_x += tl.sum(w_x * normed[None, :], axis=1)
            w_z = tl.load(
                in_weight_ptr
                + (chan[:, None] + d_inner) * d_model
                + k[None, :],
                mask=tile_ok,
                other=0.0,
            ).to(tl.float32)
            acc_z += tl.sum(w_z * normed[None, :], axis=1)
        if HAS_IN_BIAS:
            acc_x += tl.load(in_bias_ptr + chan, mask=chan_ok, other=0.0).to(
                tl.float32
            )
            acc_z += tl.load(
                in_bias_ptr + d_inner + chan, mask=chan_ok, other=0.0
            ).to(tl.float32)

        # causal conv over (state, new input); the state moves one slot on
        state = conv_state_ptr + item * stride_state_b + chan * stride_state_c
        conv = acc_x * tl.load(
            conv_weight_ptr + chan * D_CONV + D_CONV - 1,
            mask=chan_ok,
            other=0.0,
        ).to(tl.float32)
        for j in tl.static_range(D_CONV - 1):
            past = tl.load(state + j * stride_state_k, mask=chan_ok, other=0.0)
            conv += past.to(tl.float32) * tl.load(
                conv_weight_ptr + chan * D_CONV + j, mask=chan_ok, other=0.0
            ).to(tl.float32)
            if j > 0:
                tl.store(state + (j - 1) * stride_state_k, past, mask=chan_ok)
        if D_CONV > 1:
            tl.store(
                state + (D_CONV - 2) * stride_state_k,
                acc_x.to(conv_state_ptr.dtype.element_ty),
                mask=chan_ok,
            )
        if HAS_CONV_BIAS:
            conv += tl.load(conv_bias_ptr + chan, mask=chan_ok, other=0.0).to(
                tl.float32
            )
        x_conv = conv * tl.sigmoid(conv)
        tl.store(x_out_ptr + item * d_inner + chan, x_conv, mask=chan_ok)
        tl.store(z_out_ptr + item * d_inner + chan, acc_z, mask=chan_ok)

        # this block's share of x_proj (W[:, chan] @ x_conv[chan]), added
        # to the zeroed projection buffer
        out = tl.arange(0, PROJ_PAD)
        out_ok = out < proj_size
        w = tl.load(
            x_proj_ptr + out[:, None] * d_inner + chan[None, :],
            mask=out_ok[:, None] & chan_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        share = tl.sum(w * x_conv[None, :], axis=1)
        tl.atomic_add(
            projection_ptr + item * PROJ_PAD + out,
            share,
            mask=out_ok,
            sem="relaxed",
        )

    @triton.jit
    def _step_state_kernel(
        projection_ptr,
        x_ptr,
        z_ptr,
        dt_weight_ptr,
        dt_bias_ptr,
        A_log_ptr,
        D_ptr,
        ssm_ptr,
        out_weight_ptr,
        out_bias_ptr,
        residual_ptr,
        d_model,
        d_inner,
        dt_rank,
        d_state,
        stride_ssm_b,
        stride_ssm_c,
        stride_ssm_n,
        HAS_OUT_BIAS: tl.constexpr,
        RANK_PAD: tl.constexpr,
        STATE_PAD: tl.constexpr,
        PROJ_PAD: tl.constexpr,
        MODEL_BLOCK: tl.constexpr,
        CHANNELS: tl.constexpr,
    ):
        block = tl.program_id(0)
        item = tl.program_id(1)

        # x_proj output (dt_low, B, C), summed by the input kernel
        rank = tl.arange(0, RANK_PAD)
        rank_ok = rank < dt_rank
        n = tl.arange(0, STATE_PAD)
        n_ok = n < d_state
        projection = projection_ptr + item * PROJ_PAD
        dt_low = tl.load(projection + rank, mask=rank_ok, other=0.0)
        B = tl.load(projection + dt_rank + n, mask=n_ok, other=0.0)
        C = tl.load(projection + dt_rank + d_state + n, mask=n_ok, other=0.0)

        # step sizes of this block's channels: softplus(dt_proj(dt_low))
        chan = block * CHANNELS + tl.arange(0, CHANNELS)
        chan_ok = chan < d_inner
        w_dt = tl.load(
            dt_weight_ptr + chan[:, None] * dt_rank + rank[None, :],
            mask=chan_ok[:, None] & rank_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        dt = tl.sum(w_dt * dt_low[None, :], axis=1)
        dt += tl.load(dt_bias_ptr + chan, mask=chan_ok, other=0.0).to(
            tl.float32
        )
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))

        # state update, readout, skip and gate
        x = tl.load(x_ptr + item * d_inner + chan, mask=chan_ok, other=0.0)
        z = tl.load(z_ptr + item * d_inner + chan, mask=chan_ok, other=0.0)
        tile_ok = chan_ok[:, None] & n_ok[None, :]
        A = -tl.exp(
            tl.load(
                A_log_ptr + chan[:, None] * d_state + n[None, :],
                mask=tile_ok,
                other=0.0,
            ).to(tl.float32)
        )
        h_ptrs = (
            ssm_ptr
            + item * stride_ssm_b
            + chan[:, None] * stride_ssm_c
            + n[None, :] * stride_ssm_n
        )
        h = tl.load(h_ptrs, mask=tile_ok, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
        tl.store(h_ptrs, h, mask=tile_ok)
        y = tl.sum(h * C[None, :], axis=1)
        y += tl.load(D_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32) * x
        y = tl.where(chan_ok, y * z * tl.sigmoid(z), 0.0)

        # this block's share of out_proj, added to the residual stream
        row = residual_ptr + item * d_model
        for start in range(0, d_model, MODEL_BLOCK):
            d = start + tl.arange(0, MODEL_BLOCK)
            d_ok = d < d_model
            w = tl.load(
                out_weight_ptr + d[:, None] * d_inner + chan[None, :],
                mask=d_ok[:, None] & chan_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            share = tl.sum(w * y[None, :], axis=1)
            if HAS_OUT_BIAS:
                share += tl.load(
                    out_bias_ptr + d, mask=d_ok & (block == 0), other=0.0
                ).to(tl.float32)
            tl.atomic_add(row + d, share, mask=d_ok, sem="relaxed")


def _next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def check_step_inputs(
    residual: torch.Tensor, norm: nn.Module, mixer: nn.Module, cache
) -> None:
    """Raises ValueError when the fused step cannot take these inputs.

    Arguments
    ---------
    residual : torch.Tensor
        The residual stream, [batch, d_model], fp32, contiguous, on CUDA.
    norm : torch.nn.Module
        The block's pre-norm (:class:`RMSNorm` or ``torch.nn.LayerNorm``).
    mixer : torch.nn.Module
        A unidirectional :class:`~speechbrain_mamba.nnet.Mamba`.
    cache : MambaCache
        The mixer's recurrent cache (batch of ``residual``).

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba
    >>> mixer = Mamba(8, d_state=4)
    >>> check_step_inputs(torch.zeros(2, 8), RMSNorm(8), mixer,
    ...                   mixer.init_cache(2))
    Traceback (most recent call last):
    ...
    ValueError: the fused decoding step needs CUDA tensors, got cpu
    """
    if residual.device.type != "cuda" and not _interpreted():
        raise ValueError(
            "the fused decoding step needs CUDA tensors, got "
            f"{residual.device.type}"
        )
    if residual.dim() != 2 or residual.dtype != torch.float32:
        raise ValueError(
            "residual must be a [batch, d_model] fp32 tensor, got "
            f"{tuple(residual.shape)} {residual.dtype}"
        )
    if not residual.is_contiguous():
        raise ValueError("residual must be contiguous")
    if residual.shape[1] != mixer.d_model:
        raise ValueError(
            f"residual has {residual.shape[1]} features, the mixer "
            f"d_model={mixer.d_model}"
        )
    if not isinstance(norm, (RMSNorm, nn.LayerNorm)):
        raise ValueError(
            f"norm must be RMSNorm or LayerNorm, got {type(norm).__name__}"
        )
    if getattr(mixer, "directions", None) != ("",):
        raise ValueError("the fused decoding step takes a unidirectional Mamba")
    if not isinstance(cache, MambaCache):
        raise ValueError(f"cache must be a MambaCache, got {type(cache)}")
    if cache.batch_size != residual.shape[0]:
        raise ValueError(
            f"cache holds {cache.batch_size} sequences, the residual "
            f"{residual.shape[0]}"
        )
    if cache.ssm.dtype != torch.float32:
        raise ValueError(f"cache.ssm must be fp32, got {cache.ssm.dtype}")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def projection_buffer(
    batch: int, mixer: nn.Module, device, layers: int = 1
) -> torch.Tensor:
    """The zeroed buffer the input kernel sums a block's x_proj output in.

    Arguments
    ---------
    batch : int
        Items.
    mixer : torch.nn.Module
        The Mamba mixer (its dt_rank and d_state give the size).
    device : torch.device or str
        Where the buffer goes.
    layers : int
        Blocks to make a buffer for (one allocation, one zero fill).

    Returns
    -------
    torch.Tensor
        [layers, batch, padded dt_rank + 2 d_state] fp32 zeros.

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba
    >>> projection_buffer(2, Mamba(32, d_state=8), "cpu", layers=3).shape
    torch.Size([3, 2, 32])
    """
    size = _next_power_of_two(mixer.dt_rank + 2 * mixer.d_state)
    return torch.zeros(layers, batch, size, device=device)


def mamba_block_step(
    residual: torch.Tensor,
    norm: nn.Module,
    mixer: nn.Module,
    cache: MambaCache,
    projection: Optional[torch.Tensor] = None,
) -> None:
    """Adds one pre-norm Mamba block to the residual stream of one frame:
    ``residual += mixer(norm(residual))``, updating ``cache`` in place.

    Arguments
    ---------
    residual : torch.Tensor
        [batch, d_model] fp32 on CUDA, updated in place.
    norm : torch.nn.Module
        :class:`RMSNorm` or ``torch.nn.LayerNorm`` over d_model.
    mixer : torch.nn.Module
        A unidirectional :class:`~speechbrain_mamba.nnet.Mamba` (its
        in_proj, conv1d, x_proj, dt_proj, A_log, D and out_proj are read).
    cache : MambaCache
        The mixer's conv and SSM state, updated in place.
    projection : torch.Tensor, optional
        A zeroed buffer from :func:`projection_buffer` (one layer's slice);
        allocated here when not given.

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba
    >>> if torch.cuda.is_available() and available():
    ...     mixer = Mamba(16, d_state=4).cuda()
    ...     norm = RMSNorm(16).cuda()
    ...     cache = mixer.init_cache(1)
    ...     residual = torch.randn(1, 16, device="cuda")
    ...     expected = residual + mixer(norm(residual)[:, None],
    ...                                 cache=mixer.init_cache(1))[:, 0]
    ...     mamba_block_step(residual, norm, mixer, cache)
    ...     assert torch.allclose(residual, expected, atol=1e-5)
    """
    if triton is None:
        raise ImportError(
            "the fused decoding step needs Triton, which comes with the CUDA "
            "builds of PyTorch"
        )
    check_step_inputs(residual, norm, mixer, cache)
    batch, d_model = residual.shape
    d_inner, d_state, dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    device = residual.device
    if projection is None:
        projection = projection_buffer(batch, mixer, device)[0]
    proj_pad = projection.shape[-1]
    x_conv = torch.empty(batch, d_inner, device=device)
    z = torch.empty(batch, d_inner, device=device)
    conv, in_proj, out_proj = mixer.conv1d, mixer.in_proj, mixer.out_proj
    norm_bias = getattr(norm, "bias", None)
    dummy = residual  # stands for absent optional pointers (never read)
    model_pad = _next_power_of_two(d_model)
    _step_input_kernel[(triton.cdiv(d_inner, INPUT_CHANNEL_BLOCK), batch)](
        residual,
        norm.weight,
        norm_bias if norm_bias is not None else dummy,
        norm.eps,
        in_proj.weight,
        in_proj.bias if in_proj.bias is not None else dummy,
        cache.conv,
        conv.weight,
        conv.bias if conv.bias is not None else dummy,
        mixer.x_proj.weight,
        x_conv,
        z,
        projection,
        d_model,
        d_inner,
        dt_rank + 2 * d_state,
        *cache.conv.stride(),
        IS_RMS=isinstance(norm, RMSNorm),
        HAS_NORM_BIAS=norm_bias is not None,
        HAS_IN_BIAS=in_proj.bias is not None,
        HAS_CONV_BIAS=conv.bias is not None,
        D_CONV=mixer.d_conv,
        MODEL_PAD=model_pad,
        MODEL_BLOCK=min(INPUT_MODEL_BLOCK, model_pad),
        CHANNELS=INPUT_CHANNEL_BLOCK,
        PROJ_PAD=proj_pad,
        num_warps=INPUT_WARPS,
    )
    _step_state_kernel[(triton.cdiv(d_inner, STATE_CHANNEL_BLOCK), batch)](
        projection,
        x_conv,
        z,
        mixer.dt_proj.weight,
        mixer.dt_proj.bias,
        mixer.A_log,
        mixer.D,
        cache.ssm,
        out_proj.weight,
        out_proj.bias if out_proj.bias is not None else dummy,
        residual,
        d_model,
        d_inner,
        dt_rank,
        d_state,
        *cache.ssm.stride(),
        HAS_OUT_BIAS=out_proj.bias is not None,
        RANK_PAD=_next_power_of_two(dt_rank),
        STATE_PAD=_next_power_of_two(d_state),
        PROJ_PAD=proj_pad,
        MODEL_BLOCK=min(STATE_MODEL_BLOCK, model_pad),
        CHANNELS=STATE_CHANNEL_BLOCK,
        num_warps=STATE_WARPS,
    )
