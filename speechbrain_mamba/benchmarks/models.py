"""Model pairs of the efficiency study: each Mamba model and its SpeechBrain
transformer peer, built at the sizes of the Speech Slytherin paper.

Author
------
speechbrain-mamba developers
"""

from typing import Callable, Dict, Tuple

import torch
from torch import nn

import speechbrain_mamba  # noqa: F401  (torchaudio compat before speechbrain)


class SeparationPipeline(nn.Module):
    """Encoder -> mask net -> decoder, as in SpeechBrain's separation
    recipes: [batch, samples] -> [batch, samples, num_spks].

    Arguments
    ---------
    masknet : torch.nn.Module
        A mask network with the Dual_Path_Model call contract.
    channels : int
        Encoder filters.
    kernel_size : int
        Encoder kernel (stride is half of it).
    num_spks : int
        Number of sources.

    Example
    -------
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> model = SeparationPipeline(MambaTasNetMaskNet(16, num_layers=1), 16)
    >>> model(torch.randn(2, 800)).shape
    torch.Size([2, 800, 2])
    """

    def __init__(
        self,
        masknet: nn.Module,
        channels: int,
        kernel_size: int = 16,
        num_spks: int = 2,
    ):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        self.encoder = Encoder(kernel_size=kernel_size, out_channels=channels)
        self.masknet = masknet
        self.decoder = Decoder(
            in_channels=channels,
            out_channels=1,
            kernel_size=kernel_size,
            stride=kernel_size // 2,
            bias=False,
        )
        self.num_spks = num_spks

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separates [batch, samples] into [batch, samples, num_spks]."""
        encoded = self.encoder(mix)
        masks = self.masknet(encoded)
        sources = [
            self.decoder(encoded * masks[i]) for i in range(self.num_spks)
        ]
        est = torch.stack(sources, dim=-1)
        samples = mix.shape[-1]
        if est.shape[1] < samples:
            est = nn.functional.pad(est, (0, 0, 0, samples - est.shape[1]))
        return est[:, :samples]


def sepformer(channels: int = 256) -> nn.Module:
    """SpeechBrain's SepFormer (WSJ0-2mix recipe configuration, 25.7M)."""
    from speechbrain.lobes.models.dual_path import (
        Dual_Path_Model,
        SBTransformerBlock,
    )

    def block():
        return SBTransformerBlock(
            num_layers=8,
            d_model=channels,
            nhead=8,
            d_ffn=1024,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )

    masknet = Dual_Path_Model(
        channels,
        channels,
        block(),
        block(),
        num_layers=2,
        norm="ln",
        K=250,
        num_spks=2,
        skip_around_intra=True,
        linear_layer_after_inter_intra=False,
    )
    return SeparationPipeline(masknet, channels)


MAMBA_TASNET_SIZES = {
    "XS": (128, 16),
    "S": (256, 16),
    "M": (256, 32),
    "L": (512, 32),
}


def mamba_tasnet(size: str = "M") -> nn.Module:
    """Mamba-TasNet of a paper size (XS, S, M, L)."""
    from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet

    channels, layers = MAMBA_TASNET_SIZES[size]
    return SeparationPipeline(
        MambaTasNetMaskNet(channels, num_layers=layers), channels
    )


class EncoderOnly(nn.Module):
    """Wraps a SpeechBrain-style encoder returning a tuple."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, frames, d_model] -> [batch, frames, d_model]."""
        return self.encoder(x)[0]


def conformer_encoder(d_model=512, layers=12, d_ffn=2048, heads=8):
    """SpeechBrain's ConformerEncoder (large; RoPE attention on SDPA)."""
    from speechbrain.lobes.models.transformer.Conformer import (
        ConformerEncoder,
    )

    return EncoderOnly(
        ConformerEncoder(
            layers,
            d_model,
            d_ffn,
            heads,
            kernel_size=31,
            attention_type="RoPEMHA",
            dropout=0.0,
        )
    )


def conmamba_encoder(d_model=512, layers=12, d_ffn=2048):
    """This package's ConMamba encoder (large)."""
    from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder

    return EncoderOnly(ConMambaEncoder(layers, d_model, d_ffn, kernel_size=31))


#: task -> (mamba builder, peer builder, input maker(seconds, batch, device),
#: tokens per second of the model's input sequence)
TASKS: Dict[str, Tuple[Callable, Callable, Callable, float]] = {
    "separation": (
        mamba_tasnet,
        sepformer,
        lambda seconds, batch, device: torch.randn(
            batch, int(8000 * seconds), device=device
        ),
        1000.0,
    ),
    "asr": (
        conmamba_encoder,
        conformer_encoder,
        lambda seconds, batch, device: torch.randn(
            batch, int(25 * seconds), 512, device=device
        ),
        25.0,
    ),
}
