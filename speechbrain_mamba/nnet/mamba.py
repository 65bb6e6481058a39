"""Unidirectional Mamba (selective state space) layer.

Parameter names, shapes and initialisation are those of
``mamba_ssm.modules.mamba_simple.Mamba`` (in_proj, conv1d, x_proj, dt_proj,
A_log, D, out_proj), so state dicts load in either with ``strict=True``.
The layer runs on any device in pure PyTorch; on CUDA tensors it runs on the
mamba_ssm CUDA kernels when they are installed, and on this package's Triton
convolution and scan kernels otherwise (see
:func:`speechbrain_mamba.ops.backend.sequence_path`); it uses an optional numba
kernel for CPU inference. It understands SpeechBrain's relative lengths and
keeps a recurrent cache for streaming and step-by-step decoding.

Author
------
speechbrain-mamba developers
"""

import math
from typing import Hashable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.nnet.init import A_log_init, DeltaProjection
from speechbrain_mamba.nnet.padding import (
    check_input_dtype,
    check_sequence_input,
    lengths_to_frames,
    reverse_valid,
    zero_padding,
)
from speechbrain_mamba.ops import numba_conv, numba_scan
from speechbrain_mamba.ops.backend import (
    MAX_CUDA_D_STATE,
    check_backend,
    cuda_kernels,
    effective_backend,
    fused_step_applies,
    needs_gradient,
    sequence_path,
    state_update_kernel,
    use_cuda_kernels,
    use_numba_kernels,
)
from speechbrain_mamba.ops.depthwise_conv import depthwise_conv_channels_last
from speechbrain_mamba.ops.selective_scan import selective_scan_torch
from speechbrain_mamba.ops.triton import mamba_step
from speechbrain_mamba.ops.triton.bidirectional_scan import (
    ScanInputs,
    bidirectional_scan_inference,
)
from speechbrain_mamba.ops.triton.bimamba_layer import (
    BiMambaLayerFunction,
    mamba_scan_inputs,
)
from speechbrain_mamba.utils.per_tensor_cache import (
    cached_while_unchanged,
    forget,
)


def _single_step(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    state: torch.Tensor,
):
    """One recurrence step. u, delta, z: [b, d]; B, C: [b, n]; state
    [b, d, n] fp32. Returns y [b, d] fp32 and the new state."""
    state = (
        torch.exp(delta[..., None] * A) * state
        + (delta * u)[..., None] * B[:, None, :]
    )
    y = (state * C[:, None, :]).sum(-1) + D * u
    return y * F.silu(z), state


def linear_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear(x, weight)`` computes in: autocast's for the
    input's device type when autocast is on there, else the weight's.

    Arguments
    ---------
    x : torch.Tensor
        The input.
    weight : torch.Tensor
        The weight.

    Returns
    -------
    torch.dtype

    Example
    -------
    >>> weight = torch.zeros(2, 2)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     linear_dtype(torch.zeros(1, 2), weight)
    torch.bfloat16
    >>> linear_dtype(torch.zeros(1, 2), weight)
    torch.float32
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class Mamba(nn.Module):
    """Mamba selective state space layer (unidirectional, causal).

    Arguments
    ---------
    d_model : int
        Input and output feature size.
    d_state : int
        SSM state size per channel.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    expand : int
        d_inner = expand * d_model channels inside the layer.
    dt_rank : int or "auto"
        Rank of the step-size projection ("auto": ceil(d_model / 16)).
    dt_min, dt_max : float
        Range of the initial step sizes.
    dt_init : str
        "random" or "constant" initialisation of dt_proj.weight.
    dt_scale : float
        Scale of dt_proj.weight's initialisation.
    dt_init_floor : float
        Smallest initial step size.
    conv_bias : bool
        Bias in the depthwise convolution.
    bias : bool
        Bias in in_proj and out_proj.
    layer_idx : int, optional
        Index of the layer in a stack (kept for mamba_ssm compatibility).
    backend : str
        "auto", "torch", "cuda" or "triton" (see
        :mod:`speechbrain_mamba.ops.backend`).
    device, dtype : optional
        Factory arguments for the parameters.

    Example
    -------
    >>> layer = Mamba(d_model=32)
    >>> x = torch.randn(2, 50, 32)
    >>> y = layer(x, lengths=torch.tensor([1.0, 0.6]))
    >>> y.shape
    torch.Size([2, 50, 32])
    >>> bool(y[1, 30:].abs().sum() == 0)
    True
    """

    #: Suffixes of the scan directions this layer owns.
    directions = ("",)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: Optional[int] = None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int, got {value!r}"
                )
        self.backend = check_backend(backend)
        if backend == "cuda" and d_state > MAX_CUDA_D_STATE:
            raise ValueError(
                f"d_state={d_state} is too large for the mamba_ssm CUDA kernel "
                f"(at most {MAX_CUDA_D_STATE}); use backend='torch' or 'auto'."
            )
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(
                f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank
        self.layer_idx = layer_idx
        self._dt_args = dict(
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_init_floor=dt_init_floor,
        )
        self._conv_bias = conv_bias
        self.in_proj = nn.Linear(
            d_model, 2 * self.d_inner, bias=bias, **factory
        )
        for suffix in self.directions:
            self._add_direction(suffix, factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        #: Kernels of the last full-sequence call (no cache): "triton",
        #: "mamba_ssm" or "torch" (backend.sequence_path); None before one.
        self.kernels_used: Optional[str] = None

    # -- parameters -------------------------------------------------------
    @staticmethod
    def _A_log_name(suffix: str) -> str:
        # Vision Mamba names the backward A "A_b_log"
        return "A_log" if suffix == "" else f"A{suffix}_log"

    def _add_direction(self, suffix: str, factory: dict) -> None:
        d_inner = self.d_inner
        conv = nn.Conv1d(
            d_inner,
            d_inner,
            kernel_size=self.d_conv,
            groups=d_inner,
            padding=self.d_conv - 1,
            bias=self._conv_bias,
            **factory,
        )
        setattr(self, f"conv1d{suffix}", conv)
        setattr(
            self,
            f"x_proj{suffix}",
            nn.Linear(
                d_inner, self.dt_rank + 2 * self.d_state, bias=False, **factory
            ),
        )
        setattr(
            self,
            f"dt_proj{suffix}",
            DeltaProjection(self.dt_rank, d_inner, **self._dt_args, **factory),
        )
        A_log = nn.Parameter(
            A_log_init(d_inner, self.d_state, factory["device"])
        )
        A_log._no_weight_decay = True
        setattr(self, self._A_log_name(suffix), A_log)
        D = nn.Parameter(torch.ones(d_inner, device=factory["device"]))
        D._no_weight_decay = True
        setattr(self, f"D{suffix}", D)

    def reset_parameters(self) -> None:
        """Re-applies Mamba's initialisation to every parameter."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        with torch.no_grad():
            for suffix in self.directions:
                getattr(self, f"conv1d{suffix}").reset_parameters()
                getattr(self, f"x_proj{suffix}").reset_parameters()
                getattr(self, f"dt_proj{suffix}").reset_parameters()
                A_log = getattr(self, self._A_log_name(suffix))
                A_log.copy_(
                    A_log_init(self.d_inner, self.d_state, A_log.device)
                )
                getattr(self, f"D{suffix}").fill_(1.0)

    def init_cache(
        self, batch_size: int, device=None, dtype=None
    ) -> MambaCache:
        """Creates an empty recurrent cache (streaming / decoding).

        Arguments
        ---------
        batch_size : int
            Number of sequences.
        device, dtype : optional
            Default: those of the layer's parameters.

        Returns
        -------
        MambaCache
        """
        weight = self.in_proj.weight
        device = device or weight.device
        dtype = dtype or weight.dtype
        return MambaCache(
            torch.zeros(
                batch_size,
                self.d_inner,
                self.d_conv - 1,
                device=device,
                dtype=dtype,
            ),
            torch.zeros(
                batch_size,
                self.d_inner,
                self.d_state,
                device=device,
                dtype=torch.float32,
            ),
        )

    # -- computation ------------------------------------------------------
    def _scan_direction(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        suffix: str,
        frames: Optional[torch.Tensor] = None,
        cache: Optional[MambaCache] = None,
        reverse: bool = False,
    ) -> torch.Tensor:
        """Conv + selective scan + gating of one direction.

        x, z: [batch, time, d_inner] (channels last). With ``reverse`` the
        direction runs backward in time from each item's last valid frame
        (inputs and output stay in the original order). Returns
        [batch, time, d_inner]; updates ``cache`` in place when given.
        """
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.in_proj.weight.requires_grad
        )
        fused_cpu = cache is None and use_numba_kernels(x, needs_grad)
        if reverse and not fused_cpu:
            y = self._scan_direction(
                reverse_valid(x, frames),
                reverse_valid(z, frames),
                suffix,
                frames,
            )
            return reverse_valid(y, frames)

        conv = getattr(self, f"conv1d{suffix}")
        x_proj = getattr(self, f"x_proj{suffix}")
        dt_proj = getattr(self, f"dt_proj{suffix}")
        A = -torch.exp(getattr(self, self._A_log_name(suffix)).float())
        D = getattr(self, f"D{suffix}").float()
        batch, time, _ = x.shape
        on_cuda = use_cuda_kernels(self.backend, x, self.d_state)
        kernels = cuda_kernels() if on_cuda else None
        if (
            on_cuda
            and cache is not None
            and time == 1
            and frames is None
            and not needs_grad
            and state_update_kernel() is not None
        ):
            return self._step_cuda(x[:, 0], z[:, 0], suffix, cache, A, D)

        if cache is not None:
            x_cf = x.transpose(1, 2)  # [batch, d_inner, time]
            history = torch.cat([cache.conv.to(x_cf.dtype), x_cf], dim=-1)
            x_conv = F.conv1d(
                history, conv.weight, conv.bias, groups=self.d_inner
            )
            end = (
                frames
                if frames is not None
                else torch.full((batch,), time, device=x.device)
            )
            offsets = torch.arange(self.d_conv - 1, device=x.device)
            index = (end[:, None] + offsets[None, :])[:, None, :]
            cache.conv = torch.gather(
                history, 2, index.expand(batch, self.d_inner, -1)
            )
            x_conv_cl = F.silu(x_conv).transpose(1, 2)
        elif kernels is not None and kernels.causal_conv1d_fn is not None:
            x_conv_cl = kernels.causal_conv1d_fn(
                x.transpose(1, 2).contiguous(),
                conv.weight.squeeze(1),
                conv.bias,
                activation="silu",
            ).transpose(1, 2)
        elif fused_cpu:
            x_conv_cl = numba_conv.conv_silu_channels_last(
                x, conv.weight, conv.bias, frames, reverse
            ).to(x.dtype)
        elif x.device.type == "cpu":
            x_conv_cl = F.silu(
                depthwise_conv_channels_last(
                    x, conv.weight, conv.bias, reverse=reverse
                )
            )
        else:
            x_conv_cl = F.silu(conv(x.transpose(1, 2))[..., :time]).transpose(
                1, 2
            )
        # x_conv_cl: [batch, time, d_inner]

        x_dbl = x_proj(x_conv_cl)
        dt_low, B, C = torch.split(
            x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt = F.linear(dt_low, dt_proj.weight)  # bias is added in the scan
        B_cf, C_cf = B.transpose(1, 2), C.transpose(1, 2)  # [b, n, time]

        if cache is None and kernels is not None:
            y = kernels.selective_scan_fn(
                x_conv_cl.transpose(1, 2),
                dt.transpose(1, 2),
                A,
                B_cf.contiguous(),
                C_cf.contiguous(),
                D,
                z=z.transpose(1, 2),
                delta_bias=dt_proj.bias.float(),
                delta_softplus=True,
            )
            return y.transpose(1, 2)

        if fused_cpu:
            y, _ = numba_scan.scan_channels_last(
                x_conv_cl,
                dt,
                A,
                B_cf,
                C_cf,
                D,
                z,
                frames=frames,
                reverse=reverse,
                delta_bias=dt_proj.bias,
                delta_softplus=True,
            )
            return y.to(x.dtype)

        delta = F.softplus(dt.float() + dt_proj.bias.float())
        if cache is not None and frames is not None:
            # padded frames: zero step size keeps the state unchanged
            delta = zero_padding(delta, frames)
        state = cache.ssm if cache is not None else None
        if time == 1 and state is not None:
            y, state = _single_step(
                x_conv_cl[:, 0].float(),
                delta[:, 0],
                A,
                B[:, 0].float(),
                C[:, 0].float(),
                D,
                z[:, 0].float(),
                state,
            )
            y = y[:, None].to(x.dtype)
        elif use_numba_kernels(x, needs_grad):
            y, state = numba_scan.scan_channels_last(
                x_conv_cl, delta, A, B_cf, C_cf, D, z, initial_state=state
            )
            y = y.to(x.dtype)
        else:
            y, state = selective_scan_torch(
                x_conv_cl.transpose(1, 2),
                delta.transpose(1, 2),
                A,
                B_cf,
                C_cf,
                D,
                z=z.transpose(1, 2),
                initial_state=state,
                return_last_state=True,
            )
            y = y.transpose(1, 2)
        if cache is not None:
            cache.ssm = state
        return y

    def _step_cuda(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        suffix: str,
        cache: MambaCache,
        A: torch.Tensor,
        D: torch.Tensor,
    ) -> torch.Tensor:
        """One decoding step on the GPU with few kernels: the conv window
        as one product, mamba_ssm's fused state update (softplus, decay,
        input, readout, skip and gate in one Triton kernel). x, z:
        [batch, d_inner]; updates ``cache`` in place; returns
        [batch, 1, d_inner]."""
        conv = getattr(self, f"conv1d{suffix}")
        dt_proj = getattr(self, f"dt_proj{suffix}")
        window = torch.cat([cache.conv.to(x.dtype), x[..., None]], dim=-1)
        x_conv = (window * conv.weight[:, 0].to(x.dtype)).sum(-1)
        if conv.bias is not None:
            x_conv = x_conv + conv.bias.to(x.dtype)
        x_conv = F.silu(x_conv)
        cache.conv.copy_(window[..., 1:])
        dt, B, C = torch.split(
            getattr(self, f"x_proj{suffix}")(x_conv),
            [self.dt_rank, self.d_state, self.d_state],
            dim=-1,
        )
        y = state_update_kernel()(
            cache.ssm,
            x_conv,
            F.linear(dt, dt_proj.weight),
            A,
            B,
            C,
            D,
            z=z,
            dt_bias=dt_proj.bias.float(),
            dt_softplus=True,
        )
        return y[:, None].to(x.dtype)

    def _check_cache(self, cache: MambaCache, batch: int) -> None:
        if not isinstance(cache, MambaCache):
            raise ValueError(
                "cache must be a MambaCache (see init_cache), got "
                f"{type(cache)}"
            )
        if cache.batch_size != batch:
            raise ValueError(
                f"cache holds {cache.batch_size} sequences but the input "
                f"has batch size {batch}"
            )

    def forward(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        cache: Optional[MambaCache] = None,
    ) -> torch.Tensor:
        """Runs the layer.

        Arguments
        ---------
        x : torch.Tensor
            Input, [batch, time, d_model].
        lengths : torch.Tensor, optional
            Relative lengths in (0, 1], [batch]. Padded output frames are 0.
        cache : MambaCache, optional
            Recurrent state from :meth:`init_cache`; when given, the layer
            continues from it and updates it in place (streaming: call it
            chunk after chunk; decoding: one frame at a time).

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        check_sequence_input(x, self.d_model)
        check_input_dtype(x, self.in_proj.weight.dtype)
        batch, time, _ = x.shape
        frames = lengths_to_frames(lengths, batch, time, x.device)
        if cache is not None:
            self._check_cache(cache, batch)
        if self.directions == ("",) and fused_step_applies(
            x, lengths, cache, self.backend, self.parameters()
        ):
            # one decoding step in two fused Triton kernels
            y = mamba_step.mamba_mixer_step(x[:, 0], self, cache)
            dtype = (
                torch.get_autocast_dtype("cuda")
                if torch.is_autocast_enabled("cuda")
                else x.dtype
            )
            return y.to(dtype)[:, None]
        if cache is None:
            path = sequence_path(self.backend, x, self.d_state)
            self.kernels_used = path
            if path == "triton":
                return zero_padding(self._forward_triton(x, frames), frames)
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        y = self._scan_direction(x_in, z, "", frames, cache)
        return zero_padding(self.out_proj(y), frames)

    def _kept_for_inference(
        self, key: Hashable, parameters: Sequence[torch.Tensor], derive
    ):
        """What an inference call derives from parameters (``-exp(A_log)``,
        block-diagonal or autocast-dtype projection weights), kept between
        calls until a parameter changes
        (:func:`~speechbrain_mamba.utils.per_tensor_cache.cached_while_unchanged`),
        so that a call launches no kernels for it. Only in evaluation mode
        and dropped by :meth:`train`: a fused optimizer's steps change no
        version counter, and they happen in training mode."""
        with torch.no_grad():
            if self.training:
                return derive()
            return cached_while_unchanged(self, key, parameters, derive)

    def train(self, mode: bool = True) -> "Mamba":
        """Sets training or evaluation mode (:meth:`torch.nn.Module.train`)
        and drops what inference calls kept (:meth:`_kept_for_inference`):
        parameters may have changed unseen since (fused optimizers).

        Arguments
        ---------
        mode : bool
            Training mode if True, evaluation mode otherwise.

        Returns
        -------
        Mamba
            This layer.

        Example
        -------
        >>> layer = Mamba(8, d_state=4)
        >>> layer.eval() is layer and not layer.training
        True
        """
        forget(self)
        return super().train(mode)

    def _scan_parameter_tensors(self):
        """(A_log, D, step-size bias) of each of the layer's directions."""
        return [
            (
                getattr(self, self._A_log_name(suffix)),
                getattr(self, f"D{suffix}"),
                getattr(self, f"dt_proj{suffix}").bias,
            )
            for suffix in self.directions
        ]

    def _scan_parameters(self):
        """A [directions d_inner, d_state], D and the step-size bias
        [directions d_inner] of the layer's directions (forward first),
        fp32, as the Triton scans take them."""
        A_log, D, delta_bias = (
            group[0] if len(group) == 1 else torch.cat(group)
            for group in zip(*self._scan_parameter_tensors())
        )
        return -torch.exp(A_log.float()), D.float(), delta_bias.float()

    def _scan_parameters_for(self, inference: bool):
        """:meth:`_scan_parameters`, kept between inference calls
        (:meth:`_kept_for_inference`)."""
        if not inference:
            return self._scan_parameters()
        parameters = [
            t for group in self._scan_parameter_tensors() for t in group
        ]
        return self._kept_for_inference(
            "scan parameters", parameters, self._scan_parameters
        )

    @staticmethod
    def _kernel_frames(
        x: torch.Tensor, frames: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The valid frames the Triton kernels take: ``frames``, or every
        frame of every item when the call has no lengths."""
        if frames is not None:
            return frames
        batch, time = x.shape[:2]
        return torch.full((batch,), time, device=x.device, dtype=torch.int32)

    def _forward_triton(
        self, x: torch.Tensor, frames: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The layer on this package's Triton kernels: the causal
        convolution with SiLU, then the forward selective scan with gating
        (the forward direction of BiMamba's kernels; without gradients, the
        inference scan). With gradients the layer is one autograd function
        that keeps only its input and one state per chunk of frames, as
        BiMamba's (:mod:`speechbrain_mamba.ops.triton.bimamba_layer`).
        x: [batch, time, d_model]; returns the output projection,
        [batch, time, d_model] (padded frames: of a zero scan output)."""
        frames = self._kernel_frames(x, frames)
        inference = not needs_gradient(x, self.parameters())
        conv_bias = self.conv1d.bias
        if conv_bias is None:
            conv_bias = x.new_zeros(self.d_inner, dtype=torch.float32)
        weights = (
            self.in_proj.weight, self.in_proj.bias, self.conv1d.weight,
            conv_bias, self.x_proj.weight, self.dt_proj.weight,
        )  # fmt: skip
        sizes = (self.d_inner, self.dt_rank, self.d_state)
        A, D, delta_bias = self._scan_parameters_for(inference)
        if not inference:
            return BiMambaLayerFunction.apply(
                x, frames, sizes, 1.0, A, D, delta_bias,
                self.out_proj.weight, self.out_proj.bias, *weights,
            )  # fmt: skip
        dtype = linear_dtype(x, self.x_proj.weight)
        projections = self._kept_for_inference(
            ("projections", dtype),
            (self.x_proj.weight, self.dt_proj.weight),
            lambda: (
                self.x_proj.weight.to(dtype),
                self.dt_proj.weight.to(dtype),
            ),
        )
        u, delta_raw, z, B, C, _, _ = mamba_scan_inputs(
            x, frames, sizes, *weights[:4], *projections
        )
        y = bidirectional_scan_inference(
            ScanInputs(
                u, delta_raw, z, A, B, C, None, None, D, delta_bias, frames
            )
        )
        return self.out_proj(y)

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, backend={effective_backend(self.backend)}"
        )
