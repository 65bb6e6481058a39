"""Timing helpers shared by the benchmark scripts.

Author
------
speechbrain-mamba developers
"""

import statistics
import time
from typing import Callable, Dict, Optional

import torch


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], object],
    device="cpu",
    repeats: int = 3,
    warmup: int = 1,
    budget_s: Optional[float] = None,
) -> Dict[str, Optional[float]]:
    """Median wall time (and CUDA peak memory) of a callable.

    Arguments
    ---------
    step : callable
        The work to time.
    device : str or torch.device
        Where the work runs (CUDA is synchronised around each call).
    repeats : int
        Timed calls; the median is reported.
    warmup : int
        Untimed calls first (JIT compilation, autotuning, allocator).
    budget_s : float, optional
        Stop repeating once this much time was spent (at least one call).

    Returns
    -------
    dict
        ``seconds`` (median), ``runs``, ``peak_mib`` (CUDA only, else
        None) and ``oom`` (True when the step ran out of memory).

    Example
    -------
    >>> result = measure(lambda: sum(range(1000)), repeats=2)
    >>> result["runs"], result["oom"]
    (2, False)
    """
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    try:
        for _ in range(warmup):
            step()
        synchronize(device)
        if is_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        spent = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
            spent += times[-1]
            if budget_s is not None and spent > budget_s:
                break
    except torch.OutOfMemoryError:
        if is_cuda:
            torch.cuda.empty_cache()
        return {"seconds": None, "runs": 0, "peak_mib": None, "oom": True}
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if is_cuda else None
    return {
        "seconds": statistics.median(times),
        "runs": len(times),
        "peak_mib": peak,
        "oom": False,
    }
