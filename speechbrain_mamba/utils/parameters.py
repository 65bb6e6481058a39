"""Model size: the number of trainable parameters, as every table, model
card and benchmark of the project reports it.

Author
------
speechbrain-mamba developers
"""

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (frozen ones are not counted).

    Arguments
    ---------
    module : torch.nn.Module
        The model.

    Returns
    -------
    int
        The sum of the sizes of the parameters that require gradients.

    Example
    -------
    >>> layer = nn.Linear(3, 2)
    >>> count_parameters(layer)
    8
    >>> _ = layer.bias.requires_grad_(False)
    >>> count_parameters(layer)
    6
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
