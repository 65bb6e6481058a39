"""CrossMamba: conditions a target sequence on a memory sequence.

Mamba has no attention to look at another sequence, so the Speech Slytherin
models (ASR decoder, VALL-M) run a unidirectional Mamba over the
concatenation [memory ; target] and keep the target positions. Here the
concatenation is done per item on valid frames only (padding of the memory
never sits between memory and target), and with a cache the memory is
consumed once and the target can then be decoded one frame at a time.

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch

from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.nnet.mamba import Mamba
from speechbrain_mamba.nnet.padding import (
    check_sequence_input,
    lengths_to_frames,
    valid_mask,
)


def concat_valid(
    first: torch.Tensor,
    first_frames: torch.Tensor,
    second: torch.Tensor,
    second_frames: torch.Tensor,
):
    """Concatenates the valid frames of two padded batches, item by item.

    Arguments
    ---------
    first, second : torch.Tensor
        [batch, time1, ...] and [batch, time2, ...].
    first_frames, second_frames : torch.Tensor
        Valid frames per item.

    Returns
    -------
    joined : torch.Tensor
        [batch, time1 + time2, ...], right-padded with zeros.
    second_start : torch.Tensor
        Where each item's second part starts in ``joined``.

    Example
    -------
    >>> a = torch.tensor([[1., 2.], [3., 0.]])[..., None]
    >>> b = torch.tensor([[7., 8.], [9., 0.]])[..., None]
    >>> j, s = concat_valid(a, torch.tensor([2, 1]), b, torch.tensor([2, 1]))
    >>> j[..., 0]
    tensor([[1., 2., 7., 8.],
            [3., 9., 0., 0.]])
    """
    batch, time1 = first.shape[:2]
    time2 = second.shape[1]
    stacked = torch.cat([first, second, torch.zeros_like(second[:, :1])], 1)
    positions = torch.arange(time1 + time2, device=first.device)[None, :]
    start = first_frames[:, None]
    end = start + second_frames[:, None]
    source = torch.where(
        positions < start,
        positions,
        torch.where(positions < end, positions - start + time1, time1 + time2),
    )
    index = source.view(*source.shape, *([1] * (first.dim() - 2)))
    index = index.expand(batch, time1 + time2, *first.shape[2:])
    return torch.gather(stacked, 1, index), first_frames


class CrossMamba(Mamba):
    """Unidirectional Mamba over [memory ; target], returning the target.

    Has exactly the parameters of :class:`speechbrain_mamba.nnet.Mamba`.

    Arguments
    ---------
    d_model : int
        Feature size of target and memory.
    **kwargs
        Every other argument of :class:`speechbrain_mamba.nnet.Mamba`.

    Example
    -------
    >>> layer = CrossMamba(d_model=16)
    >>> memory, target = torch.randn(2, 12, 16), torch.randn(2, 5, 16)
    >>> layer(target, memory).shape
    torch.Size([2, 5, 16])
    """

    def prime(
        self,
        memory: torch.Tensor,
        cache: MambaCache,
        memory_lengths: Optional[torch.Tensor] = None,
    ) -> MambaCache:
        """Consumes the memory into a cache, ready to decode the target.

        Arguments
        ---------
        memory : torch.Tensor
            [batch, memory_time, d_model].
        cache : MambaCache
            From :meth:`init_cache`; updated in place and marked primed.
        memory_lengths : torch.Tensor, optional
            Relative lengths in (0, 1]; the state is taken at each item's
            true end.

        Returns
        -------
        MambaCache
            The same cache.

        Example
        -------
        >>> layer = CrossMamba(8).eval()
        >>> memory, target = torch.randn(1, 6, 8), torch.randn(1, 3, 8)
        >>> cache = layer.prime(memory, layer.init_cache(1))
        >>> steps = [layer(target[:, t : t + 1], None, cache=cache)
        ...          for t in range(3)]
        >>> torch.allclose(torch.cat(steps, 1), layer(target, memory),
        ...                atol=1e-5)
        True
        """
        check_sequence_input(memory, self.d_model, "memory")
        super().forward(memory, memory_lengths, cache)
        cache.primed = True
        return cache

    def forward(
        self,
        target: torch.Tensor,
        memory: torch.Tensor,
        target_lengths: Optional[torch.Tensor] = None,
        memory_lengths: Optional[torch.Tensor] = None,
        cache: Optional[MambaCache] = None,
    ) -> torch.Tensor:
        """Runs the layer.

        Arguments
        ---------
        target : torch.Tensor
            [batch, target_time, d_model].
        memory : torch.Tensor
            [batch, memory_time, d_model] (e.g. encoder output).
        target_lengths, memory_lengths : torch.Tensor, optional
            Relative lengths in (0, 1], [batch].
        cache : MambaCache, optional
            From :meth:`init_cache`. On the first call the memory is
            consumed into the cache; later calls ignore ``memory`` and
            continue the target (step-by-step decoding).

        Returns
        -------
        torch.Tensor
            [batch, target_time, d_model], padded target frames 0.
        """
        check_sequence_input(target, self.d_model, "target")
        if cache is not None and cache.primed:
            return super().forward(target, target_lengths, cache)
        check_sequence_input(memory, self.d_model, "memory")
        batch, target_time, _ = target.shape
        if memory.shape[0] != batch:
            raise ValueError(
                f"memory has batch size {memory.shape[0]} but target has "
                f"{batch}"
            )
        memory_time = memory.shape[1]
        if cache is not None:
            self.prime(memory, cache, memory_lengths)
            return super().forward(target, target_lengths, cache)

        memory_frames = lengths_to_frames(
            memory_lengths, batch, memory_time, memory.device
        )
        target_frames = lengths_to_frames(
            target_lengths, batch, target_time, target.device
        )
        if memory_frames is None:
            memory_frames = torch.full(
                (batch,), memory_time, device=memory.device
            )
        if target_frames is None:
            target_frames = torch.full(
                (batch,), target_time, device=target.device
            )
        joined, target_start = concat_valid(
            memory, memory_frames, target, target_frames
        )
        output = super().forward(joined)
        index = target_start[:, None] + torch.arange(
            target_time, device=target.device
        )
        index = index.clamp(max=joined.shape[1] - 1)[..., None]
        output = torch.gather(output, 1, index.expand(-1, -1, self.d_model))
        mask = valid_mask(target_frames, target_time)
        return output * mask[..., None].to(output.dtype)
