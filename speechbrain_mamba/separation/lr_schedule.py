"""Step-wise learning-rate schedule of the Mamba-TasNet paper recipe: linear
warm-up to the base rate, then cosine decay to a fraction of it.

The schedule is a pure function of the optimizer step counter, which the
training loop checkpoints, so resuming needs no extra state.

Author
------
speechbrain-mamba developers
"""

import math
from typing import Optional

import torch


class WarmupCosineScheduler:
    """Linear warm-up, then cosine decay, one update per optimizer step.

    Arguments
    ---------
    lr : float
        Base (peak) learning rate.
    warmup_steps : int
        Number of warm-up steps (0 disables warm-up).
    total_steps : int, optional
        Total number of optimizer steps of the training. When None, the
        training loop sets it (epochs x batches per epoch) before training.
    final_lr_ratio : float
        Learning rate at ``total_steps`` as a fraction of ``lr``.

    Example
    -------
    >>> sched = WarmupCosineScheduler(1.0, warmup_steps=2, total_steps=6)
    >>> [round(sched.lr_at(s), 3) for s in range(7)]
    [0.0, 0.5, 1.0, 0.855, 0.505, 0.155, 0.01]
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    >>> sched(opt, 1)
    0.5
    >>> opt.param_groups[0]["lr"]
    0.5
    """

    def __init__(
        self,
        lr: float,
        warmup_steps: int = 0,
        total_steps: Optional[int] = None,
        final_lr_ratio: float = 0.01,
    ):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.lr = lr
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.final_lr_ratio = final_lr_ratio

    def lr_at(self, step: int) -> float:
        """Learning rate after ``step`` optimizer steps.

        Arguments
        ---------
        step : int
            Number of optimizer steps done.

        Returns
        -------
        float
            The learning rate.
        """
        if step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.total_steps is None:
            raise RuntimeError("WarmupCosineScheduler.total_steps is not set")
        final = self.lr * self.final_lr_ratio
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return final + 0.5 * (self.lr - final) * (
            1 + math.cos(math.pi * progress)
        )

    def __call__(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Sets the learning rate of every parameter group.

        Arguments
        ---------
        optimizer : torch.optim.Optimizer
            The optimizer to update.
        step : int
            Number of optimizer steps done.

        Returns
        -------
        float
            The learning rate set.
        """
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
