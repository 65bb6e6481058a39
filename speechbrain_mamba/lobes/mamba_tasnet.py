"""Mamba-TasNet mask network for time-domain speech separation.

Mamba-TasNet (Jiang et al., 2024, "Speech Slytherin") keeps the TasNet
encoder / mask / decoder pipeline and replaces the masking network by a single
stack of bidirectional Mamba blocks that runs over the *whole* encoded
sequence (no chunking). The mask network is

    channel-wise LayerNorm -> 1x1 conv bottleneck
    -> N pre-norm residual bidirectional Mamba blocks (RMSNorm, no FFN)
    -> final norm -> 1x1 conv to ``num_spks * in_channels`` -> ReLU masks

It has the call contract of SpeechBrain's ``Dual_Path_Model``: it takes the
output of :class:`speechbrain.lobes.models.dual_path.Encoder` (``[B, N, L]``)
and returns one mask per speaker (``[num_spks, B, N, L]``), so SpeechBrain's
``Encoder`` / ``Decoder``, its separation recipes and its
``SepformerSeparation`` inference interface work unchanged.

The paper sizes XS, S, M and L are in :data:`MAMBA_TASNET_SIZES` (the
model YAML files ``hparams/separation/mamba_tasnet_<size>.yaml`` and the
benchmarks use them; tests check the YAML files against it).

On a GPU the mask network replays CUDA graphs by itself (``cuda_graphs``),
in training (forward and backward) and inference alike: every operation of
the mask network over time respects the valid lengths (the norms and 1x1
convolutions act on each frame; the Mamba blocks take the lengths), so the
time axis is padded up to a bucket
(:func:`~speechbrain_mamba.utils.graphed_inference.bucket_length`, less
than 12.5 % more frames) without changing any valid output or gradient, and
each bucket's call is recorded once
(:class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`;
:meth:`MambaTasNetMaskNet.bucketed_forward` is that padded call, eager).
This works inside SpeechBrain's own ``Brain.fit_batch`` and inference
classes, with no option to set.

Author
------
speechbrain-mamba developers
"""

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_mamba.nnet import MambaStack
from speechbrain_mamba.nnet.padding import check_input_dtype
from speechbrain_mamba.utils.bucketed_graphs import (
    BucketedGraphs,
    SelfGraphedModule,
)

MASK_ACTIVATIONS = ("relu", "softmax")


class MambaTasNetSize(NamedTuple):
    """One paper size of Mamba-TasNet (encoder kernel 16 / stride 8,
    ``d_state`` 16, ``expand`` 2, ``d_conv`` 4).

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> size = MAMBA_TASNET_SIZES["XS"]
    >>> model = nn.ModuleList([
    ...     Encoder(kernel_size=16, out_channels=size.channels),
    ...     MambaTasNetMaskNet(size.channels, num_layers=size.num_layers),
    ...     Decoder(size.channels, 1, kernel_size=16, stride=8, bias=False),
    ... ])
    >>> params = sum(p.numel() for p in model.parameters())
    >>> round(params / 1e6, 1) == size.params_m
    True
    """

    #: Encoder filters = width of the Mamba stack (``in_channels`` and
    #: ``out_channels`` of :class:`MambaTasNetMaskNet`).
    channels: int
    #: Mamba blocks (``num_layers``).
    num_layers: int
    #: Parameters in millions, encoder and decoder included.
    params_m: float


#: The sizes of the Speech Slytherin paper.
MAMBA_TASNET_SIZES = {
    "XS": MambaTasNetSize(128, 16, 2.2),
    "S": MambaTasNetSize(256, 16, 7.9),
    "M": MambaTasNetSize(256, 32, 15.6),
    "L": MambaTasNetSize(512, 32, 59.6),
}


class MambaTasNetMaskNet(SelfGraphedModule):
    """Mask network of Mamba-TasNet (drop-in for ``Dual_Path_Model``).

    Arguments
    ---------
    in_channels : int
        Number of encoder filters ``N`` (channels of the input and the masks).
    out_channels : int, optional
        Width of the Mamba stack (bottleneck). Defaults to ``in_channels``.
    num_layers : int
        Number of pre-norm residual Mamba blocks.
    num_spks : int
        Number of speakers (masks).
    d_state : int
        SSM state size of each Mamba mixer.
    d_conv : int
        Kernel size of the depthwise causal convolution of each mixer.
    expand : int
        Expansion factor of the mixers' inner width.
    bidirectional : bool
        If True, uses bidirectional ("bimamba v2") mixers.
    norm : str
        Normalisation inside the blocks, ``"rmsnorm"`` or ``"layernorm"``.
    norm_eps : float
        Epsilon of the block normalisations.
    residual_in_fp32 : bool
        Keeps the residual stream in float32 under mixed precision.
    drop_path : float
        Stochastic-depth rate of the blocks.
    mask_activation : str
        ``"relu"`` (paper) or ``"softmax"`` (over speakers).
    layer_norm_eps : float
        Epsilon of the input channel-wise LayerNorm.
    cuda_graphs : bool
        Replays calls on CUDA from CUDA graphs that the mask network
        records itself, one per (batch, bucket of the length, dtype,
        autocast, training or inference) key, the first call of a key
        recording it: training steps (forward, and backward through
        autograd, gradients accumulated into ``.grad`` as usual) and
        inference (``eval()`` with ``torch.no_grad`` or
        ``torch.inference_mode``). Same outputs and gradients as the eager
        call (each graph's kernels are the eager ones), without the host's
        per-kernel launch cost. The graphs read the parameters by address:
        in-place updates (optimizer steps) are seen, replaced parameters
        make the next call record again. Eager instead: on CPU, while
        training with ``drop_path``, under DDP (several processes), while
        forward hooks watch a layer, beyond the limits below. False: every
        call is eager.
    max_cuda_graphs : int
        Most inference graphs kept; calls of other keys run eagerly. The
        graphs share one memory pool (about one eager call's activations)
        and each keeps its input and masks buffers.
    max_training_graphs : int
        Most training graph pairs kept (other keys train eagerly): a
        training set of 2-8 s utterances in batches of one size needs
        about 16 buckets, crops of one length a single one. They share one
        memory pool for their activations and one set of gradient buffers.
    **mixer_kwargs : dict
        Further arguments of :class:`speechbrain_mamba.nnet.Mamba`
        (e.g. ``dt_min``, ``dt_max``, ``backend``).

    Example
    -------
    >>> masknet = MambaTasNetMaskNet(16, num_layers=2, num_spks=2)
    >>> masks = masknet(torch.rand(3, 16, 50))
    >>> masks.shape
    torch.Size([2, 3, 16, 50])
    >>> bool((masks >= 0).all())
    True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        num_layers: int = 16,
        num_spks: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = True,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        mask_activation: str = "relu",
        layer_norm_eps: float = 1e-8,
        cuda_graphs: bool = True,
        max_cuda_graphs: int = 16,
        max_training_graphs: int = 16,
        **mixer_kwargs,
    ):
        super().__init__()
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(
                f"mask_activation must be one of {MASK_ACTIVATIONS}, "
                f"got {mask_activation!r}"
            )
        if num_spks < 1:
            raise ValueError(f"num_spks must be >= 1, got {num_spks}")
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_spks = num_spks
        self.mask_activation = mask_activation
        self.init_cuda_graphs(
            cuda_graphs,
            max_cuda_graphs,
            max_training_graphs,
            plain_training=drop_path > 0,
        )

        # Per-frame normalisation over the encoder channels.
        self.layer_norm = nn.LayerNorm(in_channels, eps=layer_norm_eps)
        self.bottleneck_conv1x1 = nn.Conv1d(
            in_channels, out_channels, kernel_size=1, bias=False
        )
        self.mamba_net = MambaStack(
            out_channels,
            num_layers,
            bidirectional=bidirectional,
            norm=norm,
            norm_eps=norm_eps,
            residual_in_fp32=residual_in_fp32,
            drop_path=drop_path,
            final_norm=True,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            **mixer_kwargs,
        )
        self.mask_conv1x1 = nn.Conv1d(
            out_channels, num_spks * in_channels, kernel_size=1, bias=False
        )

    def forward(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Estimates one mask per speaker.

        Arguments
        ---------
        x : torch.Tensor
            Encoded mixture, ``[B, N, L]`` (``N == in_channels``).
        lengths : torch.Tensor, optional
            Relative valid lengths in (0, 1], ``[B]``. With ReLU masks, the
            masks of padded frames are zero.

        Returns
        -------
        torch.Tensor
            Masks, ``[num_spks, B, N, L]``.
        """
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                "MambaTasNetMaskNet expects the encoder output [B, N, L] with "
                f"N={self.in_channels}, got shape {tuple(x.shape)}"
            )
        batch, channels, time = x.shape
        if time == 0:
            raise ValueError(
                "MambaTasNetMaskNet got an encoder output with 0 frames "
                f"(shape {tuple(x.shape)}); is the mixture shorter than the "
                "encoder's kernel?"
            )
        check_input_dtype(x, self.bottleneck_conv1x1.weight.dtype)
        if not self.uses_cuda_graphs():
            return self._masks(x, lengths)
        return self._graphs()(x, lengths)

    def _graphs(self) -> BucketedGraphs:
        return self.cuda_graph_calls(self._masks, time_dim=2, output_time_dim=3)

    def bucketed_forward(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The eager call that the CUDA graphs record: x padded along time
        up to its bucket, with its valid lengths, then cut back.

        Arguments
        ---------
        x : torch.Tensor
            Encoded mixture, ``[B, N, L]``.
        lengths : torch.Tensor, optional
            Relative valid lengths in (0, 1], ``[B]``.

        Returns
        -------
        torch.Tensor
            Masks, ``[num_spks, B, N, L]``, those of :meth:`forward`.

        Example
        -------
        >>> masknet = MambaTasNetMaskNet(8, num_layers=1, d_state=4).eval()
        >>> x = torch.rand(2, 8, 17)  # padded to 18 frames
        >>> torch.allclose(masknet.bucketed_forward(x), masknet(x), atol=1e-6)
        True
        """
        return self._graphs().padded_call(x, lengths)

    def _masks(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The mask network on a checked input ``[B, N, L]``."""
        batch, channels, time = x.shape
        y = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        y = self.bottleneck_conv1x1(y)
        y = self.mamba_net(y.transpose(1, 2), lengths=lengths)
        scores = self.mask_conv1x1(y.transpose(1, 2))
        scores = scores.view(batch, self.num_spks, channels, time)
        if self.mask_activation == "relu":
            masks = F.relu(scores)
        else:
            masks = F.softmax(scores, dim=1)
        return masks.transpose(0, 1)
