"""Stack of identical layers closed by a LayerNorm, the common skeleton of
the ConMamba encoder and the Mamba decoder.

Parameters are named as in SpeechBrain's ``ConformerEncoder`` and
``TransformerDecoder`` (``layers.{i}.*`` and ``norm.*``), so checkpoints
keep their keys.

Author
------
speechbrain-mamba developers
"""

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from speechbrain.nnet.normalization import LayerNorm
from torch import nn

#: ``(index, layer, x) -> (output, extra)``: runs one layer of the stack.
LayerCall = Callable[[int, nn.Module, torch.Tensor], Tuple[torch.Tensor, Any]]


class NormedLayerStack(nn.Module):
    """Base class of a stack of layers followed by a final LayerNorm.

    Subclasses build the layers through ``make_layer`` and run them with
    :meth:`run_layers`, giving the arguments each layer needs.

    Arguments
    ---------
    num_layers : int
        Number of layers (at least 1).
    d_model : int
        Feature dimension of the final LayerNorm.
    make_layer : callable
        Called without arguments once per layer; returns the layer.
    norm_eps : float
        Epsilon of the final LayerNorm.

    Example
    -------
    >>> stack = NormedLayerStack(3, 4, lambda: nn.Linear(4, 4))
    >>> [name for name, _ in stack.named_children()]
    ['layers', 'norm']
    >>> out, extras, hidden = stack.run_layers(
    ...     torch.rand(2, 4), lambda i, layer, x: (layer(x), i), keep=[1, 0, 1]
    ... )
    >>> out.shape, extras, len(hidden)
    (torch.Size([2, 4]), [0, 2], 3)
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        make_layer: Callable[[], nn.Module],
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        self.layers = nn.ModuleList([make_layer() for _ in range(num_layers)])
        self.norm = LayerNorm(d_model, eps=norm_eps)

    def run_layers(
        self,
        x: torch.Tensor,
        run_layer: LayerCall,
        keep: Optional[Sequence[bool]] = None,
    ) -> Tuple[torch.Tensor, List[Any], List[torch.Tensor]]:
        """Runs the layers in order, then the final LayerNorm.

        Arguments
        ---------
        x : torch.Tensor
            Input of the first layer.
        run_layer : callable
            ``(index, layer, x) -> (output, extra)``: runs layer ``index``
            on ``x``; ``extra`` (e.g. attention weights) is collected.
        keep : sequence of bool, optional
            Which layers to run (LayerDrop); all of them by default.

        Returns
        -------
        output : torch.Tensor
            Normalised output of the last layer run.
        extras : list
            The ``extra`` of each layer run.
        hidden_states : list of torch.Tensor
            The input, then each layer's (unnormalised) output.
        """
        extras: List[Any] = []
        hidden_states = [x]
        for index, layer in enumerate(self.layers):
            if keep is not None and not keep[index]:
                continue
            x, extra = run_layer(index, layer, x)
            extras.append(extra)
            hidden_states.append(x)
        return self.norm(x), extras, hidden_states
