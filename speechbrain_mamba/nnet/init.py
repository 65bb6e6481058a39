"""Mamba's parameter initialisation, kept alive through re-initialisation.

Mamba's step-size projection ``dt_proj`` is a Linear layer whose bias holds
the inverse softplus of step sizes drawn log-uniformly in [dt_min, dt_max];
``A_log`` holds log(1..d_state) and ``D`` ones. Generic code that
re-initialises every Linear (SpeechBrain's separation recipe calls
``reset_parameters()`` on every submodule) or every 2-D parameter
(``TransformerASR._init_params`` applies xavier) would destroy that. Here
``dt_proj`` is a :class:`DeltaProjection`, whose ``reset_parameters`` redoes
Mamba's initialisation, every Mamba mixer has a ``reset_parameters`` of its
own, and :func:`reset_mamba_parameters` re-initialises every mixer inside a
model after a wholesale re-initialisation.

Author
------
speechbrain-mamba developers
"""

import math

import torch
from torch import nn

DT_INITS = ("random", "constant")


class DeltaProjection(nn.Linear):
    """The dt_rank -> d_inner projection of Mamba's step sizes.

    A ``torch.nn.Linear`` (so state dicts keep ``weight`` and ``bias``)
    whose ``reset_parameters`` applies Mamba's initialisation: weights
    uniform in +-dt_scale / sqrt(dt_rank) (or constant), bias the inverse
    softplus of step sizes log-uniform in [dt_min, dt_max], floored at
    dt_init_floor.

    Arguments
    ---------
    dt_rank : int
        Input size.
    d_inner : int
        Output size (channels).
    dt_min, dt_max : float
        Range of the initial step sizes.
    dt_init : str
        "random" or "constant" weight initialisation.
    dt_scale : float
        Scale of the weight initialisation.
    dt_init_floor : float
        Smallest initial step size.

    Example
    -------
    >>> proj = DeltaProjection(4, 32, dt_min=0.001, dt_max=0.1)
    >>> dt = torch.nn.functional.softplus(proj.bias)
    >>> bool(dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6)
    True
    """

    def __init__(
        self,
        dt_rank: int,
        d_inner: int,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        device=None,
        dtype=None,
    ):
        if dt_init not in DT_INITS:
            raise ValueError(
                f"dt_init must be one of {DT_INITS}, got {dt_init}"
            )
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}"
            )
        self.dt_min, self.dt_max = dt_min, dt_max
        self.dt_init, self.dt_scale = dt_init, dt_scale
        self.dt_init_floor = dt_init_floor
        super().__init__(
            dt_rank, d_inner, bias=True, device=device, dtype=dtype
        )

    def reset_parameters(self) -> None:
        """Re-applies Mamba's dt initialisation."""
        if not hasattr(self, "dt_init"):  # called from nn.Linear.__init__
            return
        std = self.in_features**-0.5 * self.dt_scale
        with torch.no_grad():
            if self.dt_init == "constant":
                self.weight.fill_(std)
            else:
                self.weight.uniform_(-std, std)
            log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
            dt = torch.exp(
                torch.rand(self.out_features, device=self.bias.device)
                * (log_max - log_min)
                + log_min
            ).clamp(min=self.dt_init_floor)
            # inverse of softplus: dt + log(1 - exp(-dt))
            self.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return (
            f"{super().extra_repr()}, dt_min={self.dt_min}, "
            f"dt_max={self.dt_max}, dt_init={self.dt_init}"
        )


def A_log_init(d_inner: int, d_state: int, device=None) -> torch.Tensor:
    """S4D-real initialisation of A_log: log(1..d_state) for every channel.

    Arguments
    ---------
    d_inner : int
        Channels.
    d_state : int
        State size.
    device : torch.device, optional
        Where to create the tensor.

    Returns
    -------
    torch.Tensor
        [d_inner, d_state] fp32.

    Example
    -------
    >>> A_log_init(2, 3).exp()
    tensor([[1., 2., 3.],
            [1., 2., 3.]])
    """
    A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
    return torch.log(A).repeat(d_inner, 1).contiguous()


def reset_mamba_parameters(module: nn.Module) -> int:
    """Re-initialises every Mamba mixer inside a module.

    Call this after generic code re-initialised all parameters (for instance
    xavier on every 2-D tensor), so that A_log, D and dt_proj get Mamba's
    initialisation back.

    Arguments
    ---------
    module : torch.nn.Module
        Any model.

    Returns
    -------
    int
        The number of mixers re-initialised.

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> stack = MambaStack(16, num_layers=2)
    >>> reset_mamba_parameters(stack)
    2
    """
    from speechbrain_mamba.nnet.mamba import Mamba

    count = 0
    for child in module.modules():
        if isinstance(child, Mamba):
            child.reset_parameters()
            count += 1
    return count
