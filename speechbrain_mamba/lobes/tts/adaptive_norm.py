"""Adaptive layer normalisation: LayerNorm whose gain and bias depend on a
discrete condition (VALL-E's NAR stage embedding).

Author
------
speechbrain-mamba developers
"""

import torch
from torch import nn

from speechbrain_mamba.utils.value_checks import check_once


class AdaptiveLayerNorm(nn.Module):
    """``AdaLN(h, c) = a_c * LayerNorm(h) + b_c``.

    The gain ``a_c`` and bias ``b_c`` of each condition ``c`` (e.g. the
    codebook a NAR stage predicts) are learned rows of an embedding table,
    initialised to 1 and 0, so that the layer starts as a plain LayerNorm.

    Arguments
    ---------
    d_model : int
        Feature size.
    num_conditions : int
        Number of conditions.
    eps : float
        LayerNorm epsilon.

    Example
    -------
    >>> norm = AdaptiveLayerNorm(8, num_conditions=3)
    >>> x = torch.randn(2, 4, 8)
    >>> y = norm(x, torch.tensor([0, 2]))
    >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (8,)), atol=1e-6)
    True
    """

    def __init__(self, d_model: int, num_conditions: int, eps: float = 1e-5):
        super().__init__()
        if num_conditions < 1:
            raise ValueError(
                f"num_conditions must be >= 1, got {num_conditions}"
            )
        self.d_model = d_model
        self.num_conditions = num_conditions
        self.eps = eps
        self.affine = nn.Embedding(num_conditions, 2 * d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gain 1 and bias 0 for every condition."""
        with torch.no_grad():
            self.affine.weight[:, : self.d_model].fill_(1.0)
            self.affine.weight[:, self.d_model :].zero_()

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Normalises x and applies the gain and bias of each item's
        condition.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        condition : torch.Tensor
            Long tensor of condition indices, [batch].

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        if condition.dim() != 1 or condition.shape[0] != x.shape[0]:
            raise ValueError(
                f"condition must have shape [batch={x.shape[0]}], got "
                f"{tuple(condition.shape)}"
            )
        check_once(
            condition, ("condition", self.num_conditions), self._check_condition
        )
        gain, bias = self.affine(condition)[:, None, :].chunk(2, dim=-1)
        normed = nn.functional.layer_norm(x, (self.d_model,), eps=self.eps)
        return normed * gain.to(normed.dtype) + bias.to(normed.dtype)

    def _check_condition(self, condition: torch.Tensor) -> None:
        if bool((condition < 0).any()) or bool(
            (condition >= self.num_conditions).any()
        ):
            raise ValueError(
                f"condition must be in [0, {self.num_conditions}), got "
                f"{condition.tolist()}"
            )

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return f"{self.d_model}, num_conditions={self.num_conditions}"
