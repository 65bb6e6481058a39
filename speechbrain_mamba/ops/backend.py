"""Backend dispatch: the one place that decides which kernels a Mamba layer
call runs on.

Every layer asks this module; nothing else chooses a path. The request is
the layer's backend name, the input tensor (device, shape) and the state
size:

:func:`sequence_path`
    a full-sequence call (no cache) of BiMamba or of a unidirectional Mamba
    layer: ``"triton"`` (this package's kernels,
    :mod:`speechbrain_mamba.ops.triton`: both BiMamba directions in one
    scan, or the forward direction alone), ``"mamba_ssm"`` (mamba_ssm's
    selective scan, both directions in one call) or ``"torch"``.
:func:`use_cuda_kernels`
    a unidirectional scan on mamba_ssm's kernels (else pure PyTorch, or
    numba on CPU, see :func:`use_numba_kernels`).
:func:`fused_step_applies`
    a decoding step of a unidirectional layer or stack on the two fused
    Triton step kernels (:mod:`speechbrain_mamba.ops.triton.mamba_step`).
:func:`fused_add_norm`
    the residual add + norm of a pre-norm block in one Triton kernel
    (:mod:`speechbrain_mamba.ops.triton.add_norm`) for CUDA tensors with
    backend "auto", "cuda" or "triton".

``backend="auto"`` runs full-sequence calls on CUDA on this package's
Triton kernels: BiMamba (both directions in one scan, no reversed copies)
and unidirectional layers (Mamba, CrossMamba, MambaStack), whether or not
mamba_ssm is installed. Measured on an H200 (bf16) with mamba_ssm 2.3.2
installed, its path was nowhere faster: a VALL-M training step at 10 s took
60.4 ms and 4757 MiB on it against 51.9 ms and 3382 MiB on Triton, a
Mamba-TasNet-M step at 2 s 44.6 ms and 1453 MiB against 43.9 ms and 521 MiB,
its inference 11.7 against 9.8 ms (docs/results/session9_h200). "auto"
uses mamba_ssm's kernels (``selective_scan_fn``, and causal_conv1d's
``causal_conv1d_fn`` when installed) only where Triton has none: cached
calls of several frames, decoding steps the fused step kernels do not take,
and GPUs without Triton. Everything else runs the pure-PyTorch path
(numba's kernels for CPU inference when installed).
``"torch"`` always uses the pure-PyTorch path; ``"cuda"`` insists on the
mamba_ssm kernels; ``"triton"`` insists on the Triton kernels for BiMamba,
for full-sequence unidirectional calls and for decoding steps (streaming
calls of several frames with a cache treat it as "auto"); under Triton's
interpreter (``TRITON_INTERPRET=1``) ``"triton"`` also takes CPU tensors,
which is how CI runs the kernels. The environment variable
``SBMAMBA_BACKEND`` overrides the argument of every layer (handy to compare
both paths without touching a YAML file).

Author
------
speechbrain-mamba developers
"""

import functools
import os
from types import SimpleNamespace
from typing import Callable, Iterable, Optional

import torch

BACKENDS = ("auto", "torch", "cuda", "triton")

#: Largest d_state the mamba_ssm selective-scan kernel supports.
MAX_CUDA_D_STATE = 256

ENV_VAR = "SBMAMBA_BACKEND"


def check_backend(backend: str) -> str:
    """Validates a backend name.

    Arguments
    ---------
    backend : str
        One of ``BACKENDS``.

    Returns
    -------
    str
        The backend name.

    Example
    -------
    >>> check_backend("torch")
    'torch'
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def effective_backend(backend: str) -> str:
    """Applies the ``SBMAMBA_BACKEND`` environment override.

    Arguments
    ---------
    backend : str
        The backend a layer was built with.

    Returns
    -------
    str
        The backend to use now.

    Example
    -------
    >>> effective_backend("auto") in BACKENDS
    True
    """
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(
                f"{ENV_VAR} must be one of {BACKENDS}, got {forced!r}"
            )
        return forced
    return backend


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> Optional[SimpleNamespace]:
    """Imports the optional CUDA kernels once.

    Returns
    -------
    SimpleNamespace or None
        ``selective_scan_fn`` and ``causal_conv1d_fn`` (None when
        causal_conv1d is missing), or None when mamba_ssm is missing.

    Example
    -------
    >>> k = cuda_kernels()
    >>> k is None or callable(k.selective_scan_fn)
    True
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError):
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except (ImportError, OSError):
        causal_conv1d_fn = None
    return SimpleNamespace(
        selective_scan_fn=selective_scan_fn, causal_conv1d_fn=causal_conv1d_fn
    )


def missing_kernels_message() -> str:
    """The error text for a missing mamba_ssm.

    Returns
    -------
    str

    Example
    -------
    >>> "mamba-ssm" in missing_kernels_message()
    True
    """
    return (
        "backend='cuda' needs the mamba_ssm CUDA kernels, which could not be "
        "imported. Install them with `pip install speechbrain-mamba[cuda]` "
        "(mamba-ssm, causal-conv1d) on a machine with an NVIDIA GPU, or use "
        "backend='auto' / 'torch' (pure PyTorch, any device)."
    )


def use_cuda_kernels(backend: str, x: torch.Tensor, d_state: int) -> bool:
    """Decides whether a layer call runs on the mamba_ssm kernels.

    Arguments
    ---------
    backend : str
        The layer's backend ("auto", "torch" or "cuda").
    x : torch.Tensor
        The layer input (its device decides for "auto").
    d_state : int
        The layer's state size.

    Returns
    -------
    bool
        True for the CUDA kernels, False for the pure-PyTorch path.

    Example
    -------
    >>> use_cuda_kernels("torch", torch.zeros(1), 16)
    False
    """
    backend = effective_backend(backend)
    if backend == "torch":
        return False
    if backend == "cuda":
        if cuda_kernels() is None:
            raise ImportError(missing_kernels_message())
        if not x.is_cuda:
            raise ValueError(
                "backend='cuda' needs CUDA tensors, got a tensor on "
                f"{x.device}; move the model to the GPU or use "
                "backend='auto'."
            )
        if d_state > MAX_CUDA_D_STATE:
            raise ValueError(
                f"d_state={d_state} is too large for the mamba_ssm CUDA "
                f"kernel (at most {MAX_CUDA_D_STATE})."
            )
        return True
    return (
        x.is_cuda
        and d_state <= MAX_CUDA_D_STATE
        and (cuda_kernels() is not None)
    )


def _triton_runs_on(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can take ``x``: CUDA tensors, or any
    tensor under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    from speechbrain_mamba.ops.triton import bidirectional_scan

    return x.is_cuda or bidirectional_scan.interpreted()


def use_triton_kernels(backend: str, x: torch.Tensor) -> bool:
    """Decides whether a full-sequence call runs on the Triton kernels.

    Arguments
    ---------
    backend : str
        The layer's backend.
    x : torch.Tensor
        The layer input [batch, time, ...] (its device decides for "auto").

    Returns
    -------
    bool

    Example
    -------
    >>> use_triton_kernels("torch", torch.zeros(1))
    False
    """
    from speechbrain_mamba.ops.triton import bidirectional_scan

    backend = effective_backend(backend)
    if backend == "triton":
        if not bidirectional_scan.available():
            raise ImportError(
                "backend='triton' needs Triton, which comes with the CUDA "
                "builds of PyTorch; use backend='auto' or 'torch'."
            )
        if not _triton_runs_on(x):
            raise ValueError(
                "backend='triton' needs CUDA tensors, got a tensor on "
                f"{x.device}; move the model to the GPU or use "
                "backend='auto'."
            )
        return True
    return backend == "auto" and x.is_cuda and bidirectional_scan.available()


def sequence_path(backend: str, x: torch.Tensor, d_state: int) -> str:
    """The kernels a full-sequence call (no cache) of a Mamba layer runs on:
    BiMamba, or a unidirectional Mamba layer (also in CrossMamba and
    MambaStack).

    Arguments
    ---------
    backend : str
        The layer's backend (before the ``SBMAMBA_BACKEND`` override).
    x : torch.Tensor
        The layer input, [batch, time, d_model].
    d_state : int
        The layer's state size.

    Returns
    -------
    str
        ``"triton"`` (:mod:`speechbrain_mamba.ops.triton`: BiMamba's
        bidirectional convolution and scan, or the causal convolution and
        forward scan), ``"mamba_ssm"`` (its selective scan; BiMamba's two
        directions in one call) or ``"torch"`` (numba's kernels for CPU
        inference when installed).

    Example
    -------
    >>> x = torch.zeros(1, 5, 8)  # CPU: the kernels of "auto" need CUDA
    >>> sequence_path("auto", x, 16)
    'torch'
    >>> sequence_path("torch", x, 16)
    'torch'
    """
    if use_triton_kernels(backend, x):
        return "triton"
    if use_cuda_kernels(backend, x, d_state):
        return "mamba_ssm"
    return "torch"


def use_numba_kernels(x: torch.Tensor, needs_grad: bool) -> bool:
    """Whether a CPU scan (or convolution) without gradient runs on the
    optional numba kernels (:mod:`speechbrain_mamba.ops.numba_scan`).

    Arguments
    ---------
    x : torch.Tensor
        The scan input.
    needs_grad : bool
        Whether a gradient is needed (numba's kernels have no backward).

    Returns
    -------
    bool

    Example
    -------
    >>> use_numba_kernels(torch.zeros(1), needs_grad=True)
    False
    """
    from speechbrain_mamba.ops import numba_scan

    return not needs_grad and x.device.type == "cpu" and numba_scan.available()


def fused_step_applies(
    x: torch.Tensor,
    lengths: Optional[torch.Tensor],
    cache: Optional[object],
    backend: str,
    parameters: Iterable[torch.Tensor],
) -> bool:
    """Whether a call of a unidirectional layer or stack is a decoding step
    the fused Triton step kernels take
    (:mod:`speechbrain_mamba.ops.triton.mamba_step`): one frame on CUDA
    (or any device under Triton's interpreter with backend "triton") with a
    cache, no padding, a batch of at most ``MAX_BATCH``, no gradient,
    backend "auto" or "triton" (mamba_ssm's kernels are kept for "cuda").

    Arguments
    ---------
    x : torch.Tensor
        The input, [batch, time, d_model].
    lengths : torch.Tensor, optional
        Relative lengths of the call.
    cache : optional
        The call's cache (None: not a decoding step).
    backend : str
        The layer's backend (before the ``SBMAMBA_BACKEND`` override).
    parameters : iterable of torch.Tensor
        The layer's parameters (a gradient is needed if one requires it).

    Returns
    -------
    bool

    Example
    -------
    >>> weight = torch.zeros(8, requires_grad=True)
    >>> with torch.no_grad():  # a CPU tensor takes the per-operation path
    ...     fused_step_applies(torch.zeros(1, 1, 8), None, object(), "auto",
    ...                        [weight])
    False
    """
    from speechbrain_mamba.ops.triton import mamba_step

    backend = effective_backend(backend)
    if backend not in ("auto", "triton"):
        return False
    on_device = x.is_cuda or (backend == "triton" and _triton_runs_on(x))
    if (
        cache is None
        or not on_device
        or x.dim() != 3
        or x.shape[1] != 1
        or lengths is not None
        or x.shape[0] > mamba_step.MAX_BATCH
        or not mamba_step.available()
    ):
        return False
    return not needs_gradient(x, parameters)


def needs_gradient(x: torch.Tensor, parameters: Iterable[torch.Tensor]) -> bool:
    """Whether a layer call must be differentiable: gradients are enabled
    and the input or one of the layer's parameters requires them.

    Arguments
    ---------
    x : torch.Tensor
        The call's input.
    parameters : iterable of torch.Tensor
        The layer's parameters.

    Returns
    -------
    bool

    Example
    -------
    >>> weight = torch.zeros(2, requires_grad=True)
    >>> needs_gradient(torch.zeros(2), [weight])
    True
    >>> with torch.no_grad():
    ...     needs_gradient(torch.zeros(2), [weight])
    False
    """
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in parameters)
    )


@functools.lru_cache(maxsize=1)
def state_update_kernel():
    """mamba_ssm's fused one-step state update (Triton), or None.

    Returns
    -------
    callable or None
        ``selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
        dt_softplus)``; updates ``state`` in place.

    Example
    -------
    >>> fn = state_update_kernel()
    >>> fn is None or callable(fn)
    True
    """
    if cuda_kernels() is None:
        return None
    try:
        from mamba_ssm.ops.triton.selective_state_update import (
            selective_state_update,
        )
    except (ImportError, OSError):
        return None
    return selective_state_update


def fused_add_norm(
    backend: str,
    hidden: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
) -> Optional[Callable]:
    """The fused residual add + norm of a pre-norm block
    (:func:`speechbrain_mamba.ops.triton.add_norm.add_norm`), or None for
    the plain path.

    It applies to CUDA tensors with backend "auto", "cuda" or "triton",
    whichever kernels the mixer then runs on (under Triton's interpreter,
    "triton" also takes CPU tensors), Triton
    installed, a norm with a weight, fp32 / fp16 / bf16 tensors. CPU
    tensors (and backend "torch") keep the plain path.

    Arguments
    ---------
    backend : str
        The mixer's backend (before the ``SBMAMBA_BACKEND`` override).
    hidden : torch.Tensor
        The branch output added to the residual stream, [..., d_model].
    residual : torch.Tensor, optional
        The residual stream so far.
    weight : torch.Tensor, optional
        The norm's weight (None: a norm without one, plain path).

    Returns
    -------
    callable or None
        ``add_norm(hidden, weight, bias, residual, eps, residual_in_fp32,
        is_rms_norm, out_dtype)``, or None.

    Example
    -------
    >>> hidden, weight = torch.zeros(1, 5, 8), torch.ones(8)
    >>> fused_add_norm("auto", hidden, None, weight) is None  # CPU tensors
    True
    """
    from speechbrain_mamba.ops.triton import add_norm

    backend = effective_backend(backend)
    if backend == "torch" or weight is None or not add_norm.available():
        return None
    if not (
        hidden.is_cuda or (backend == "triton" and _triton_runs_on(hidden))
    ):
        return None
    tensors = (
        (hidden, weight) if residual is None else (hidden, weight, residual)
    )
    if any(t.dtype not in add_norm.DTYPES for t in tensors):
        return None
    if hidden.shape[-1] > add_norm.MAX_FEATURES:
        return None
    return add_norm.add_norm
