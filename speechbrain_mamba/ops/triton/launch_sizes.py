"""Integer arithmetic of the kernels' launch grids and block sizes, in
plain Python.

Triton's own ``triton.cdiv`` and ``triton.next_power_of_2`` are
constexpr functions in recent releases: called from host code they go
through Triton's constexpr wrapper, several microseconds each, and a layer
call computes a dozen of them. These give the same integers for what the
host code passes (non-negative sizes, positive divisors).

Author
------
speechbrain-mamba developers
"""


def ceil_div(numerator: int, denominator: int) -> int:
    """Smallest integer not below ``numerator / denominator``.

    Arguments
    ---------
    numerator : int
        Non-negative.
    denominator : int
        Positive.

    Returns
    -------
    int
        ``ceil(numerator / denominator)``.

    Example
    -------
    >>> ceil_div(10, 4), ceil_div(8, 4), ceil_div(0, 3)
    (3, 2, 0)
    """
    return -(-numerator // denominator)


def next_power_of_2(n: int) -> int:
    """Smallest power of two not below ``n`` (0 for 0, as Triton's).

    Arguments
    ---------
    n : int
        A size (non-negative).

    Returns
    -------
    int
        The power of two.

    Example
    -------
    >>> [next_power_of_2(n) for n in (0, 1, 2, 3, 16, 17)]
    [0, 1, 2, 4, 16, 32]
    """
    return 1 << (n - 1).bit_length() if n > 0 else 0
