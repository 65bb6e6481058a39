"""Collective helpers that also work without a process group: a single
process (no ``torch.distributed`` group initialised) gets its own values
back, so the Brains call them unconditionally.

Author
------
speechbrain-mamba developers
"""

import torch


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised.

    Returns
    -------
    bool
        True inside a DDP run (``torchrun``), False in a single process.

    Example
    -------
    >>> is_distributed()
    False
    """
    return (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    )


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is True on any process, so that all processes take
    the same branch (stop training at the same step, skip the same batch).

    Arguments
    ---------
    flag : bool
        This process's value.
    device : torch.device or str
        Device of the reduction (the Brain's device: NCCL needs CUDA).

    Returns
    -------
    bool
        The logical OR over all processes (``flag`` without a group).

    Example
    -------
    >>> any_rank(True), any_rank(False)
    (True, False)
    """
    if not is_distributed():
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over all processes, in place.

    Arguments
    ---------
    values : torch.Tensor
        This process's values (on the device the backend needs).

    Returns
    -------
    torch.Tensor
        ``values``, now holding the sum over processes (unchanged without a
        group).

    Example
    -------
    >>> counts = torch.tensor([1, 2])
    >>> all_reduce_sum(counts) is counts, counts.tolist()
    (True, [1, 2])
    """
    if is_distributed():
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values
