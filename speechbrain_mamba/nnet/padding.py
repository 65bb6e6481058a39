"""Padding helpers for SpeechBrain's relative lengths.

SpeechBrain describes a padded batch by relative lengths in (0, 1] (like
``wav_lens``): item ``b`` has ``round(lengths[b] * time)`` valid frames at
the start of the sequence. The helpers here turn those into frame counts
and masks, and reverse each item within its own valid frames, which is how
the backward direction of a bidirectional scan starts at an item's true
last frame rather than inside the padding.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch

from speechbrain_mamba.utils.per_tensor_cache import cached_per_tensor
from speechbrain_mamba.utils.value_checks import check_once


def check_sequence_input(x: torch.Tensor, d_model: int, name: str = "x"):
    """Raises ValueError unless x is a float [batch, time, d_model] tensor.

    Arguments
    ---------
    x : torch.Tensor
        The input to check.
    d_model : int
        Expected feature size.
    name : str
        Name used in the error message.

    Example
    -------
    >>> check_sequence_input(torch.zeros(2, 5, 8), 8)
    >>> check_sequence_input(torch.zeros(5, 8), 8)
    Traceback (most recent call last):
    ...
    ValueError: x must be [batch, time, d_model=8], got shape (5, 8)
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x)}")
    if x.dim() != 3:
        raise ValueError(
            f"{name} must be [batch, time, d_model={d_model}], got shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[-1] != d_model:
        raise ValueError(
            f"{name} has feature size {x.shape[-1]} but the layer expects "
            f"d_model={d_model} (shape {tuple(x.shape)}, expected "
            "[batch, time, d_model])"
        )
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}"
        )


def check_input_dtype(
    x: torch.Tensor, expected: torch.dtype, name: str = "x"
) -> None:
    """Raises ValueError unless the layer can compute with x's dtype.

    Outside autocast, the input must have the dtype of the layer's
    parameters (float32 layers take float32; a layer converted with
    ``.double()`` or ``.half()`` takes float64 or float16). Under autocast,
    any float32/float16/bfloat16 input is fine (autocast casts it), but
    autocast leaves float64 alone, so float64 needs a float64 layer.

    Arguments
    ---------
    x : torch.Tensor
        The input to check.
    expected : torch.dtype
        The dtype of the layer's parameters.
    name : str
        Name used in the error message.

    Example
    -------
    >>> check_input_dtype(torch.zeros(2), torch.float32)
    >>> check_input_dtype(torch.zeros(2, dtype=torch.float64), torch.float32)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: x has dtype torch.float64 but the layer's parameters are ...
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     check_input_dtype(torch.zeros(2), torch.float32)
    """
    if x.dtype == expected:
        return
    if torch.is_autocast_enabled(x.device.type) and torch.float64 not in (
        x.dtype,
        expected,
    ):
        return
    raise ValueError(
        f"{name} has dtype {x.dtype} but the layer's parameters are "
        f"{expected}; pass {expected} input (x.to({expected})), convert the "
        f"layer (layer.to({x.dtype})), or run float32 input under "
        "torch.autocast for float16/bfloat16 compute"
    )


def check_relative_lengths(lengths: torch.Tensor) -> None:
    """Raises ValueError unless every relative length is a finite number in
    (0, 1].

    A NaN compares False with everything, so the range test is written as
    "inside" (and negated), which rejects NaN; infinities are outside.

    Arguments
    ---------
    lengths : torch.Tensor
        Relative lengths, [batch].

    Example
    -------
    >>> check_relative_lengths(torch.tensor([1.0, 0.3]))
    >>> check_relative_lengths(torch.tensor([0.0]))
    Traceback (most recent call last):
    ...
    ValueError: lengths must be relative lengths in (0, 1], got values [0.0]
    >>> check_relative_lengths(torch.tensor([1.0, float("nan")]))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: lengths must be finite ... infinite values: [1.0, nan]
    """
    inside = (lengths > 0) & (lengths <= 1 + 1e-6)
    if bool(inside.all()):
        return
    if not bool(torch.isfinite(lengths).all()):
        raise ValueError(
            "lengths must be finite relative lengths in (0, 1], got NaN or "
            f"infinite values: {lengths.tolist()}"
        )
    raise ValueError(
        "lengths must be relative lengths in (0, 1], got values "
        f"{lengths.tolist()}"
    )


def lengths_to_frames(
    lengths: Optional[torch.Tensor],
    batch: int,
    time: int,
    device: Optional[torch.device] = None,
) -> Optional[torch.Tensor]:
    """Converts relative lengths to numbers of valid frames.

    Arguments
    ---------
    lengths : torch.Tensor or None
        Relative lengths in (0, 1], shape [batch].
    batch : int
        Batch size of the sequence.
    time : int
        Padded length of the sequence.
    device : torch.device, optional
        Where the frames go (the sequence's device: lengths kept on the
        CPU then work with a sequence on the GPU); default: the lengths'.

    Returns
    -------
    torch.Tensor or None
        Valid frames per item (long, at least 1), or None when lengths is
        None.

    Example
    -------
    >>> lengths_to_frames(torch.tensor([1.0, 0.5]), 2, 10)
    tensor([10,  5])
    >>> lengths_to_frames([1.0, 0.5], 2, 10, torch.device("meta")).device
    device(type='meta')
    """
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"lengths must have shape [batch={batch}], got "
            f"{tuple(lengths.shape)}"
        )
    if not torch.is_floating_point(lengths):
        raise ValueError(
            "lengths must be relative lengths in (0, 1] (a float tensor, "
            f"like wav_lens), got dtype {lengths.dtype}"
        )
    check_once(lengths, "relative lengths", check_relative_lengths)

    def frames_of(relative: torch.Tensor) -> torch.Tensor:
        frames = torch.round(relative.float() * time).long().clamp(1, time)
        return frames if device is None else frames.to(device)

    # every layer of a model gets the same lengths: computed by the first
    return cached_per_tensor(lengths, ("frames", time, device), frames_of)


def valid_mask(frames: torch.Tensor, time: int) -> torch.Tensor:
    """Boolean mask of valid frames.

    Arguments
    ---------
    frames : torch.Tensor
        Valid frames per item, [batch].
    time : int
        Padded length.

    Returns
    -------
    torch.Tensor
        [batch, time], True on valid frames.

    Example
    -------
    >>> valid_mask(torch.tensor([2, 3]), 3).int()
    tensor([[1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    positions = torch.arange(time, device=frames.device)
    return positions[None, :] < frames[:, None]


def reverse_valid(
    x: torch.Tensor, frames: Optional[torch.Tensor]
) -> torch.Tensor:
    """Reverses each item along time within its valid frames.

    Padded frames stay where they are, so the result is still a right-padded
    batch. Applying it twice gives back the input.

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, ...].
    frames : torch.Tensor or None
        Valid frames per item; None reverses the whole time axis.

    Returns
    -------
    torch.Tensor
        Same shape as x.

    Example
    -------
    >>> x = torch.arange(8.0).view(2, 4, 1)
    >>> reverse_valid(x, torch.tensor([4, 2]))[..., 0]
    tensor([[3., 2., 1., 0.],
            [5., 4., 6., 7.]])
    """
    if frames is None:
        return x.flip(1)
    time = x.shape[1]
    positions = torch.arange(time, device=x.device)[None, :]
    source = torch.where(
        positions < frames[:, None], frames[:, None] - 1 - positions, positions
    )
    index = source.view(*source.shape, *([1] * (x.dim() - 2)))
    return torch.gather(x, 1, index.expand_as(x))


def zero_padding(
    x: torch.Tensor, frames: Optional[torch.Tensor]
) -> torch.Tensor:
    """Sets padded frames of a [batch, time, ...] tensor to zero.

    Arguments
    ---------
    x : torch.Tensor
        [batch, time, ...].
    frames : torch.Tensor or None
        Valid frames per item; None returns x unchanged.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> zero_padding(torch.ones(1, 3, 1), torch.tensor([2]))[0, :, 0]
    tensor([1., 1., 0.])
    """
    if frames is None:
        return x
    time, dims, dtype = x.shape[1], x.dim(), x.dtype

    def mask_of(valid: torch.Tensor) -> torch.Tensor:
        mask = valid_mask(valid, time)
        return mask.view(*mask.shape, *([1] * (dims - 2))).to(dtype)

    # the same frames for every layer: one mask per shape and dtype
    return x * cached_per_tensor(frames, ("mask", time, dims, dtype), mask_of)
