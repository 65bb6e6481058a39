"""Recurrent state of a unidirectional Mamba layer, for streaming and
step-by-step decoding.

Author
------
speechbrain-mamba developers
"""

from dataclasses import dataclass

import torch


@dataclass
class MambaCache:
    """Conv and SSM state carried between calls of a Mamba layer.

    Arguments
    ---------
    conv : torch.Tensor
        The last ``d_conv - 1`` conv inputs, [batch, d_inner, d_conv - 1].
    ssm : torch.Tensor
        The SSM state, [batch, d_inner, d_state] (fp32).
    primed : bool
        For CrossMamba: whether the memory has been consumed already.

    Example
    -------
    >>> cache = MambaCache(torch.zeros(2, 8, 3), torch.zeros(2, 8, 4))
    >>> cache.reorder(torch.tensor([1, 1, 0])).ssm.shape
    torch.Size([3, 8, 4])
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    primed: bool = False

    @property
    def batch_size(self) -> int:
        """Number of sequences the cache holds."""
        return self.ssm.shape[0]

    def reorder(self, index: torch.Tensor) -> "MambaCache":
        """Selects (and repeats) batch entries, e.g. to follow beam search.

        Arguments
        ---------
        index : torch.Tensor
            Long tensor of batch indices.

        Returns
        -------
        MambaCache
            A new cache (this one is left unchanged).
        """
        index = index.to(self.ssm.device)
        return MambaCache(
            self.conv.index_select(0, index),
            self.ssm.index_select(0, index),
            self.primed,
        )

    def detach(self) -> "MambaCache":
        """Returns a copy cut from the autograd graph (truncated BPTT)."""
        return MambaCache(self.conv.detach(), self.ssm.detach(), self.primed)
