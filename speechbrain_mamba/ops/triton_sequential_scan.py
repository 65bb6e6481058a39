"""Inference-only bidirectional selective scan, state kept in registers.

Same inputs, outputs and chunking as
:func:`speechbrain_mamba.ops.triton_bidirectional_scan.bidirectional_scan`,
but each program steps through its chunk one frame at a time with the
[channels, d_state] state in registers (work-efficient, like mamba_ssm's
kernel), while chunks and channel blocks run in parallel: a first pass
computes each chunk's end state from a zero start and its total decay
``exp(A sum(delta))``, the chunk-boundary states are carried across chunks,
and a second pass recomputes each chunk from its true initial state and
writes ``y = C h + D u`` per direction. The backward direction steps from
the end of each chunk towards its start, starting at each item's last
valid frame. No autograd: training uses the parallel-scan kernels or
mamba_ssm.

Author
------
speechbrain-mamba developers
"""

import torch

from speechbrain_mamba.ops.triton_bidirectional_scan import (
    available,
    check_scan_inputs,
    kernel_layout,
    scan_in_two_passes,
)

if available():
    import triton
    import triton.language as tl

#: Frames per chunk (short sequences: ``SHORT_CHUNK`` for more parallelism).
CHUNK = 128
SHORT_CHUNK = 64
#: Sequences shorter than this use ``SHORT_CHUNK``.
SHORT_SEQUENCE = 16384
#: Channels per program (at most; must divide d_inner).
CHANNEL_BLOCK = 32
#: Warps per program.
WARPS = 1


if available():

    @triton.jit
    def _sequential_kernel(
        u_ptr, draw_ptr, A_ptr, D_ptr, bias_ptr,
        Bf_ptr, Cf_ptr, Bb_ptr, Cb_ptr, len_ptr,
        hin_ptr, sum_a_ptr, sum_h_ptr, y_ptr,
        L, DI, NC, s_ub, s_ul, s_bb, s_bl, s_bn,
        N: tl.constexpr, NP: tl.constexpr, CH: tl.constexpr,
        BD: tl.constexpr, WRITE_OUT: tl.constexpr,
    ):  # fmt: skip
        k = tl.program_id(0)
        c = tl.program_id(1) * BD + tl.arange(0, BD)
        b = tl.program_id(2)
        reverse = tl.program_id(1) * BD >= DI
        length = tl.load(len_ptr + b)
        n = tl.arange(0, NP)
        n_ok = n < N
        A = tl.load(A_ptr + c[:, None] * N + n[None, :], mask=n_ok[None, :])
        bias = tl.load(bias_ptr + c)
        D = tl.load(D_ptr + c)
        state_offs = ((b * NC + k) * 2 * DI + c[:, None]) * N + n[None, :]
        if WRITE_OUT:
            h = tl.load(hin_ptr + state_offs, mask=n_ok[None, :], other=0.0)
        else:
            h = tl.zeros([BD, NP], tl.float32)
            total = tl.zeros([BD], tl.float32)
        if reverse:
            B_ptr = Bb_ptr
            C_ptr = Cb_ptr
        else:
            B_ptr = Bf_ptr
            C_ptr = Cf_ptr
        for i in range(CH):
            t = tl.where(reverse, k * CH + CH - 1 - i, k * CH + i)
            valid = t < length
            offs = b * s_ub + t * s_ul + c
            u = tl.load(u_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            x = tl.load(draw_ptr + offs, mask=valid, other=0.0).to(tl.float32)
            x = x + bias
            delta = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))
            delta = tl.where(valid, delta, 0.0)
            bc = b * s_bb + t * s_bl + n * s_bn
            Bt = tl.load(B_ptr + bc, mask=n_ok & valid, other=0.0)
            decay = tl.exp(delta[:, None] * A)
            h = decay * h + (delta * u)[:, None] * Bt.to(tl.float32)[None, :]
            if WRITE_OUT:
                Ct = tl.load(C_ptr + bc, mask=n_ok & valid, other=0.0)
                y = tl.sum(h * Ct.to(tl.float32)[None, :], axis=1) + D * u
                tl.store(
                    y_ptr + offs,
                    tl.where(valid, y, 0.0).to(y_ptr.dtype.element_ty),
                    mask=t < L,
                )
            else:
                total += delta
        if not WRITE_OUT:
            tl.store(sum_h_ptr + state_offs, h, mask=n_ok[None, :])
            tl.store(
                sum_a_ptr + state_offs,
                tl.exp(total[:, None] * A),
                mask=n_ok[None, :],
            )


def _channel_block(d_inner: int) -> int:
    block = CHANNEL_BLOCK
    while d_inner % block:
        block //= 2
    return block


@torch.no_grad()
def bidirectional_scan_inference(
    u: torch.Tensor,
    delta_raw: torch.Tensor,
    z: torch.Tensor,
    A: torch.Tensor,
    B_fwd: torch.Tensor,
    C_fwd: torch.Tensor,
    B_bwd: torch.Tensor,
    C_bwd: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    lengths: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Both BiMamba scans for inference (no autograd), gated and combined.

    Arguments
    ---------
    u, delta_raw, z, A, B_fwd, C_fwd, B_bwd, C_bwd, D, delta_bias, lengths
        As in :func:`~speechbrain_mamba.ops.triton_bidirectional_scan.
        bidirectional_scan`.
    scale : float
        Factor of the combined output (0.5 averages the directions).

    Returns
    -------
    torch.Tensor
        [batch, time, d_inner], zero on padded frames.

    Example
    -------
    >>> if torch.cuda.is_available() and available():
    ...     u = torch.randn(1, 10, 8, device="cuda")
    ...     bc = torch.randn(1, 10, 4, device="cuda")
    ...     y = bidirectional_scan_inference(
    ...         u, u, u[..., :4], -torch.ones(8, 4, device="cuda"),
    ...         bc, bc, bc, bc, torch.ones(8, device="cuda"),
    ...         torch.zeros(8, device="cuda"),
    ...         torch.tensor([10], device="cuda"),
    ...     )
    ...     assert y.shape == (1, 10, 4)
    """
    check_scan_inputs(u, delta_raw, z, A, B_fwd, C_fwd, B_bwd, C_bwd, lengths)
    u, delta_raw, z, A, D, delta_bias, lengths = kernel_layout(
        u, delta_raw, z, A, D, delta_bias, lengths
    )
    batch, time, channels = u.shape
    d_inner, d_state = channels // 2, A.shape[1]
    block = _channel_block(d_inner)
    chunk = SHORT_CHUNK if time < SHORT_SEQUENCE else CHUNK
    chunks = triton.cdiv(time, chunk)
    sum_a = torch.empty(
        batch, chunks, channels, d_state, device=u.device, dtype=torch.float32
    )
    sum_h = torch.empty_like(sum_a)
    y = torch.empty(batch, time, channels, device=u.device, dtype=u.dtype)
    grid = (chunks, channels // block, batch)
    common = dict(N=d_state, NP=triton.next_power_of_2(d_state), CH=chunk)
    args = [u, delta_raw, A, D, delta_bias, B_fwd, C_fwd, B_bwd, C_bwd]
    sizes = [
        time, d_inner, chunks, u.stride(0), u.stride(1),
        B_fwd.stride(0), B_fwd.stride(1), B_fwd.stride(2),
    ]  # fmt: skip

    def launch(states, final):
        _sequential_kernel[grid](
            *args, lengths, states, sum_a, sum_h, y, *sizes,
            BD=block, WRITE_OUT=final, num_warps=WARPS, **common,
        )  # fmt: skip

    scan_in_two_passes(launch, sum_a, sum_h, first_half_reverse=False)
    both = y[..., :d_inner] + y[..., d_inner:]
    return (both * torch.nn.functional.silu(z)).mul_(scale)
