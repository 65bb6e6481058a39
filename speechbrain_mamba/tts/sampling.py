"""Sampling of the next token from AR logits: temperature, top-k, top-p
(nucleus), and the output length limits derived from the phoneme count.

Author
------
speechbrain-mamba developers
"""

import math
from typing import Optional

import torch


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the ``k`` largest logits of each row, sets the others to -inf.

    Arguments
    ---------
    logits : torch.Tensor
        [..., vocab].
    k : int
        Tokens to keep; 0 (or >= vocab) keeps all.

    Returns
    -------
    torch.Tensor
        Filtered copy of logits.

    Example
    -------
    >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 2)
    tensor([-inf, 3., 2.])
    """
    if k < 0:
        raise ValueError(f"top_k must be >= 0, got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keeps the smallest set of most likely tokens whose
    probability reaches ``p`` (at least one token), sets the others to -inf.

    Arguments
    ---------
    logits : torch.Tensor
        [..., vocab].
    p : float
        Probability mass in (0, 1]; 1 keeps all.

    Returns
    -------
    torch.Tensor
        Filtered copy of logits.

    Example
    -------
    >>> probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    >>> top_p_filter(probs.log(), 0.75).isfinite()
    tensor([ True,  True, False, False])
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # mass of the tokens ranked before each one: drop a token when the
    # tokens before it already reach p
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draws one token per row.

    Arguments
    ---------
    logits : torch.Tensor
        [batch, vocab].
    temperature : float
        Divides the logits; 0 means greedy (argmax).
    top_k : int
        Sample among the k most likely tokens (0: all).
    top_p : float
        Sample within the nucleus of mass p (1: all).
    generator : torch.Generator, optional
        Random generator (on the logits' device) for reproducible draws.

    Returns
    -------
    torch.Tensor
        [batch] long.

    Example
    -------
    >>> sample_token(torch.tensor([[0.0, 5.0, 1.0]]), temperature=0)
    tensor([1])
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_token(torch.tensor([[0.0, 5.0, 1.0]]), top_k=1, generator=g)
    tensor([1])
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be [batch, vocab], got {tuple(logits.shape)}"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    scaled = top_p_filter(top_k_filter(scaled, top_k), top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def max_output_frames(
    num_phonemes: int,
    frames_per_phoneme: float = 20.0,
    minimum: int = 1,
    maximum: Optional[int] = None,
) -> int:
    """Largest number of frames to generate for a text of ``num_phonemes``.

    Arguments
    ---------
    num_phonemes : int
        Phonemes of the target text (not the prompt's).
    frames_per_phoneme : float
        Upper bound of frames per phoneme (75 Hz EnCodec frames: speech has
        about 6 per phoneme; 20 leaves room for slow speech and pauses).
    minimum : int
        Smallest value returned.
    maximum : int, optional
        Largest value returned.

    Returns
    -------
    int

    Example
    -------
    >>> max_output_frames(10, frames_per_phoneme=15)
    150
    >>> max_output_frames(10, maximum=100)
    100
    """
    if num_phonemes < 0 or frames_per_phoneme <= 0:
        raise ValueError(
            "num_phonemes must be >= 0 and frames_per_phoneme > 0, got "
            f"{num_phonemes} and {frames_per_phoneme}"
        )
    frames = max(minimum, math.ceil(num_phonemes * frames_per_phoneme))
    return frames if maximum is None else min(frames, maximum)
