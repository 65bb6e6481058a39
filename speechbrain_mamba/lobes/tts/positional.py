"""Sinusoidal positional encodings with a learnable scale, indexed by explicit
positions (each segment of a packed sequence counts from 0).

Author
------
speechbrain-mamba developers
"""

import math

import torch
from torch import nn


class ScaledSinusoidalPositions(nn.Module):
    """Adds ``alpha * PE(position)`` to a sequence (VALL-E's positional
    encoding: sines and cosines with a learnable scale ``alpha``).

    Positions are given explicitly, so that a text segment and an audio
    segment packed into one sequence each count from 0, and a decoding step
    gets the position of the frame it adds.

    Arguments
    ---------
    d_model : int
        Feature size (even).
    max_period : float
        Longest wavelength of the sinusoids.
    learnable_scale : bool
        Learn ``alpha`` (initialised to 1); otherwise it stays 1.

    Example
    -------
    >>> pos = ScaledSinusoidalPositions(8)
    >>> x = torch.zeros(2, 5, 8)
    >>> y = pos(x, torch.arange(5).expand(2, 5))
    >>> y.shape
    torch.Size([2, 5, 8])
    >>> torch.allclose(y[0, 3], pos(x[:, :1], torch.full((2, 1), 3))[0, 0])
    True
    """

    def __init__(
        self,
        d_model: int,
        max_period: float = 10000.0,
        learnable_scale: bool = True,
    ):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"d_model must be even, got {d_model}")
        half = d_model // 2
        inv_freq = torch.exp(
            -math.log(max_period) * torch.arange(half).float() / half
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.alpha = nn.Parameter(torch.ones(1), requires_grad=learnable_scale)

    def encoding(self, positions: torch.Tensor) -> torch.Tensor:
        """The sinusoids of ``positions`` ([...]) -> [..., d_model] fp32."""
        angles = positions.float()[..., None] * self.inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Adds the scaled encoding of ``positions`` ([batch, time]) to x.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        positions : torch.Tensor
            Integer positions, [batch, time] (or broadcastable).

        Returns
        -------
        torch.Tensor
            Same shape and dtype as x.
        """
        return x + (self.alpha * self.encoding(positions)).to(x.dtype)
