"""Packing of two padded segments (text, audio) into one right-padded
sequence per item, and back.

Models over ``[phonemes ; audio]`` must not leave the text padding between
the two segments: a recurrent scan would run through it and the positions
of the audio frames would depend on the batch. Packing puts each item's
valid audio frames right after its valid text frames.

Author
------
speechbrain-mamba developers
"""

from typing import Tuple

import torch


def pack_segments(
    first: torch.Tensor,
    first_frames: torch.Tensor,
    second: torch.Tensor,
    second_frames: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenates the valid frames of two padded batches item by item.

    Arguments
    ---------
    first : torch.Tensor
        [batch, time1, ...].
    first_frames : torch.Tensor
        Valid frames of each item of ``first``, [batch] (long).
    second : torch.Tensor
        [batch, time2, ...], same trailing shape as ``first``.
    second_frames : torch.Tensor
        Valid frames of each item of ``second``, [batch] (long).

    Returns
    -------
    packed : torch.Tensor
        [batch, max(first_frames + second_frames), ...], zero after each
        item's end.
    total_frames : torch.Tensor
        ``first_frames + second_frames``.

    Example
    -------
    >>> a = torch.tensor([[1, 2, 0], [3, 0, 0]])
    >>> b = torch.tensor([[7, 8], [9, 9]])
    >>> packed, total = pack_segments(a, torch.tensor([2, 1]), b,
    ...                               torch.tensor([1, 2]))
    >>> packed
    tensor([[1, 2, 7],
            [3, 9, 9]])
    """
    if first.shape[0] != second.shape[0] or first.shape[2:] != second.shape[2:]:
        raise ValueError(
            "segments must share batch size and feature shape, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    time1 = first.shape[1]
    total = first_frames + second_frames
    time = int(total.max())
    joined = torch.cat([first, second], dim=1)
    positions = torch.arange(time, device=first.device)[None, :]
    source = torch.where(
        positions < first_frames[:, None],
        positions,
        time1 + positions - first_frames[:, None],
    ).clamp(0, joined.shape[1] - 1)
    index = source.view(*source.shape, *([1] * (joined.dim() - 2)))
    packed = torch.gather(joined, 1, index.expand(-1, -1, *joined.shape[2:]))
    valid = positions < total[:, None]
    valid = valid.view(*valid.shape, *([1] * (joined.dim() - 2)))
    return packed * valid.to(packed.dtype), total


def unpack_second(
    packed: torch.Tensor, first_frames: torch.Tensor, time2: int
) -> torch.Tensor:
    """Extracts the second segment of a packed sequence.

    Arguments
    ---------
    packed : torch.Tensor
        [batch, time, ...] from :func:`pack_segments`.
    first_frames : torch.Tensor
        Valid frames of the first segment, [batch].
    time2 : int
        Padded length of the second segment to return.

    Returns
    -------
    torch.Tensor
        [batch, time2, ...]; frames past the packed sequence are zero.

    Example
    -------
    >>> packed = torch.tensor([[1, 2, 7], [3, 9, 9]])
    >>> unpack_second(packed, torch.tensor([2, 1]), 2)
    tensor([[7, 0],
            [9, 9]])
    """
    time = packed.shape[1]
    positions = torch.arange(time2, device=packed.device)[None, :]
    source = first_frames[:, None] + positions
    inside = source < time
    index = source.clamp(max=time - 1)
    index = index.view(*index.shape, *([1] * (packed.dim() - 2)))
    out = torch.gather(packed, 1, index.expand(-1, -1, *packed.shape[2:]))
    inside = inside.view(*inside.shape, *([1] * (packed.dim() - 2)))
    return out * inside.to(out.dtype)
