"""Span masking for masked-prediction pretraining (HuBERT / wav2vec 2.0).

Each utterance gets ``max(min_masks, int(mask_prob * frames / span + u))``
span starts (``u`` uniform in [0, 1)), drawn without replacement among its
valid frames; every start masks ``span`` consecutive frames. Spans may
overlap, so about half of the frames end up masked with HuBERT's setting
``mask_prob=0.8, span=10``. Padded frames are never masked.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch


def span_mask(
    frames: torch.Tensor,
    time: int,
    mask_prob: float = 0.65,
    span: int = 10,
    min_masks: int = 1,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draws a span mask for a padded batch.

    Arguments
    ---------
    frames : torch.Tensor
        Valid frames per utterance, ``[B]`` (long).
    time : int
        Padded number of frames.
    mask_prob : float
        Sets the number of spans, ``mask_prob * frames / span`` (HuBERT's
        definition); as spans overlap, fewer frames than ``mask_prob`` are
        masked.
    span : int
        Length of each masked span, in frames.
    min_masks : int
        Fewest spans per utterance.
    generator : torch.Generator, optional
        CPU generator for reproducible masks.

    Returns
    -------
    torch.Tensor
        ``[B, time]`` bool, True on masked frames (never on padding). An
        utterance shorter than two frames is not masked.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = span_mask(torch.tensor([100, 40]), 100, 0.5, 5, generator=g)
    >>> mask.shape, bool(mask[1, 40:].any())
    (torch.Size([2, 100]), False)
    >>> 0.2 < mask[0].float().mean().item() < 0.5
    True
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    frames = frames.detach().cpu().long()
    mask = torch.zeros(len(frames), time, dtype=torch.bool)
    if mask_prob == 0.0:
        return mask
    for b, n in enumerate(frames.tolist()):
        n = min(int(n), time)
        if n < 2:
            continue
        width = min(span, n - 1)  # always leave at least one frame visible
        draw = float(torch.rand((), generator=generator))
        count = int(mask_prob * n / width + draw)
        starts_available = n - width + 1
        count = min(max(count, min_masks), starts_available)
        starts = torch.randperm(starts_available, generator=generator)[:count]
        offsets = torch.arange(width)
        positions = (starts[:, None] + offsets[None, :]).reshape(-1)
        mask[b, positions] = True
    return mask
