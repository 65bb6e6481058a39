"""Value checks that need the tensor's contents, run once per tensor.

Checking the values of a CUDA tensor (e.g. that relative lengths are in
(0, 1]) reads them back to the host, which makes the CPU wait for the GPU.
A model passes the same ``lengths`` tensor to every layer, so a check per
layer would stall the pipeline once per layer. :func:`check_once` runs a
check the first time it sees a tensor (and again after the tensor was
modified in place) and skips it during CUDA-graph capture, where reading
values back is not allowed.

Author
------
speechbrain-mamba developers
"""

import weakref
from typing import Callable, Dict, Hashable, Tuple

import torch

_PASSED: Dict[int, Tuple[weakref.ref, int, set]] = {}
_MAX_ENTRIES = 512


def _capturing() -> bool:
    return (
        torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    )


def check_once(
    tensor: torch.Tensor, key: Hashable, check: Callable[[torch.Tensor], None]
) -> None:
    """Runs ``check(tensor)`` unless it already passed for this tensor.

    Arguments
    ---------
    tensor : torch.Tensor
        The tensor whose values are checked.
    key : hashable
        Names the check (one tensor can pass several different checks).
    check : callable
        Raises an exception when the values are wrong.

    Example
    -------
    >>> calls = []
    >>> lengths = torch.tensor([1.0, 0.5])
    >>> for _ in range(3):
    ...     check_once(lengths, "lengths", calls.append)
    >>> len(calls)
    1
    >>> lengths.mul_(0.5)  # modified in place: checked again
    tensor([0.5000, 0.2500])
    >>> check_once(lengths, "lengths", calls.append)
    >>> len(calls)
    2
    >>> with torch.inference_mode():  # no version counter: every call
    ...     frozen = torch.tensor([1.0])
    ...     check_once(frozen, "lengths", calls.append)
    ...     check_once(frozen, "lengths", calls.append)
    >>> len(calls)
    4
    """
    if _capturing():
        return
    if tensor.is_inference():
        # no version counter to see in-place changes: check every time
        check(tensor)
        return
    entry = _PASSED.get(id(tensor))
    if (
        entry is not None
        and entry[0]() is tensor
        and entry[1] == tensor._version
        and key in entry[2]
    ):
        return
    check(tensor)
    if entry is None or entry[0]() is not tensor or entry[1] != tensor._version:
        if len(_PASSED) >= _MAX_ENTRIES:
            for stale in [k for k, v in _PASSED.items() if v[0]() is None]:
                del _PASSED[stale]
            if len(_PASSED) >= _MAX_ENTRIES:
                _PASSED.clear()
        entry = (weakref.ref(tensor), tensor._version, set())
        _PASSED[id(tensor)] = entry
    entry[2].add(key)
