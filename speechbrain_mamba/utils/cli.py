"""Number types for ``argparse`` options that refuse out-of-range values.

Given as ``type=`` of an option, each parses the text and raises
``argparse.ArgumentTypeError`` for a value out of range, so that argparse
stops with ``error: argument --repeats: expected a positive integer, got
'0'`` (the option named) before any work starts.

Example
-------
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--repeats", type=positive_int, default=5)
>>> parser.parse_args(["--repeats", "3"]).repeats
3

Author
------
speechbrain-mamba developers
"""

import argparse
import math


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected an integer, got {text!r}"
        ) from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a number, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected a finite number, got {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: repeats, batch size, workers).

    Arguments
    ---------
    text : str
        The option's text.

    Returns
    -------
    int

    Example
    -------
    >>> positive_int("4")
    4
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, got '0'
    """
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        )
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, indices, counts that may be zero).

    Arguments
    ---------
    text : str
        The option's text.

    Returns
    -------
    int

    Example
    -------
    >>> non_negative_int("0")
    0
    >>> non_negative_int("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a non-negative integer, got '-1'
    """
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (durations, rates).

    Arguments
    ---------
    text : str
        The option's text.

    Returns
    -------
    float

    Example
    -------
    >>> positive_float("0.5")
    0.5
    >>> positive_float("-5")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive number, got '-5'
    >>> positive_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number, got 'nan'
    """
    value = _parse_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number, got {text!r}"
        )
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (margins, probabilities that may be zero).

    Arguments
    ---------
    text : str
        The option's text.

    Returns
    -------
    float

    Example
    -------
    >>> non_negative_float("0")
    0.0
    >>> non_negative_float("-0.1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a non-negative number, got '-0.1'
    """
    value = _parse_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative number, got {text!r}"
        )
    return value
