"""The selective scan of Mamba (S6), in pure PyTorch.

For every channel ``d`` and state index ``n`` the scan runs the recurrence

    h[t] = exp(delta[t] * A[d, n]) * h[t - 1] + delta[t] * B[n, t] * u[t]
    y[t] = sum_n C[n, t] * h[t, n] + D[d] * u[t]

and optionally gates the output with ``silu(z)``. ``delta`` is first shifted
by ``delta_bias`` and passed through softplus when asked. The argument
convention is that of ``mamba_ssm.ops.selective_scan_interface
.selective_scan_fn`` so that both can be swapped:

- ``u``, ``delta``, ``z``: ``[batch, d_inner, time]``
- ``A``: ``[d_inner, d_state]`` (real, negative for a stable scan)
- ``B``, ``C``: ``[batch, d_state, time]`` or grouped
  ``[batch, groups, d_state, time]`` (channel ``d`` uses group
  ``d // (d_inner // groups)``)
- ``D``, ``delta_bias``: ``[d_inner]``

Two implementations live here: :func:`selective_scan_reference`, a plain
step-by-step loop written for clarity (the ground truth of the tests), and
:func:`selective_scan_torch`, a blocked two-level scan that processes time in
blocks (never holding the ``[batch, d_inner, time, d_state]`` state for the
whole sequence) and, inside a block, runs short segments in parallel and
stitches them with their decay products. All state arithmetic is in fp32.

Author
------
speechbrain-mamba developers
"""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

ScanOutput = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]

#: Elements of one [batch, d_inner, block, d_state] block (fp32).
DEFAULT_BLOCK_ELEMENTS = 1 << 21


def _prepare_delta(
    delta: torch.Tensor,
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
) -> torch.Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _grouped(BC: torch.Tensor) -> torch.Tensor:
    """Returns B or C as [batch, groups, d_state, time]."""
    return BC.unsqueeze(1) if BC.dim() == 3 else BC


def check_scan_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
) -> None:
    """Raises ValueError when the scan operands do not fit together.

    Arguments
    ---------
    u, delta, A, B, C : torch.Tensor
        Operands of the selective scan (see the module docstring).

    Example
    -------
    >>> u = torch.zeros(1, 4, 5)
    >>> check_scan_shapes(u, u, torch.zeros(4, 2), torch.zeros(1, 2, 5),
    ...                   torch.zeros(1, 2, 5))
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            "u and delta must both be [batch, d_inner, time]; got "
            f"{tuple(u.shape)} and {tuple(delta.shape)}"
        )
    batch, d_inner, time = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(
            f"A must be [d_inner={d_inner}, d_state]; got {tuple(A.shape)}"
        )
    for name, tensor in (("B", B), ("C", C)):
        grouped = _grouped(tensor)
        if (
            grouped.dim() != 4
            or grouped.shape[0] != batch
            or grouped.shape[2] != A.shape[1]
            or grouped.shape[3] != time
            or d_inner % grouped.shape[1] != 0
        ):
            raise ValueError(
                f"{name} must be [batch={batch}, d_state={A.shape[1]}, "
                f"time={time}] or [batch, groups, d_state, time] with groups "
                f"dividing d_inner={d_inner}; got {tuple(tensor.shape)}"
            )


def _finish(
    y: torch.Tensor,
    u: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
) -> ScanOutput:
    """Selective scan as a plain loop over time (slow, obviously right).

    Arguments
    ---------
    u : torch.Tensor
        Input, [batch, d_inner, time].
    delta : torch.Tensor
        Step sizes before bias/softplus, [batch, d_inner, time].
    A : torch.Tensor
        State matrix (diagonal), [d_inner, d_state].
    B : torch.Tensor
        Input matrix, [batch, d_state, time] or [batch, groups, d_state, time].
    C : torch.Tensor
        Output matrix, same shape as B.
    D : torch.Tensor, optional
        Skip connection, [d_inner].
    z : torch.Tensor, optional
        Gate, [batch, d_inner, time]; the output is multiplied by silu(z).
    delta_bias : torch.Tensor, optional
        Added to delta before the softplus, [d_inner].
    delta_softplus : bool
        Apply softplus to delta.
    initial_state : torch.Tensor, optional
        State before the first frame, [batch, d_inner, d_state].
    return_last_state : bool
        Also return the state after the last frame (fp32).

    Returns
    -------
    y : torch.Tensor
        Output, [batch, d_inner, time], dtype of u.
    last_state : torch.Tensor
        Only when return_last_state, [batch, d_inner, d_state].

    Example
    -------
    >>> u = torch.ones(1, 1, 3)
    >>> y = selective_scan_reference(u, torch.ones(1, 1, 3), -torch.ones(1, 1),
    ...     torch.ones(1, 1, 3), torch.ones(1, 1, 3))
    >>> [round(v, 4) for v in y[0, 0].tolist()]
    [1.0, 1.3679, 1.5032]
    """
    check_scan_shapes(u, delta, A, B, C)
    batch, d_inner, time = u.shape
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    uf = u.float()
    Bg, Cg = _grouped(B).float(), _grouped(C).float()
    groups = Bg.shape[1]
    # per-channel B and C: [batch, d_inner, d_state, time]
    Bc = Bg.repeat_interleave(d_inner // groups, dim=1)
    Cc = Cg.repeat_interleave(d_inner // groups, dim=1)
    A = A.float()
    if initial_state is None:
        h = u.new_zeros(batch, d_inner, A.shape[1], dtype=torch.float32)
    else:
        h = initial_state.float()
    outputs = []
    for t in range(time):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * uf[:, :, t])[..., None] * Bc[..., t]
        outputs.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1) if time else uf.clone()
    y = _finish(y, uf, D, z, u.dtype)
    return (y, h) if return_last_state else y


def _segment_size(block: int) -> int:
    return max(1, int(math.sqrt(block)))


def _scan_block(
    delta: torch.Tensor,
    A: torch.Tensor,
    delta_u: torch.Tensor,
    Bb: torch.Tensor,
    Cb: torch.Tensor,
    state: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scans one block of frames.

    Arguments
    ---------
    delta : torch.Tensor
        Step sizes, [b, g, c, T] (c = channels per group).
    A : torch.Tensor
        State matrix, [g, c, 1, n] (delta * A is the decay exponent).
    delta_u : torch.Tensor
        delta * u, [b, g, c, T].
    Bb, Cb : torch.Tensor
        [b, g, T, n].
    state : torch.Tensor
        State entering the block, [b, g, c, n].

    Returns
    -------
    y : torch.Tensor
        [b, g, c, T] (without the D skip and z gate).
    state : torch.Tensor
        State after the block, [b, g, c, n].
    """
    dA_log = delta[..., None] * A  # [b, g, c, T, n]
    b, g, c, T, n = dA_log.shape
    seg = _segment_size(T)
    n_seg = -(-T // seg)
    pad = n_seg * seg - T
    if pad:
        # padded frames: zero exponent (decay 1) and zero input keep the
        # state unchanged
        dA_log = F.pad(dA_log, (0, 0, 0, pad))
        delta_u = F.pad(delta_u, (0, pad))
        Bb = F.pad(Bb, (0, 0, 0, pad))
        Cb = F.pad(Cb, (0, 0, 0, pad))
    shape = (b, g, c, n_seg, seg, n)
    dA_log = dA_log.reshape(shape)
    decay = torch.exp(dA_log)
    drive = delta_u.reshape(b, g, c, n_seg, seg, 1) * Bb.reshape(
        b, g, 1, n_seg, seg, n
    )
    # 1) every segment scanned from a zero state, all segments at once
    h = torch.zeros_like(drive[..., 0, :])
    local = []
    for s in range(seg):
        h = decay[..., s, :] * h + drive[..., s, :]
        local.append(h)
    local_states = torch.stack(local, dim=-2)  # [b, g, c, M, S, n]
    # 2) decay from each segment's start to each of its frames
    cumulative = torch.exp(dA_log.cumsum(dim=-2))
    # 3) states entering each segment, carried sequentially
    entering = []
    for m in range(n_seg):
        entering.append(state)
        state = cumulative[..., m, -1, :] * state + local_states[..., m, -1, :]
    carried = torch.stack(entering, dim=-2).unsqueeze(-2)  # [b,g,c,M,1,n]
    states = local_states + cumulative * carried
    y = (states * Cb.reshape(b, g, 1, n_seg, seg, n)).sum(-1)
    y = y.reshape(b, g, c, n_seg * seg)[..., :T]
    return y, state


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
    block_size: Optional[int] = None,
    recompute_blocks: bool = True,
) -> ScanOutput:
    """Blocked selective scan in pure PyTorch (differentiable).

    Time is processed in blocks of ``block_size`` frames (by default sized so
    that a block's state tensor holds about two million fp32 values), carrying
    the state from block to block. Inside a block, ~sqrt(block) segments are
    scanned in parallel and then stitched with their cumulative decays, so the
    number of sequential steps per block is ~2 sqrt(block).

    Arguments
    ---------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
    return_last_state
        As in :func:`selective_scan_reference`.
    block_size : int, optional
        Frames per block.
    recompute_blocks : bool
        When gradients are needed and there are several blocks, keep only
        each block's inputs for the backward pass and compute the block
        again there (activation checkpointing per block): the memory of one
        block's intermediate states instead of all of them, the same
        values and gradients, for one more forward pass of the scan.

    Returns
    -------
    y : torch.Tensor
        Output, [batch, d_inner, time], dtype of u.
    last_state : torch.Tensor
        Only when return_last_state, [batch, d_inner, d_state] (fp32).

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> u, dt, z = torch.randn(3, 2, 8, 50).unbind(0)
    >>> A = -torch.rand(8, 4) - 0.5
    >>> B, C = torch.randn(2, 2, 4, 50).unbind(0)
    >>> y = selective_scan_torch(u, dt, A, B, C, z=z, delta_softplus=True)
    >>> ref = selective_scan_reference(u, dt, A, B, C, z=z,
    ...                                delta_softplus=True)
    >>> torch.allclose(y, ref, atol=1e-5)
    True
    """
    check_scan_shapes(u, delta, A, B, C)
    batch, d_inner, time = u.shape
    d_state = A.shape[1]
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    uf = u.float()
    Bg, Cg = _grouped(B).float(), _grouped(C).float()
    groups = Bg.shape[1]
    per_group = d_inner // groups
    A_g = A.float().reshape(groups, per_group, 1, d_state)
    delta_g = delta.reshape(batch, groups, per_group, time)
    delta_u = (delta * uf).reshape(batch, groups, per_group, time)
    Bt, Ct = Bg.transpose(-1, -2), Cg.transpose(-1, -2)  # [b, g, time, n]
    if initial_state is None:
        state = uf.new_zeros(batch, groups, per_group, d_state)
    else:
        state = initial_state.float().reshape(batch, groups, per_group, d_state)
    if block_size is None:
        per_frame = max(1, batch * d_inner * d_state)
        block_size = max(16, DEFAULT_BLOCK_ELEMENTS // per_frame)
    # with gradients and several blocks, each block keeps only its inputs
    # and is computed again in the backward pass: memory of one block's
    # intermediate states instead of all of them (time: one more forward)
    recompute = (
        recompute_blocks
        and time > block_size
        and torch.is_grad_enabled()
        and any(
            t is not None and t.requires_grad
            for t in (u, delta, A, B, C, initial_state)
        )
    )
    outputs = []
    for start in range(0, time, block_size):
        stop = min(time, start + block_size)
        block = (
            delta_g[..., start:stop],
            A_g,
            delta_u[..., start:stop],
            Bt[:, :, start:stop],
            Ct[:, :, start:stop],
            state,
        )
        if recompute:
            y_block, state = torch.utils.checkpoint.checkpoint(
                _scan_block, *block, use_reentrant=False
            )
        else:
            y_block, state = _scan_block(*block)
        outputs.append(y_block)
    if outputs:
        y = torch.cat(outputs, dim=-1).reshape(batch, d_inner, time)
    else:
        y = uf.clone()
    y = _finish(y, uf, D, z, u.dtype)
    if return_last_state:
        return y, state.reshape(batch, d_inner, d_state)
    return y
