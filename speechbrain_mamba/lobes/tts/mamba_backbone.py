"""A Mamba stack whose norms are adaptive LayerNorms conditioned on a
discrete stage (the NAR model of VALL-M).

Author
------
speechbrain-mamba developers
"""

from typing import Optional

import torch
from torch import nn

from speechbrain_mamba.lobes.tts.adaptive_norm import AdaptiveLayerNorm
from speechbrain_mamba.nnet import BiMamba, Mamba
from speechbrain_mamba.nnet.padding import (
    check_sequence_input,
    lengths_to_frames,
    zero_padding,
)
from speechbrain_mamba.utils.bucketed_graphs import SelfGraphedModule
from speechbrain_mamba.utils.value_checks import check_once


class AdaptiveMambaStack(SelfGraphedModule):
    """Pre-norm residual Mamba blocks with stage-conditioned norms.

    Each block follows the residual convention of
    :class:`speechbrain_mamba.nnet.MambaBlock`
    (``residual = hidden + residual; hidden = mixer(norm(residual))``) with
    :class:`AdaptiveLayerNorm` as ``norm``, and the stack ends with an
    adaptive final norm.

    Arguments
    ---------
    d_model : int
        Feature size.
    num_layers : int
        Number of blocks.
    num_conditions : int
        Number of stages of the adaptive norms.
    bidirectional : bool
        BiMamba (True) or Mamba (False) mixers.
    norm_eps : float
        Epsilon of the norms.
    cuda_graphs : bool
        Calls on CUDA replay CUDA graphs the stack records itself
        (training forward + backward, and inference), one per (batch,
        bucket of the length, dtype, autocast) key; same outputs and
        gradients as the plain call (see
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
    max_cuda_graphs : int
        Most inference graphs kept (other keys run eagerly).
    max_training_graphs : int
        Most training graph pairs kept; they share one memory pool.
    **mixer_kwargs
        Arguments of the mixers (d_state, d_conv, expand, backend, ...).

    Example
    -------
    >>> stack = AdaptiveMambaStack(16, 2, num_conditions=3, d_state=4)
    >>> x = torch.randn(2, 7, 16)
    >>> y = stack(x, torch.tensor([0, 2]), lengths=torch.tensor([1.0, 4 / 7]))
    >>> y.shape, bool(y[1, 4:].abs().sum() == 0)
    (torch.Size([2, 7, 16]), True)
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_conditions: int,
        bidirectional: bool = True,
        norm_eps: float = 1e-5,
        cuda_graphs: bool = True,
        max_cuda_graphs: int = 16,
        max_training_graphs: int = 16,
        **mixer_kwargs,
    ):
        super().__init__()
        self.init_cuda_graphs(cuda_graphs, max_cuda_graphs, max_training_graphs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d_model = d_model
        mixer_class = BiMamba if bidirectional else Mamba
        self.mixers = nn.ModuleList(
            mixer_class(d_model, layer_idx=i, **mixer_kwargs)
            for i in range(num_layers)
        )
        self.norms = nn.ModuleList(
            AdaptiveLayerNorm(d_model, num_conditions, norm_eps)
            for _ in range(num_layers)
        )
        self.norm_f = AdaptiveLayerNorm(d_model, num_conditions, norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Runs the stack.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        condition : torch.Tensor
            Stage of each item, [batch] (long).
        lengths : torch.Tensor, optional
            Relative lengths in (0, 1]; padded output frames are 0.

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        check_sequence_input(x, self.d_model)
        if self.uses_cuda_graphs():
            # the caller's conditions: inside a replay, the norms see the
            # graph's own copy, checked once when it was recorded
            check_once(
                condition,
                ("condition", self.norm_f.num_conditions),
                self.norm_f._check_condition,
            )
            calls = self.cuda_graph_calls(self._run, 1, 1)
            return calls(x, lengths, condition)
        return self._run(x, lengths, condition)

    def _run(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor],
        condition: torch.Tensor,
    ) -> torch.Tensor:
        """The blocks and the final norm (a checked input)."""
        frames = lengths_to_frames(lengths, x.shape[0], x.shape[1], x.device)
        hidden, residual = x, None
        for mixer, norm in zip(self.mixers, self.norms):
            residual = hidden if residual is None else residual + hidden
            residual = residual.float()
            hidden = mixer(norm(residual, condition), lengths=lengths)
        out = self.norm_f(residual + hidden, condition)
        return zero_padding(out.to(x.dtype), frames)
