"""Optional numba kernel for the selective scan on CPU (inference).

A long sequential scan is what PyTorch expresses worst on a CPU: every time
step is a handful of tiny tensor operations. This kernel fuses the whole
recurrence into one compiled loop. Channels are processed in tiles of 16
(one AVX-512 vector, two AVX2 vectors) with the ``d_state x 16`` state of a
tile kept in registers; ``d_state`` is a compile-time constant so that the
loops unroll, and ``exp`` is an inlined, vectorisable Cody-Waite +
polynomial evaluation (relative error < 1e-7 on the range a scan uses).
Tiles run in parallel over batch x channel tiles.

It is used only when no gradient is required (inference); training uses
:func:`speechbrain_mamba.ops.selective_scan.selective_scan_torch`.

numba is optional (``pip install speechbrain-mamba[cpu-jit]``). Set the
environment variable ``SBMAMBA_NUMBA=0`` to disable the kernel.

Author
------
speechbrain-mamba developers
"""

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F

from speechbrain_mamba.ops import numba_math
from speechbrain_mamba.ops.selective_scan import (
    ScanOutput,
    _grouped,
    check_scan_shapes,
)

#: Channels per tile (the vector width of the kernel).
TILE = 16


@functools.lru_cache(maxsize=None)
def _kernel(d_state: int):
    """The scan compiled for one d_state (a compile-time constant)."""
    numba_math.load()
    from speechbrain_mamba.ops import numba_functions

    return numba_functions.make_scan_kernel(d_state, TILE)


def available() -> bool:
    """True when numba is importable and the kernel is not disabled
    (environment variable ``SBMAMBA_NUMBA=0``).

    Returns
    -------
    bool

    Example
    -------
    >>> isinstance(available(), bool)
    True
    """
    if os.environ.get("SBMAMBA_NUMBA", "1") == "0":
        return False
    return numba_math.load() is not None


def _pad_channels(x: torch.Tensor, groups: int, padded: int) -> torch.Tensor:
    """Pads the last (channel) dim of [..., d] to groups * padded channels,
    group by group."""
    per_group = x.shape[-1] // groups
    if per_group == padded:
        return x.contiguous()
    x = x.reshape(*x.shape[:-1], groups, per_group)
    x = F.pad(x, (0, padded - per_group))
    return x.reshape(*x.shape[:-2], groups * padded).contiguous()


def _unpad_channels(x: torch.Tensor, groups: int, per_group: int):
    padded = x.shape[-1] // groups
    if padded == per_group:
        return x
    x = x.reshape(*x.shape[:-1], groups, padded)[..., :per_group]
    return x.reshape(*x.shape[:-2], groups * per_group)


def scan_channels_last(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    frames: Optional[torch.Tensor] = None,
    reverse: bool = False,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> tuple:
    """Runs the kernel on channels-last operands (no autograd).

    Arguments
    ---------
    u : torch.Tensor
        Input, [batch, time, d_inner].
    delta : torch.Tensor
        Step sizes, [batch, time, d_inner].
    A : torch.Tensor
        [d_inner, d_state].
    B, C : torch.Tensor
        [batch, d_state, time] or [batch, groups, d_state, time].
    D : torch.Tensor, optional
        Skip, [d_inner].
    z : torch.Tensor, optional
        Gate, [batch, time, d_inner].
    initial_state : torch.Tensor, optional
        [batch, d_inner, d_state].
    frames : torch.Tensor, optional
        Valid frames per item; frames after them are not scanned (their
        outputs are 0 and the last state is the state at the true end).
    reverse : bool
        Scan each item backward in time, from its last valid frame.
    delta_bias : torch.Tensor, optional
        Added to delta inside the kernel, [d_inner].
    delta_softplus : bool
        Apply softplus to delta (after the bias) inside the kernel.

    Returns
    -------
    y : torch.Tensor
        [batch, time, d_inner] fp32.
    last_state : torch.Tensor
        [batch, d_inner, d_state] fp32.

    Example
    -------
    Without numba (or with ``SBMAMBA_NUMBA=0``) it says what to install;
    with it, the first output is the closed form of one step from a zero
    state, and two halves scanned with the state carried over give the
    whole scan.

    >>> u, dt = torch.randn(1, 6, 16), torch.rand(1, 6, 16)
    >>> A, B, C = -torch.rand(16, 2), torch.randn(1, 2, 6), torch.randn(1, 2, 6)
    >>> try:
    ...     y, h = scan_channels_last(u, dt, A, B, C)
    ... except ImportError as error:
    ...     print("pip install numba" in str(error))
    ... else:
    ...     first = (B[0, :, 0] * C[0, :, 0]).sum() * dt[0, 0] * u[0, 0]
    ...     y1, h1 = scan_channels_last(
    ...         u[:, :3], dt[:, :3], A, B[..., :3], C[..., :3]
    ...     )
    ...     y2, h2 = scan_channels_last(
    ...         u[:, 3:], dt[:, 3:], A, B[..., 3:], C[..., 3:], initial_state=h1
    ...     )
    ...     print(
    ...         torch.allclose(y[0, 0], first, atol=1e-5)
    ...         and torch.allclose(torch.cat([y1, y2], 1), y, atol=1e-5)
    ...         and torch.allclose(h2, h, atol=1e-5)
    ...     )
    True
    """
    if not available():
        raise ImportError(
            "The numba CPU scan needs numba: pip install numba "
            "(or speechbrain-mamba[cpu-jit]); it is off when SBMAMBA_NUMBA=0."
        )
    if u.device.type != "cpu":
        raise ValueError(f"The numba scan runs on CPU tensors, got {u.device}")
    batch, time, d_inner = u.shape
    d_state = A.shape[1]
    Bg, Cg = _grouped(B), _grouped(C)
    groups = Bg.shape[1]
    per_group = d_inner // groups
    padded = -(-per_group // TILE) * TILE

    def prepared(x):
        return _pad_channels(x.detach().float(), groups, padded)

    with torch.no_grad():
        if initial_state is None:
            state = u.new_zeros(
                batch, d_state, groups * padded, dtype=torch.float32
            )
        else:
            state = prepared(initial_state.transpose(1, 2)).clone()
        skip = D if D is not None else u.new_zeros(d_inner)
        if delta_bias is None:
            delta_bias = u.new_zeros(d_inner)
        u_p = prepared(u)
        gate = prepared(z) if z is not None else u_p
        y = (
            torch.zeros_like(u_p)
            if frames is not None
            else (torch.empty_like(u_p))
        )
        if frames is None:
            frames = torch.full((batch,), time, dtype=torch.int64)
        numba_math.set_threads()
        _kernel(d_state)(
            u_p.numpy(),
            prepared(delta).numpy(),
            gate.numpy(),
            prepared(skip).numpy(),
            prepared(A.t()).numpy(),
            Bg.detach().float().transpose(-1, -2).contiguous().numpy(),
            Cg.detach().float().transpose(-1, -2).contiguous().numpy(),
            state.numpy(),
            y.numpy(),
            z is not None,
            frames.to(device="cpu", dtype=torch.int64).numpy(),
            reverse,
            prepared(delta_bias).numpy(),
            delta_softplus,
        )
    y = _unpad_channels(y, groups, per_group)
    state = _unpad_channels(state, groups, per_group).transpose(1, 2)
    return y, state.contiguous()


def selective_scan_numba(
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
    """Selective scan with the fused numba CPU kernel (no autograd), in the
    channels-first convention of ``mamba_ssm``'s ``selective_scan_fn``.

    Arguments
    ---------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
    return_last_state
        As in
        :func:`speechbrain_mamba.ops.selective_scan.selective_scan_reference`.

    Returns
    -------
    y : torch.Tensor
        Output, [batch, d_inner, time], dtype of u.
    last_state : torch.Tensor
        Only when return_last_state, [batch, d_inner, d_state] (fp32).

    Example
    -------
    >>> from speechbrain_mamba.ops import selective_scan_reference
    >>> u, dt = torch.randn(2, 1, 20, 30).unbind(0)
    >>> A = -torch.rand(20, 3)
    >>> B, C = torch.randn(2, 1, 3, 30).unbind(0)
    >>> if available():
    ...     y = selective_scan_numba(u, dt, A, B, C, delta_softplus=True)
    ... else:
    ...     y = selective_scan_reference(u, dt, A, B, C, delta_softplus=True)
    >>> ref = selective_scan_reference(u, dt, A, B, C, delta_softplus=True)
    >>> torch.allclose(y, ref, atol=1e-5)
    True
    """
    check_scan_shapes(u, delta, A, B, C)
    with torch.no_grad():
        y, state = scan_channels_last(
            u.transpose(1, 2),
            delta.transpose(1, 2),
            A,
            B,
            C,
            D=D,
            z=None if z is None else z.transpose(1, 2),
            initial_state=initial_state,
            delta_bias=delta_bias,
            delta_softplus=delta_softplus,
        )
    y = y.transpose(1, 2).to(u.dtype)
    return (y, state) if return_last_state else y
