"""The residual add and the pre-norm of a Mamba block in one Triton kernel.

A pre-norm block starts with ``residual = hidden + residual`` (kept in fp32)
and ``normed = norm(residual)`` (RMSNorm or LayerNorm, fp32 math). Plain
autograd keeps, per layer, fp32 [frames, d_model] intermediates of the norm
(the product that the weight's gradient needs, the normed output) besides
the residual stream itself. :func:`add_norm` does both steps in one kernel
launch and keeps for the backward pass only the new residual stream (an
output that stays alive anyway: the next block adds to it) and one or two
fp32 numbers per row (the reciprocal standard deviation, and the mean for
LayerNorm); the backward kernel recomputes the normalised values from them,
so forward and backward each take one launch (plus a small sum of the
weight gradient's per-program partial sums).

The numbers are those of the plain path (:func:`add_norm_reference`): the
sum is computed in fp32 and stored in the residual's dtype, the norm reads
the stored value (rounded to the norm weight's dtype, as
``norm(residual.to(weight.dtype))`` does), and the output is written in the
dtype the caller asks for (under autocast, the dtype the mixer's first
matrix product casts it to anyway). Which calls use it is decided in
:func:`speechbrain_mamba.ops.backend.fused_add_norm`.

Author
------
speechbrain-mamba developers
"""

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from speechbrain_mamba.ops.triton.bidirectional_scan import (
    available,
    interpreted,
)
from speechbrain_mamba.ops.triton.launch_sizes import ceil_div, next_power_of_2

if available():  # Triton comes with the CUDA builds of PyTorch
    import triton
    import triton.language as tl

#: Dtypes the kernels read and write.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Largest feature size (a row is held by one program).
MAX_FEATURES = 16384
#: Elements of a [rows, features] tile (rows per program = TILE / padded
#: features, between 1 and ``MAX_ROWS``).
TILE = 4096
MAX_ROWS = 64
#: Backward programs per streaming multiprocessor (each sums the weight
#: gradient of its rows into one partial row).
PROGRAMS_PER_SM = 4
#: Backward programs under Triton's interpreter.
INTERPRETED_PROGRAMS = 3


if available():

    @triton.jit
    def _rounded(x, dtype: tl.constexpr):
        """fp32 x in ``dtype``, rounded to nearest even (also under Triton's
        interpreter, whose conversion to bf16 truncates)."""
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
        return x.to(dtype)

    @triton.jit
    def _add_norm_forward_kernel(
        hidden_ptr,
        residual_ptr,
        weight_ptr,
        bias_ptr,
        residual_out_ptr,
        normed_ptr,
        mean_ptr,
        rstd_ptr,
        rows,
        features,
        eps,
        HAS_RESIDUAL: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        IS_RMS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        col = tl.arange(0, BLOCK)
        row_ok = row < rows
        col_ok = col < features
        ok = row_ok[:, None] & col_ok[None, :]
        offsets = row.to(tl.int64)[:, None] * features + col[None, :]
        x = tl.load(hidden_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            x += tl.load(residual_ptr + offsets, mask=ok, other=0.0).to(
                tl.float32
            )
        stored = _rounded(x, residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + offsets, stored, mask=ok)
        # the norm reads the stored value, in the weight's dtype
        x = _rounded(stored.to(tl.float32), weight_ptr.dtype.element_ty)
        x = x.to(tl.float32)
        if IS_RMS:
            rstd = tl.rsqrt(tl.sum(x * x, axis=1) / features + eps)
            xhat = x * rstd[:, None]
        else:
            mean = tl.sum(x, axis=1) / features
            centred = tl.where(ok, x - mean[:, None], 0.0)
            rstd = tl.rsqrt(tl.sum(centred * centred, axis=1) / features + eps)
            xhat = centred * rstd[:, None]
            tl.store(mean_ptr + row, mean, mask=row_ok)
        tl.store(rstd_ptr + row, rstd, mask=row_ok)
        gain = tl.load(weight_ptr + col, mask=col_ok, other=0.0).to(tl.float32)
        y = xhat * gain[None, :]
        if HAS_BIAS:
            shift = tl.load(bias_ptr + col, mask=col_ok, other=0.0)
            y += shift.to(tl.float32)[None, :]
        tl.store(
            normed_ptr + offsets,
            _rounded(y, normed_ptr.dtype.element_ty),
            mask=ok,
        )

    @triton.jit
    def _add_norm_backward_kernel(
        residual_out_ptr,
        weight_ptr,
        mean_ptr,
        rstd_ptr,
        dnormed_ptr,
        dresidual_out_ptr,
        dhidden_ptr,
        dresidual_ptr,
        dweight_ptr,
        dbias_ptr,
        rows,
        features,
        rows_per_program,
        HAS_DRESIDUAL_OUT: tl.constexpr,
        HAS_DRESIDUAL: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        NEEDS_DWEIGHT: tl.constexpr,
        IS_RMS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        program = tl.program_id(0)
        col = tl.arange(0, BLOCK)
        col_ok = col < features
        gain = tl.load(weight_ptr + col, mask=col_ok, other=0.0).to(tl.float32)
        start = program * rows_per_program
        end = tl.minimum(start + rows_per_program, rows)
        dweight = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        dbias = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for first in range(start, end, ROWS):
            row = first + tl.arange(0, ROWS)
            row_ok = row < end
            ok = row_ok[:, None] & col_ok[None, :]
            offsets = row.to(tl.int64)[:, None] * features + col[None, :]
            x = tl.load(residual_out_ptr + offsets, mask=ok, other=0.0)
            x = _rounded(x.to(tl.float32), weight_ptr.dtype.element_ty)
            x = x.to(tl.float32)
            rstd = tl.load(rstd_ptr + row, mask=row_ok, other=0.0)
            if IS_RMS:
                xhat = x * rstd[:, None]
            else:
                mean = tl.load(mean_ptr + row, mask=row_ok, other=0.0)
                xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
            dy = tl.load(dnormed_ptr + offsets, mask=ok, other=0.0).to(
                tl.float32
            )
            g = dy * gain[None, :]
            c1 = tl.sum(g * xhat, axis=1) / features
            if IS_RMS:
                dx = (g - xhat * c1[:, None]) * rstd[:, None]
            else:
                c2 = tl.sum(g, axis=1) / features
                dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
            # the norm's input gradient, in the dtype of its input
            dx = _rounded(dx, weight_ptr.dtype.element_ty).to(tl.float32)
            if HAS_DRESIDUAL_OUT:
                dx += tl.load(
                    dresidual_out_ptr + offsets, mask=ok, other=0.0
                ).to(tl.float32)
            tl.store(
                dhidden_ptr + offsets,
                _rounded(dx, dhidden_ptr.dtype.element_ty),
                mask=ok,
            )
            if HAS_DRESIDUAL:
                tl.store(
                    dresidual_ptr + offsets,
                    _rounded(dx, dresidual_ptr.dtype.element_ty),
                    mask=ok,
                )
            if NEEDS_DWEIGHT:
                dweight += dy * xhat
                if HAS_BIAS:
                    dbias += dy
        if NEEDS_DWEIGHT:
            partial = program * features + col
            tl.store(
                dweight_ptr + partial, tl.sum(dweight, axis=0), mask=col_ok
            )
            if HAS_BIAS:
                tl.store(
                    dbias_ptr + partial, tl.sum(dbias, axis=0), mask=col_ok
                )


def _tile(features: int, backward: bool = False) -> Tuple[int, int, int]:
    """(rows per program, padded features, warps) of a feature size; the
    backward kernel holds more values per element, so twice the warps."""
    block = next_power_of_2(features)
    rows = max(1, min(MAX_ROWS, TILE // block))
    per_warp = 512 if backward else 1024
    warps = max(4, min(16, rows * block // per_warp))
    return rows, block, warps


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _backward_programs(rows: int, tile_rows: int, device) -> int:
    """Programs of the backward kernel (each takes a range of rows)."""
    tiles = ceil_div(rows, tile_rows)
    if device.type == "cuda":
        return min(tiles, PROGRAMS_PER_SM * _multiprocessors(device))
    return min(tiles, INTERPRETED_PROGRAMS)


class AddNormFunction(torch.autograd.Function):
    """``(normed, residual_out)`` of :func:`add_norm`; keeps residual_out,
    the per-row statistics and the norm's weight and bias for backward."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, residual, eps, residual_dtype,
        is_rms_norm, out_dtype,
    ):  # fmt: skip
        """One kernel: the stored residual stream and its norm."""
        features = hidden.shape[-1]
        hidden = hidden.contiguous()
        if residual is not None:
            residual = residual.contiguous()
        rows = hidden.numel() // max(features, 1)
        residual_out = torch.empty_like(hidden, dtype=residual_dtype)
        normed = torch.empty_like(hidden, dtype=out_dtype)
        stats = hidden.new_empty(
            (1 if is_rms_norm else 2, rows), dtype=torch.float32
        )
        tile_rows, block, warps = _tile(features)
        if rows > 0:
            _add_norm_forward_kernel[(ceil_div(rows, tile_rows),)](
                hidden, residual, weight, bias, residual_out, normed,
                stats[-1], stats[0], rows, features, float(eps),
                HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
                IS_RMS=is_rms_norm, ROWS=tile_rows, BLOCK=block,
                num_warps=warps,
            )  # fmt: skip
        ctx.is_rms_norm = is_rms_norm
        ctx.dtypes = (
            hidden.dtype,
            None if residual is None else residual.dtype,
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(residual_out, weight, bias, stats)
        return normed, residual_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dnormed, dresidual_out):
        """Gradients of hidden, weight, bias and residual (one kernel and
        the sum of its per-program weight and bias partials)."""
        residual_out, weight, bias, stats = ctx.saved_tensors
        hidden_dtype, residual_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        features = residual_out.shape[-1]
        rows = residual_out.numel() // max(features, 1)
        if dnormed is None:
            dnormed = torch.zeros_like(residual_out)
        dnormed = dnormed.contiguous()
        if dresidual_out is not None:
            dresidual_out = dresidual_out.contiguous()
        dhidden = torch.empty_like(residual_out, dtype=hidden_dtype)
        dresidual = None
        if residual_dtype is not None and needs[3]:
            dresidual = torch.empty_like(residual_out, dtype=residual_dtype)
        needs_dweight = needs[1] or needs[2]
        tile_rows, block, warps = _tile(features, backward=True)
        programs = _backward_programs(rows, tile_rows, residual_out.device)
        partial = None
        if needs_dweight:  # every program writes its row (none: zeros)
            allocate = (
                residual_out.new_empty if rows else residual_out.new_zeros
            )
            partial = allocate(
                (2, max(programs, 1), features), dtype=torch.float32
            )
        if rows > 0:
            rows_per_program = tile_rows * ceil_div(
                ceil_div(rows, tile_rows), programs
            )
            _add_norm_backward_kernel[(programs,)](
                residual_out, weight, stats[-1], stats[0], dnormed,
                dresidual_out, dhidden, dresidual,
                None if partial is None else partial[0],
                None if partial is None else partial[1],
                rows, features, rows_per_program,
                HAS_DRESIDUAL_OUT=dresidual_out is not None,
                HAS_DRESIDUAL=dresidual is not None,
                HAS_BIAS=bias is not None, NEEDS_DWEIGHT=needs_dweight,
                IS_RMS=ctx.is_rms_norm, ROWS=tile_rows, BLOCK=block,
                num_warps=warps,
            )  # fmt: skip
        dweight = dbias = None
        if needs_dweight:
            sums = partial.sum(1)  # both in one reduction
            if needs[1]:
                dweight = sums[0].to(weight.dtype)
            if needs[2] and bias is not None:
                dbias = sums[1].to(bias.dtype)
        return (
            dhidden if needs[0] else None, dweight, dbias, dresidual,
            None, None, None, None,
        )  # fmt: skip


def residual_dtype(
    hidden: torch.Tensor,
    residual: Optional[torch.Tensor],
    residual_in_fp32: bool,
) -> torch.dtype:
    """The dtype of the residual stream after ``hidden + residual``.

    Arguments
    ---------
    hidden : torch.Tensor
        The branch output added to the stream.
    residual : torch.Tensor, optional
        The stream so far (None: the stream starts with ``hidden``).
    residual_in_fp32 : bool
        Keep the stream in fp32.

    Returns
    -------
    torch.dtype
        fp32 with ``residual_in_fp32``, else the dtype PyTorch's addition
        gives.

    Example
    -------
    >>> bf16 = torch.zeros(2, dtype=torch.bfloat16)
    >>> residual_dtype(bf16, None, residual_in_fp32=True)
    torch.float32
    >>> residual_dtype(bf16, None, residual_in_fp32=False)
    torch.bfloat16
    >>> residual_dtype(bf16, torch.zeros(2), residual_in_fp32=False)
    torch.float32
    """
    if residual_in_fp32:
        return torch.float32
    if residual is None:
        return hidden.dtype
    return torch.promote_types(hidden.dtype, residual.dtype)


def _check_inputs(hidden, weight, bias, residual):
    """Raises ValueError for inputs the kernels cannot take."""
    features = hidden.shape[-1] if hidden.dim() else 0
    if hidden.dim() == 0 or weight.shape != (features,):
        raise ValueError(
            f"add_norm: hidden [..., features] {tuple(hidden.shape)} and "
            f"weight [features] {tuple(weight.shape)} do not match"
        )
    if bias is not None and bias.shape != weight.shape:
        raise ValueError(
            f"add_norm: bias {tuple(bias.shape)} must have the shape of "
            f"weight {tuple(weight.shape)}"
        )
    if residual is not None and residual.shape != hidden.shape:
        raise ValueError(
            f"add_norm: residual {tuple(residual.shape)} must have the "
            f"shape of hidden {tuple(hidden.shape)}"
        )
    tensors = [t for t in (hidden, weight, bias, residual) if t is not None]
    if any(t.device != hidden.device for t in tensors):
        raise ValueError("add_norm: all tensors must be on one device")
    if any(t.dtype not in DTYPES for t in tensors):
        raise ValueError(
            f"add_norm takes {DTYPES}, got "
            f"{sorted({str(t.dtype) for t in tensors})}"
        )
    if features > MAX_FEATURES:
        raise ValueError(
            f"add_norm takes at most {MAX_FEATURES} features, got {features}"
        )
    if not (hidden.is_cuda or interpreted()):
        raise ValueError(
            "add_norm runs on CUDA tensors (or on CPU under Triton's "
            f"interpreter, TRITON_INTERPRET=1), got a tensor on "
            f"{hidden.device}"
        )


def add_norm(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    is_rms_norm: bool = True,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``residual_out = hidden + residual`` and its RMSNorm or LayerNorm
    over the last dimension, in one kernel (see the module docstring).

    Arguments
    ---------
    hidden : torch.Tensor
        The branch output, [..., features] (CUDA; CPU under Triton's
        interpreter).
    weight : torch.Tensor
        The norm's gain, [features].
    bias : torch.Tensor, optional
        The LayerNorm's shift, [features].
    residual : torch.Tensor, optional
        The residual stream so far (None: it starts with ``hidden``).
    eps : float
        Added to the mean square (RMSNorm) or the variance (LayerNorm).
    residual_in_fp32 : bool
        Store the residual stream in fp32 (else in the dtype of
        ``residual + hidden``, see :func:`residual_dtype`).
    is_rms_norm : bool
        RMSNorm (True) or LayerNorm (False).
    out_dtype : torch.dtype, optional
        The dtype of the normed output (default: the weight's, as the plain
        norm gives).

    Returns
    -------
    normed : torch.Tensor
        The normed residual stream, [..., features], ``out_dtype``.
    residual_out : torch.Tensor
        The new residual stream, [..., features].

    Example
    -------
    >>> if torch.cuda.is_available() and available():
    ...     hidden = torch.randn(2, 50, 24, device="cuda")
    ...     residual = torch.randn(2, 50, 24, device="cuda")
    ...     weight = torch.rand(24, device="cuda")
    ...     fused = add_norm(hidden, weight, residual=residual)
    ...     plain = add_norm_reference(hidden, weight, residual=residual)
    ...     assert torch.equal(fused[1], plain[1])
    ...     assert torch.allclose(fused[0], plain[0], atol=1e-5)
    """
    if not available():
        raise ImportError(
            "add_norm needs Triton, which comes with the CUDA builds of PyTorch"
        )
    _check_inputs(hidden, weight, bias, residual)
    # the kernels read weight and bias with unit stride
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    return AddNormFunction.apply(
        hidden, weight, bias, residual, float(eps),
        residual_dtype(hidden, residual, residual_in_fp32), bool(is_rms_norm),
        out_dtype or weight.dtype,
    )  # fmt: skip


def add_norm_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    residual_in_fp32: bool = True,
    is_rms_norm: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The plain path of :func:`add_norm`, operation by operation, as a
    block without the kernel runs it (``residual + hidden``, ``.float()``,
    the norm of ``residual.to(weight.dtype)``); any device.

    Arguments
    ---------
    hidden, weight, bias, residual, eps, residual_in_fp32, is_rms_norm
        As in :func:`add_norm`.

    Returns
    -------
    normed : torch.Tensor
        The normed residual stream, in the weight's dtype.
    residual_out : torch.Tensor
        The new residual stream.

    Example
    -------
    >>> hidden = torch.randn(3, 8, dtype=torch.bfloat16)
    >>> residual = torch.randn(3, 8)
    >>> normed, residual_out = add_norm_reference(
    ...     hidden, torch.ones(8), residual=residual
    ... )
    >>> torch.equal(residual_out, residual + hidden.float())
    True
    >>> torch.allclose(normed.pow(2).mean(-1), torch.ones(3), atol=1e-4)
    True
    """
    residual_out = hidden if residual is None else residual + hidden
    if residual_in_fp32:
        residual_out = residual_out.float()
    x = residual_out.to(weight.dtype)
    if is_rms_norm:
        xf = x.float()
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        normed = (xf * scale * weight.float()).to(x.dtype)
    else:
        normed = F.layer_norm(x, weight.shape, weight, bias, eps)
    return normed, residual_out
