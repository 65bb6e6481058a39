"""Bidirectional Mamba layer (Vision Mamba's "bimamba v2" layout).

One shared input projection feeds two scans, one forward in time and one
backward, each with its own conv1d / x_proj / dt_proj / A / D (the backward
ones suffixed ``_b``, backward A named ``A_b_log``); the two gated outputs
are combined (mean by default, as in the Speech Slytherin models, or sum)
and go through one shared output projection. Unlike the original, the
backward direction starts at each item's true last frame (not inside the
padding) and ``dt_proj_b`` gets the same step-size initialisation as the
forward direction.

Author
------
speechbrain-mamba developers
"""

from typing import Optional, Union

import torch

from speechbrain_mamba.nnet.bimamba_inner import (
    causal_conv1d_silu,
    prepare_scan_inputs,
    torch_conv1d_silu,
)
from speechbrain_mamba.nnet.mamba import Mamba, linear_dtype
from speechbrain_mamba.nnet.padding import (
    check_input_dtype,
    check_sequence_input,
    lengths_to_frames,
    reverse_valid,
    zero_padding,
)
from speechbrain_mamba.ops.backend import (
    cuda_kernels,
    needs_gradient,
    sequence_path,
)
from speechbrain_mamba.ops.triton.bidirectional_scan import (
    ScanInputs,
    bidirectional_scan,
    bidirectional_scan_inference,
)
from speechbrain_mamba.ops.triton.bimamba_layer import (
    BiMambaLayerFunction,
    bimamba_scan_inputs,
    both_projections,
)

COMBINE_MODES = ("mean", "sum")


class BiMamba(Mamba):
    """Bidirectional Mamba: forward and backward selective scans.

    Arguments
    ---------
    d_model : int
        Input and output feature size.
    combine : str
        How the two directions are merged: "mean" (default) or "sum".
    low_memory : bool or "auto"
        On the Triton path, recompute the cheap activations before the
        scan in backward instead of keeping them (same numbers; the layer
        keeps only its input and one state per chunk of frames, at no
        measurable cost in time, since the backward scan reruns the forward
        anyway). True and "auto" (default) do so, False keeps them. The
        other paths keep their activations.
    **kwargs
        Every other argument of :class:`speechbrain_mamba.nnet.Mamba`
        (d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init,
        dt_scale, dt_init_floor, conv_bias, bias, layer_idx, backend).

    Example
    -------
    >>> layer = BiMamba(d_model=16, d_state=8)
    >>> x = torch.randn(2, 30, 16)
    >>> y = layer(x, lengths=torch.tensor([1.0, 0.5]))
    >>> alone = layer(x[1:, :15])
    >>> torch.allclose(y[1, :15], alone[0], atol=1e-5)
    True
    """

    directions = ("", "_b")

    def __init__(
        self,
        d_model: int,
        combine: str = "mean",
        low_memory: Union[bool, str] = "auto",
        **kwargs,
    ):
        if combine not in COMBINE_MODES:
            raise ValueError(
                f"combine must be one of {COMBINE_MODES}, got {combine!r}"
            )
        if low_memory not in (True, False, "auto"):
            raise ValueError(
                f"low_memory must be True, False or 'auto', got {low_memory!r}"
            )
        super().__init__(d_model, **kwargs)
        self.combine = combine
        self.low_memory = low_memory
        #: Kernels of the last call: "triton", "mamba_ssm" or "torch" (the
        #: PyTorch path, with the numba CPU kernels when installed).
        self.kernels_used: Optional[str] = None

    def init_cache(self, *args, **kwargs):
        """Not available: a bidirectional layer needs the whole sequence."""
        raise ValueError(
            "BiMamba looks at the whole sequence and has no recurrent cache; "
            "use a unidirectional Mamba for streaming or decoding."
        )

    def forward(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        cache=None,
    ) -> torch.Tensor:
        """Runs both directions.

        Arguments
        ---------
        x : torch.Tensor
            Input, [batch, time, d_model].
        lengths : torch.Tensor, optional
            Relative lengths in (0, 1], [batch]. Padded output frames are 0.
        cache : None
            Must be None (present for a uniform mixer signature).

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        if cache is not None:
            self.init_cache()
        check_sequence_input(x, self.d_model)
        check_input_dtype(x, self.in_proj.weight.dtype)
        batch, time, _ = x.shape
        frames = lengths_to_frames(lengths, batch, time, x.device)
        scale = 0.5 if self.combine == "mean" else 1.0
        path = sequence_path(self.backend, x, self.d_state)
        self.kernels_used = path
        if path == "triton":
            inference = not needs_gradient(x, self.parameters())
            return zero_padding(
                self._both_directions_triton(x, frames, scale, inference),
                frames,
            )
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        if path == "mamba_ssm":
            y = self._both_directions_cuda(x_in, z, frames, scale)
        else:
            forward = self._scan_direction(x_in, z, "", frames)
            backward = self._scan_direction(x_in, z, "_b", frames, reverse=True)
            y = (forward + backward) * scale
        return zero_padding(self.out_proj(y), frames)

    def _lean(self, inference: bool) -> bool:
        """Whether this Triton call recomputes activations in backward
        instead of keeping them (``low_memory``)."""
        return self.low_memory in (True, "auto") and not inference

    def _both_directions_triton(
        self,
        x: torch.Tensor,
        frames: Optional[torch.Tensor],
        scale: float,
        inference: bool,
    ) -> torch.Tensor:
        """The whole layer on the fused Triton kernels: one convolution
        kernel (causal + anti-causal), one scan of both directions with
        gating and combination inside (the inference kernel without
        gradients); no reversed copies. With ``low_memory`` the layer is one
        autograd function that keeps only its input
        (:mod:`speechbrain_mamba.ops.triton.bimamba_layer`). x:
        [batch, time, d_model]; returns the output projection of
        ``scale * (y_forward + y_backward)``, [batch, time, d_model].
        """
        frames = self._kernel_frames(x, frames)
        conv_bias = [self.conv1d.bias, self.conv1d_b.bias]
        if conv_bias[0] is None:
            conv_bias = [x.new_zeros(self.d_inner, dtype=torch.float32)] * 2
        weights = (
            self.in_proj.weight, self.in_proj.bias,
            self.conv1d.weight, conv_bias[0],
            self.conv1d_b.weight, conv_bias[1],
            self.x_proj.weight, self.x_proj_b.weight,
            self.dt_proj.weight, self.dt_proj_b.weight,
        )  # fmt: skip
        sizes = (self.d_inner, self.dt_rank, self.d_state)
        A, D, delta_bias = self._scan_parameters_for(inference)
        if self._lean(inference):
            return BiMambaLayerFunction.apply(
                x, frames, sizes, scale, A, D, delta_bias,
                self.out_proj.weight, self.out_proj.bias, *weights,
            )  # fmt: skip
        projections = None
        if inference:
            dtype = linear_dtype(x, self.x_proj.weight)
            projections = self._kept_for_inference(
                ("projections", dtype),
                weights[6:],
                lambda: tuple(
                    w.to(dtype)
                    for w in both_projections(*weights[6:], self.d_state)
                ),
            )
        u, delta_raw, z, *BC = bimamba_scan_inputs(
            x, frames, sizes, *weights, projections=projections
        )
        scan = bidirectional_scan_inference if inference else bidirectional_scan
        y = scan(
            ScanInputs(u, delta_raw, z, A, *BC, D, delta_bias, frames), scale
        )
        return self.out_proj(y)

    def _both_directions_cuda(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        frames: Optional[torch.Tensor],
        scale: float,
    ) -> torch.Tensor:
        """Both directions in one conv and one mamba_ssm selective-scan call.

        The backward direction becomes d_inner extra channels holding the
        (per-item) reversed sequence, with its own B/C as a second group of
        the scan (:mod:`speechbrain_mamba.nnet.bimamba_inner`). x, z:
        [batch, time, d_inner]; returns ``scale`` times the sum of the two
        gated directions, [batch, time, d_inner].
        """
        conv_bias = None
        if self.conv1d.bias is not None:
            conv_bias = torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        conv_silu = (
            causal_conv1d_silu
            if cuda_kernels().causal_conv1d_fn is not None
            else torch_conv1d_silu
        )
        conv_weight = torch.cat([self.conv1d.weight, self.conv1d_b.weight], 0)
        A, D, delta_bias = self._scan_parameters()
        projections = (
            (self.x_proj.weight, self.x_proj_b.weight),
            (self.dt_proj.weight, self.dt_proj_b.weight),
        )
        sizes = (self.d_inner, self.dt_rank, self.d_state)
        u, delta, B, C, gate = prepare_scan_inputs(
            x, z, frames, conv_weight, conv_bias, *projections, sizes,
            conv_silu,
        )  # fmt: skip
        y = cuda_kernels().selective_scan_fn(
            u, delta, A, B, C, D, z=gate, delta_bias=delta_bias,
            delta_softplus=True,
        ).transpose(1, 2)  # fmt: skip
        both = y[..., : self.d_inner] + reverse_valid(
            y[..., self.d_inner :], frames
        )
        return both * scale if scale != 1.0 else both

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return (
            f"{super().extra_repr()}, combine={self.combine}, "
            f"low_memory={self.low_memory}"
        )
