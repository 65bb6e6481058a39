"""One decoding step of a unidirectional Mamba layer in two Triton kernels.

Generating one token at a time (the AR model of VALL-M, a Mamba decoder)
runs every layer on a single frame: a few megabytes of weights per layer and
no real parallel work. With one PyTorch or cuBLAS call per operation
(add + norm, in_proj, conv window, SiLU, x_proj, dt_proj, state update,
gate, out_proj: ten to twenty launches per layer), the step is bound by
kernel launches, on the host and on the GPU. Here a layer takes two:

``_step_input_kernel`` (a program per block of channels and per item):
    the optional pre-norm (RMSNorm or LayerNorm) of the input, the in_proj
    rows of its channels (x and z), the causal conv window (the conv state
    is shifted in place), SiLU, and the block's share of x_proj, added with
    atomics to a zeroed buffer (dt_low, B and C).
``_step_state_kernel`` (a program per block of channels and per item):
    dt_proj, softplus, the state update ``h = exp(dt A) h + dt B x`` (in
    place), the readout ``y = C . h + D x``, the gate ``y silu(z)``, and the
    block's share of out_proj, added to an fp32 output with atomics.

:func:`mamba_block_step` runs a pre-norm residual block
(``residual += mixer(norm(residual))``, the output being the fp32 residual
stream itself); :func:`mamba_mixer_step` runs a bare layer. Everything is
computed in fp32 from weights of any dtype (the result does not depend on
autocast) and the caches are updated in place, so a whole decoding step can
be recorded in a CUDA graph and replayed (the state of a Mamba decoder has
a fixed size, unlike a key/value cache). The pure-PyTorch step is the
reference (``tests/test_triton_mamba_step.py``); which calls take the fused
step is decided by :func:`speechbrain_mamba.ops.backend.fused_step_applies`.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch
from torch import nn

from speechbrain_mamba.ops.triton.bidirectional_scan import (
    available,
    interpreted,
)
from speechbrain_mamba.ops.triton.launch_sizes import ceil_div, next_power_of_2

if available():  # Triton comes with the CUDA builds of PyTorch
    import triton
    import triton.language as tl

    from speechbrain_mamba.ops.triton.bidirectional_scan import softplus

# Tuned on an H200 (d_model 1024, 24 layers, one item, fp32 weights, CUDA
# graph): weight tiles of 4096 / 8192 / 16384 elements, 4 or 8 warps; 8
# channels (tiles of 8 x 1024) and 4 warps for both kernels: 16.2 us per
# layer (16.1-21.6 us for the other choices; mamba_ssm's one-step path
# under autocast: 67 us).

#: Weight elements per tile: channels per program = TILE / padded d_model
#: (8 at d_model 1024), between 1 and ``MAX_CHANNELS``.
TILE = 8192
MAX_CHANNELS = 16
#: Warps per program (both kernels).
WARPS = 4
#: Largest batch the fused step takes. Each item has programs of its own,
#: which read the weights again, so the step's time grows with the batch
#: (H200, d_model 1024, graphed, per layer: 16 / 23 / 37 / 60 / 104 us at 1
#: / 2 / 4 / 8 / 16 items; looping over items in a program with its weights
#: kept in registers was no faster), while mamba_ssm's per-operation path
#: batches its matrix products: 67-72 us from 1 to 32 items.
MAX_BATCH = 8


if available():

    @triton.jit
    def _step_input_kernel(
        input_ptr,
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
        HAS_NORM: tl.constexpr,
        IS_RMS: tl.constexpr,
        HAS_NORM_BIAS: tl.constexpr,
        HAS_IN_BIAS: tl.constexpr,
        HAS_CONV_BIAS: tl.constexpr,
        D_CONV: tl.constexpr,
        MODEL_PAD: tl.constexpr,
        CHANNELS: tl.constexpr,
        PROJ_PAD: tl.constexpr,
    ):
        block = tl.program_id(0)
        item = tl.program_id(1)

        # this block's channels and their weights
        chan = block * CHANNELS + tl.arange(0, CHANNELS)
        chan_ok = chan < d_inner
        k = tl.arange(0, MODEL_PAD)
        k_ok = k < d_model
        tile_ok = chan_ok[:, None] & k_ok[None, :]
        rows = in_weight_ptr + chan[:, None] * d_model + k[None, :]
        w_x = tl.load(rows, mask=tile_ok, other=0.0).to(tl.float32)
        w_z = tl.load(rows + d_inner * d_model, mask=tile_ok, other=0.0).to(
            tl.float32
        )
        if HAS_NORM:
            gain = tl.load(norm_weight_ptr + k, mask=k_ok, other=0.0).to(
                tl.float32
            )
            if HAS_NORM_BIAS:
                shift = tl.load(norm_bias_ptr + k, mask=k_ok, other=0.0).to(
                    tl.float32
                )
        out = tl.arange(0, PROJ_PAD)
        out_ok = out < proj_size
        w_proj = tl.load(
            x_proj_ptr + out[:, None] * d_inner + chan[None, :],
            mask=out_ok[:, None] & chan_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        conv_last = tl.load(
            conv_weight_ptr + chan * D_CONV + D_CONV - 1,
            mask=chan_ok,
            other=0.0,
        ).to(tl.float32)

        x = tl.load(input_ptr + item * d_model + k, mask=k_ok, other=0.0).to(
            tl.float32
        )
        if HAS_NORM:
            if IS_RMS:
                x = x / tl.sqrt(tl.sum(x * x, axis=0) / d_model + eps)
            else:
                mean = tl.sum(x, axis=0) / d_model
                x = tl.where(k_ok, x - mean, 0.0)
                x = x / tl.sqrt(tl.sum(x * x, axis=0) / d_model + eps)
            x *= gain
            if HAS_NORM_BIAS:
                x += shift
        x_in = tl.sum(w_x * x[None, :], axis=1)
        z = tl.sum(w_z * x[None, :], axis=1)
        if HAS_IN_BIAS:
            x_in += tl.load(in_bias_ptr + chan, mask=chan_ok, other=0.0).to(
                tl.float32
            )
            z += tl.load(
                in_bias_ptr + d_inner + chan, mask=chan_ok, other=0.0
            ).to(tl.float32)

        # causal conv over (state, new input)
        state = conv_state_ptr + item * stride_state_b + chan * stride_state_c
        conv = x_in * conv_last
        for j in tl.static_range(D_CONV - 1):
            past = tl.load(state + j * stride_state_k, mask=chan_ok, other=0.0)
            conv += past.to(tl.float32) * tl.load(
                conv_weight_ptr + chan * D_CONV + j, mask=chan_ok, other=0.0
            ).to(tl.float32)
        # the state moves one slot on, in place: every thread holding a copy
        # of a channel has read the old slots before any is overwritten
        tl.debug_barrier()
        for j in tl.static_range(1, D_CONV - 1):
            past = tl.load(state + j * stride_state_k, mask=chan_ok)
            tl.store(state + (j - 1) * stride_state_k, past, mask=chan_ok)
        if D_CONV > 1:
            tl.store(
                state + (D_CONV - 2) * stride_state_k,
                x_in.to(conv_state_ptr.dtype.element_ty),
                mask=chan_ok,
            )
        if HAS_CONV_BIAS:
            conv += tl.load(conv_bias_ptr + chan, mask=chan_ok, other=0.0).to(
                tl.float32
            )
        x_conv = conv * tl.sigmoid(conv)
        tl.store(x_out_ptr + item * d_inner + chan, x_conv, mask=chan_ok)
        tl.store(z_out_ptr + item * d_inner + chan, z, mask=chan_ok)

        # this block's share of x_proj, summed in the zeroed buffer
        share = tl.sum(w_proj * tl.where(chan_ok, x_conv, 0.0)[None, :], axis=1)
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
        output_ptr,
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
        MODEL_PAD: tl.constexpr,
        CHANNELS: tl.constexpr,
    ):
        block = tl.program_id(0)
        item = tl.program_id(1)

        # this block's channels and their weights
        chan = block * CHANNELS + tl.arange(0, CHANNELS)
        chan_ok = chan < d_inner
        rank = tl.arange(0, RANK_PAD)
        rank_ok = rank < dt_rank
        n = tl.arange(0, STATE_PAD)
        n_ok = n < d_state
        d = tl.arange(0, MODEL_PAD)
        d_ok = d < d_model
        w_dt = tl.load(
            dt_weight_ptr + chan[:, None] * dt_rank + rank[None, :],
            mask=chan_ok[:, None] & rank_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        dt_bias = tl.load(dt_bias_ptr + chan, mask=chan_ok, other=0.0).to(
            tl.float32
        )
        tile_ok = chan_ok[:, None] & n_ok[None, :]
        A = -tl.exp(
            tl.load(
                A_log_ptr + chan[:, None] * d_state + n[None, :],
                mask=tile_ok,
                other=0.0,
            ).to(tl.float32)
        )
        skip = tl.load(D_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
        w_out = tl.load(
            out_weight_ptr + d[:, None] * d_inner + chan[None, :],
            mask=d_ok[:, None] & chan_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_OUT_BIAS:  # added once, by the first block
            out_bias = tl.load(
                out_bias_ptr + d, mask=d_ok & (block == 0), other=0.0
            ).to(tl.float32)

        projection = projection_ptr + item * PROJ_PAD
        dt_low = tl.load(projection + rank, mask=rank_ok, other=0.0)
        B = tl.load(projection + dt_rank + n, mask=n_ok, other=0.0)
        C = tl.load(projection + dt_rank + d_state + n, mask=n_ok, other=0.0)
        dt = tl.sum(w_dt * dt_low[None, :], axis=1) + dt_bias
        dt = softplus(dt)
        x = tl.load(x_ptr + item * d_inner + chan, mask=chan_ok, other=0.0)
        z = tl.load(z_ptr + item * d_inner + chan, mask=chan_ok, other=0.0)

        # state update (in place), readout, skip and gate
        h_ptrs = (
            ssm_ptr
            + item * stride_ssm_b
            + chan[:, None] * stride_ssm_c
            + n[None, :] * stride_ssm_n
        )
        h = tl.load(h_ptrs, mask=tile_ok, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
        # every thread holding a copy of the state has read it: overwrite
        tl.debug_barrier()
        tl.store(h_ptrs, h, mask=tile_ok)
        y = tl.sum(h * C[None, :], axis=1) + skip * x
        y = tl.where(chan_ok, y * z * tl.sigmoid(z), 0.0)

        # this block's share of out_proj, added to the output
        share = tl.sum(w_out * y[None, :], axis=1)
        if HAS_OUT_BIAS:
            share += out_bias
        tl.atomic_add(
            output_ptr + item * d_model + d, share, mask=d_ok, sem="relaxed"
        )


def _norm_kind(norm: Optional[nn.Module]) -> Optional[str]:
    """``"layernorm"`` for ``torch.nn.LayerNorm``, ``"rmsnorm"`` for a module
    that declares ``is_rms_norm`` (:class:`speechbrain_mamba.nnet.RMSNorm`:
    ``x / sqrt(mean(x ** 2) + eps) * weight``), else None."""
    if isinstance(norm, nn.LayerNorm):
        return "layernorm"
    if getattr(norm, "is_rms_norm", False):
        return "rmsnorm"
    return None


def check_step_inputs(
    x: torch.Tensor,
    mixer: nn.Module,
    cache,
    norm: Optional[nn.Module] = None,
) -> None:
    """Raises ValueError when the fused step cannot take these inputs.

    Arguments
    ---------
    x : torch.Tensor
        The frame, [batch, d_model], contiguous, on CUDA.
    mixer : torch.nn.Module
        A unidirectional :class:`~speechbrain_mamba.nnet.Mamba`.
    cache : speechbrain_mamba.nnet.MambaCache
        The mixer's recurrent cache (batch of ``x``).
    norm : torch.nn.Module, optional
        A pre-norm (:class:`~speechbrain_mamba.nnet.RMSNorm` or
        ``torch.nn.LayerNorm``).

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba
    >>> mixer = Mamba(8, d_state=4)
    >>> check_step_inputs(torch.zeros(2, 8), mixer, mixer.init_cache(2))
    Traceback (most recent call last):
    ...
    ValueError: the fused decoding step needs CUDA tensors, got cpu
    """
    if x.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"the fused decoding step needs CUDA tensors, got {x.device.type}"
        )
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(
            "the frame must be a contiguous [batch, d_model] tensor, got "
            f"shape {tuple(x.shape)}, strides {x.stride()}"
        )
    if x.shape[1] != mixer.d_model:
        raise ValueError(
            f"the frame has {x.shape[1]} features, the mixer "
            f"d_model={mixer.d_model}"
        )
    if norm is not None and _norm_kind(norm) is None:
        raise ValueError(
            f"norm must be RMSNorm or LayerNorm, got {type(norm).__name__}"
        )
    if getattr(mixer, "directions", None) != ("",):
        raise ValueError("the fused decoding step takes a unidirectional Mamba")
    weights = {
        "in_proj.weight": mixer.in_proj.weight,
        "conv1d.weight": mixer.conv1d.weight,
        "x_proj.weight": mixer.x_proj.weight,
        "dt_proj.weight": mixer.dt_proj.weight,
        "A_log": mixer.A_log,
        "out_proj.weight": mixer.out_proj.weight,
    }
    for name, weight in weights.items():
        if not weight.is_contiguous():
            raise ValueError(
                f"the fused decoding step reads {name} as a contiguous "
                "tensor; it is not (call .contiguous() on it)"
            )
    if not all(hasattr(cache, name) for name in ("conv", "ssm", "batch_size")):
        raise ValueError(
            "cache must be a MambaCache (conv and ssm states), got "
            f"{type(cache).__name__}"
        )
    if cache.batch_size != x.shape[0]:
        raise ValueError(
            f"cache holds {cache.batch_size} sequences, the frame has "
            f"{x.shape[0]}"
        )
    if cache.ssm.dtype != torch.float32:
        raise ValueError(f"cache.ssm must be fp32, got {cache.ssm.dtype}")


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
    size = next_power_of_2(mixer.dt_rank + 2 * mixer.d_state)
    return torch.zeros(layers, batch, size, device=device)


def _launch(
    x: torch.Tensor,
    output: torch.Tensor,
    norm: Optional[nn.Module],
    mixer: nn.Module,
    cache,
    projection: Optional[torch.Tensor],
) -> None:
    """Runs both kernels: ``output += mixer(norm(x))`` (fp32 output)."""
    if not available():
        raise ImportError(
            "the fused decoding step needs Triton, which comes with the CUDA "
            "builds of PyTorch"
        )
    check_step_inputs(x, mixer, cache, norm)
    batch, d_model = x.shape
    d_inner, d_state, dt_rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    device = x.device
    if projection is None:
        projection = projection_buffer(batch, mixer, device)[0]
    proj_pad = projection.shape[-1]
    x_conv = torch.empty(batch, d_inner, device=device)
    z = torch.empty(batch, d_inner, device=device)
    conv, in_proj, out_proj = mixer.conv1d, mixer.in_proj, mixer.out_proj
    norm_bias = getattr(norm, "bias", None)
    model_pad = next_power_of_2(d_model)
    channels = min(MAX_CHANNELS, max(1, TILE // model_pad))
    grid = (ceil_div(d_inner, channels), batch)
    unused = output  # stands for absent optional pointers (never read)
    _step_input_kernel[grid](
        x,
        norm.weight if norm is not None else unused,
        norm_bias if norm_bias is not None else unused,
        norm.eps if norm is not None else 0.0,
        in_proj.weight,
        in_proj.bias if in_proj.bias is not None else unused,
        cache.conv,
        conv.weight,
        conv.bias if conv.bias is not None else unused,
        mixer.x_proj.weight,
        x_conv,
        z,
        projection,
        d_model,
        d_inner,
        dt_rank + 2 * d_state,
        *cache.conv.stride(),
        HAS_NORM=norm is not None,
        IS_RMS=_norm_kind(norm) == "rmsnorm",
        HAS_NORM_BIAS=norm_bias is not None,
        HAS_IN_BIAS=in_proj.bias is not None,
        HAS_CONV_BIAS=conv.bias is not None,
        D_CONV=mixer.d_conv,
        MODEL_PAD=model_pad,
        CHANNELS=channels,
        PROJ_PAD=proj_pad,
        num_warps=WARPS,
    )
    _step_state_kernel[grid](
        projection,
        x_conv,
        z,
        mixer.dt_proj.weight,
        mixer.dt_proj.bias,
        mixer.A_log,
        mixer.D,
        cache.ssm,
        out_proj.weight,
        out_proj.bias if out_proj.bias is not None else unused,
        output,
        d_model,
        d_inner,
        dt_rank,
        d_state,
        *cache.ssm.stride(),
        HAS_OUT_BIAS=out_proj.bias is not None,
        RANK_PAD=next_power_of_2(dt_rank),
        STATE_PAD=next_power_of_2(d_state),
        PROJ_PAD=proj_pad,
        MODEL_PAD=model_pad,
        CHANNELS=channels,
        num_warps=WARPS,
    )


def mamba_block_step(
    residual: torch.Tensor,
    norm: nn.Module,
    mixer: nn.Module,
    cache,
    projection: Optional[torch.Tensor] = None,
) -> None:
    """Adds one pre-norm Mamba block to the residual stream of one frame:
    ``residual += mixer(norm(residual))``, updating ``cache`` in place.

    Arguments
    ---------
    residual : torch.Tensor
        [batch, d_model] fp32 on CUDA, updated in place.
    norm : torch.nn.Module
        :class:`~speechbrain_mamba.nnet.RMSNorm` or ``torch.nn.LayerNorm``
        over d_model.
    mixer : torch.nn.Module
        A unidirectional :class:`~speechbrain_mamba.nnet.Mamba` (its
        in_proj, conv1d, x_proj, dt_proj, A_log, D and out_proj are read).
    cache : speechbrain_mamba.nnet.MambaCache
        The mixer's conv and SSM state, updated in place.
    projection : torch.Tensor, optional
        A zeroed buffer from :func:`projection_buffer` (one layer's slice);
        allocated here when not given.

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba, RMSNorm
    >>> if torch.cuda.is_available() and available():
    ...     mixer = Mamba(16, d_state=4).cuda()
    ...     norm = RMSNorm(16).cuda()
    ...     residual = torch.randn(1, 16, device="cuda")
    ...     expected = residual + mixer(norm(residual)[:, None],
    ...                                 cache=mixer.init_cache(1))[:, 0]
    ...     mamba_block_step(residual, norm, mixer, mixer.init_cache(1))
    ...     assert torch.allclose(residual, expected, atol=1e-5)
    """
    if residual.dtype != torch.float32:
        raise ValueError(f"residual must be fp32, got {residual.dtype}")
    if norm is None:
        raise ValueError("mamba_block_step needs the block's norm")
    _launch(residual, residual, norm, mixer, cache, projection)


def mamba_mixer_step(x: torch.Tensor, mixer: nn.Module, cache) -> torch.Tensor:
    """One frame through a unidirectional Mamba layer (no norm), updating
    ``cache`` in place.

    Arguments
    ---------
    x : torch.Tensor
        [batch, d_model] on CUDA, any float dtype.
    mixer : torch.nn.Module
        A unidirectional :class:`~speechbrain_mamba.nnet.Mamba`.
    cache : speechbrain_mamba.nnet.MambaCache
        Its conv and SSM state, updated in place.

    Returns
    -------
    torch.Tensor
        [batch, d_model] fp32.

    Example
    -------
    >>> from speechbrain_mamba.nnet import Mamba
    >>> if torch.cuda.is_available() and available():
    ...     mixer = Mamba(16, d_state=4, backend="torch").cuda()
    ...     x = torch.randn(2, 16, device="cuda")
    ...     expected = mixer(x[:, None], cache=mixer.init_cache(2))[:, 0]
    ...     got = mamba_mixer_step(x, mixer, mixer.init_cache(2))
    ...     assert torch.allclose(got, expected, atol=1e-5)
    """
    output = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    _launch(x.contiguous(), output, None, mixer, cache, None)
    return output
