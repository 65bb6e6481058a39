"""A Transformer mask network with the interface of Mamba-TasNet's, the
attention baseline for the reconstruction tasks (separation, enhancement)
and for the layer-wise MI comparison.

    channel-wise LayerNorm -> 1x1 conv bottleneck -> + sinusoidal positions
    -> N pre-norm Transformer encoder layers -> final LayerNorm
    -> 1x1 conv to ``num_spks * in_channels`` -> ReLU masks

Like :class:`~speechbrain_mamba.lobes.mamba_tasnet.MambaTasNetMaskNet`, it
takes the encoder output ``[B, N, L]`` and returns ``[num_spks, B, N, L]``,
so it drops into the separation and enhancement recipes as ``MaskNet``; its
layers are ``encoder.layers.*``. Full self-attention over the whole encoded
sequence costs ``O(L^2)`` memory: keep training segments short.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.lobes.models.transformer.Transformer import (
    PositionalEncoding,
    TransformerEncoder,
)

from speechbrain_mamba.nnet.padding import lengths_to_frames, valid_mask


class TransformerMaskNet(nn.Module):
    """Transformer mask network (see the module docstring).

    Arguments
    ---------
    in_channels : int
        Encoder filters ``N``.
    out_channels : int, optional
        Model width (default ``in_channels``).
    num_layers : int
        Transformer layers.
    num_spks : int
        Number of masks.
    nhead : int
        Attention heads.
    d_ffn : int, optional
        Feed-forward width (default ``4 * out_channels``).
    dropout : float
        Dropout in the layers.
    max_len : int
        Longest sequence of the positional encoding.

    Example
    -------
    >>> net = TransformerMaskNet(16, num_layers=2, num_spks=1, nhead=2)
    >>> net(torch.rand(3, 16, 40)).shape
    torch.Size([1, 3, 16, 40])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        num_layers: int = 8,
        num_spks: int = 2,
        nhead: int = 8,
        d_ffn: Optional[int] = None,
        dropout: float = 0.0,
        max_len: int = 100000,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if num_spks < 1:
            raise ValueError(f"num_spks must be >= 1, got {num_spks}")
        self.in_channels = in_channels
        self.num_spks = num_spks
        self.layer_norm = nn.LayerNorm(in_channels)
        self.bottleneck_conv1x1 = nn.Conv1d(
            in_channels, out_channels, 1, bias=False
        )
        self.pos = PositionalEncoding(out_channels, max_len=max_len)
        self.encoder = TransformerEncoder(
            num_layers,
            nhead,
            d_ffn or 4 * out_channels,
            d_model=out_channels,
            dropout=dropout,
            activation=nn.GELU,
            normalize_before=True,
        )
        self.mask_conv1x1 = nn.Conv1d(
            out_channels, num_spks * in_channels, 1, bias=False
        )

    def forward(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Estimates the masks.

        Arguments
        ---------
        x : torch.Tensor
            Encoded mixture ``[B, N, L]``.
        lengths : torch.Tensor, optional
            Relative lengths ``[B]``: padded frames are not attended to and
            get zero masks.

        Returns
        -------
        torch.Tensor
            ``[num_spks, B, N, L]``.
        """
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                "TransformerMaskNet expects the encoder output [B, N, L] with "
                f"N={self.in_channels}, got shape {tuple(x.shape)}"
            )
        batch, channels, time = x.shape
        y = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        y = self.bottleneck_conv1x1(y).transpose(1, 2)
        y = y + self.pos(y)
        padding = None
        frames = lengths_to_frames(lengths, batch, time, x.device)
        if frames is not None:
            padding = ~valid_mask(frames, time)
        y, _ = self.encoder(y, src_key_padding_mask=padding)
        scores = self.mask_conv1x1(y.transpose(1, 2))
        masks = F.relu(scores.view(batch, self.num_spks, channels, time))
        if padding is not None:
            masks = masks.masked_fill(padding[:, None, None, :], 0.0)
        return masks.transpose(0, 1)
