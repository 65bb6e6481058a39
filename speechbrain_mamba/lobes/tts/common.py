"""Helpers shared by the AR and NAR codec language models: backbone
choice and its defaults, frame counts from relative lengths, attention
masks.

Author
------
speechbrain-mamba developers
"""

from typing import Optional, Tuple

import torch

from speechbrain_mamba.nnet.padding import check_relative_lengths
from speechbrain_mamba.utils.value_checks import check_once

#: Sequence models the codec language models can be built on.
BACKBONES = ("transformer", "mamba")

#: Target value ignored by the losses and metrics.
IGNORE_INDEX = -100


def check_backbone(backbone: str) -> str:
    """Returns ``backbone`` or raises a ValueError naming the choices.

    Arguments
    ---------
    backbone : str
        "transformer" (VALL-E) or "mamba" (VALL-M).

    Returns
    -------
    str

    Example
    -------
    >>> check_backbone("mamba")
    'mamba'
    """
    if backbone not in BACKBONES:
        raise ValueError(
            f"backbone must be one of {BACKBONES}, got {backbone!r}"
        )
    return backbone


def backbone_defaults(
    backbone: str,
    d_model: int,
    positional: Optional[bool] = None,
    d_ffn: Optional[int] = None,
) -> Tuple[bool, int]:
    """Checks ``backbone`` and fills the options whose default depends on
    it: sinusoidal positions for the Transformer only (Mamba is ordered by
    its scan) and a feed-forward size of ``4 * d_model``.

    Arguments
    ---------
    backbone : str
        "transformer" (VALL-E) or "mamba" (VALL-M).
    d_model : int
        Model width.
    positional : bool, optional
        Given value, or None for the backbone's default.
    d_ffn : int, optional
        Given value, or None for ``4 * d_model``.

    Returns
    -------
    positional : bool
    d_ffn : int

    Example
    -------
    >>> backbone_defaults("mamba", 16)
    (False, 64)
    >>> backbone_defaults("transformer", 16, d_ffn=32)
    (True, 32)
    """
    check_backbone(backbone)
    if positional is None:
        positional = backbone == "transformer"
    if d_ffn is None:
        d_ffn = 4 * d_model
    return positional, d_ffn


def frames_of(
    lengths: Optional[torch.Tensor], batch: int, time: int, device=None
) -> torch.Tensor:
    """Valid frames per item from SpeechBrain relative lengths.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths in (0, 1], [batch]; None means all ``time`` frames.
    batch : int
        Batch size.
    time : int
        Padded length.
    device : torch.device, optional
        Device of the result when lengths is None.

    Returns
    -------
    torch.Tensor
        Long tensor [batch].

    Example
    -------
    >>> frames_of(torch.tensor([1.0, 0.5]), 2, 4)
    tensor([4, 2])
    >>> frames_of(None, 2, 3)
    tensor([3, 3])
    """
    if lengths is None:
        return torch.full((batch,), time, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,):
        raise ValueError(
            f"lengths must be a tensor of shape [batch={batch}], got "
            f"{getattr(lengths, 'shape', type(lengths))}"
        )
    if not torch.is_floating_point(lengths):
        raise ValueError(
            "lengths must be relative lengths in (0, 1] (float), got dtype "
            f"{lengths.dtype}"
        )
    check_once(lengths, "relative lengths", check_relative_lengths)
    return torch.round(lengths.float() * time).long().clamp(1, time)


def check_tokens(tokens: torch.Tensor, name: str, high: int, dims: int):
    """Raises ValueError unless ``tokens`` is an integer tensor of ``dims``
    dimensions with values in [0, high).

    Arguments
    ---------
    tokens : torch.Tensor
        The tensor to check.
    name : str
        Its name in the error message.
    high : int
        Exclusive upper bound of the values.
    dims : int
        Expected number of dimensions.

    Example
    -------
    >>> check_tokens(torch.tensor([[1, 2]]), "codes", 4, 2)
    >>> check_tokens(torch.tensor([[1, 5]]), "codes", 4, 2)
    Traceback (most recent call last):
    ...
    ValueError: codes must hold values in [0, 4), got values in [1, 5]
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != dims:
        raise ValueError(
            f"{name} must be a {dims}-D tensor, got "
            f"{tuple(getattr(tokens, 'shape', ()))}"
        )
    if torch.is_floating_point(tokens) or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be integer, got dtype {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= high):
        raise ValueError(
            f"{name} must hold values in [0, {high}), got values in "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )


def prefix_lm_mask(
    prefix_frames: torch.Tensor, total_frames: torch.Tensor, time: int
) -> torch.Tensor:
    """Attention mask of a packed ``[text ; audio]`` sequence: text frames
    see all text frames (bidirectional), audio frames see the text and the
    audio frames up to themselves (causal); padding is never attended to.

    Arguments
    ---------
    prefix_frames : torch.Tensor
        Text frames of each item, [batch].
    total_frames : torch.Tensor
        Text + audio frames of each item, [batch].
    time : int
        Length of the packed sequence.

    Returns
    -------
    torch.Tensor
        Boolean [batch, time, time], True where a query attends to a key.

    Example
    -------
    >>> prefix_lm_mask(torch.tensor([2]), torch.tensor([4]), 4)[0].int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    device = prefix_frames.device
    q = torch.arange(time, device=device)[None, :, None]
    k = torch.arange(time, device=device)[None, None, :]
    prefix = prefix_frames[:, None, None]
    allowed = torch.where(q < prefix, k < prefix, k <= q)
    return allowed & (k < total_frames[:, None, None])


def padding_mask(total_frames: torch.Tensor, time: int) -> torch.Tensor:
    """Full-context attention mask that hides the padding keys.

    Arguments
    ---------
    total_frames : torch.Tensor
        Valid frames of each item, [batch].
    time : int
        Padded length.

    Returns
    -------
    torch.Tensor
        Boolean [batch, time, time].

    Example
    -------
    >>> padding_mask(torch.tensor([2]), 3)[0].int()
    tensor([[1, 1, 0],
            [1, 1, 0],
            [1, 1, 0]], dtype=torch.int32)
    """
    k = torch.arange(time, device=total_frames.device)[None, None, :]
    return (k < total_frames[:, None, None]).expand(-1, time, -1)
