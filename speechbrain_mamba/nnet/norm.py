"""Root-mean-square layer normalisation.

Author
------
speechbrain-mamba developers
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in fp32.

    y = x / sqrt(mean(x ** 2) + eps) * weight

    Arguments
    ---------
    d_model : int
        Size of the last dimension.
    eps : float
        Added to the mean square.

    Example
    -------
    >>> norm = RMSNorm(4)
    >>> norm(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
    tensor([[ 1.0000, -1.0000,  1.0000, -1.0000]], grad_fn=<MulBackward0>)
    """

    #: Tells the fused decoding step (:mod:`speechbrain_mamba.ops.triton.
    #: mamba_step`) that this norm computes RMSNorm with ``weight`` and
    #: ``eps`` (ops does not import nnet).
    is_rms_norm = True

    def __init__(
        self, d_model: int, eps: float = 1e-5, device=None, dtype=None
    ):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(
            torch.ones(d_model, device=device, dtype=dtype)
        )

    def reset_parameters(self) -> None:
        """Sets the weight back to ones."""
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises x ([..., d_model]); returns x's dtype."""
        xf = x.float()
        scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * scale * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return f"{self.weight.shape[0]}, eps={self.eps}"
