"""The test-stage results table: one row of metrics per utterance plus an
``avg`` row (NaN values are left out of the averages), written atomically.

Author
------
speechbrain-mamba developers
"""

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechbrain_mamba.separation.metrics import METRICS
from speechbrain_mamba.utils.atomic import atomic_write_csv
from speechbrain_mamba.utils.io import PathLike

ID_COLUMN = "snt_id"
AVERAGE_ID = "avg"


def average_row(rows: Sequence[dict], metrics: Sequence[str] = METRICS) -> dict:
    """Averages each metric over the rows, ignoring NaN values.

    Arguments
    ---------
    rows : sequence of dict
        Per-utterance rows.
    metrics : sequence of str
        Metric columns to average.

    Returns
    -------
    dict
        The ``avg`` row (NaN for a metric that is NaN everywhere).

    Example
    -------
    >>> rows = [{"snt_id": "a", "sdr": 1.0}, {"snt_id": "b", "sdr": math.nan}]
    >>> average_row(rows, ["sdr"])
    {'snt_id': 'avg', 'sdr': 1.0}
    """
    out = {ID_COLUMN: AVERAGE_ID}
    for name in metrics:
        values = np.array([float(r[name]) for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else math.nan
    return out


def write_results_csv(
    path: PathLike, rows: Sequence[dict], metrics: Sequence[str] = METRICS
) -> dict:
    """Writes per-utterance rows and the ``avg`` row to a CSV file.

    Arguments
    ---------
    path : str or os.PathLike
        Destination CSV.
    rows : sequence of dict
        Per-utterance rows with ``snt_id`` and the metric columns.
    metrics : sequence of str
        Metric columns, in order.

    Returns
    -------
    dict
        The ``avg`` row.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> rows = [{"snt_id": "a", "x": 2}]
    >>> avg = write_results_csv(tmpdir / "r.csv", rows, ["x"])
    >>> (tmpdir / "r.csv").read_text("utf-8").splitlines()
    ['snt_id,x', 'a,2', 'avg,2.0']
    """
    if not rows:
        warnings.warn(
            "no test utterances: the results CSV has no rows", stacklevel=2
        )
    avg = average_row(rows, metrics)
    atomic_write_csv(Path(path), [ID_COLUMN, *metrics], [*rows, avg])
    return avg


def read_results_csv(path: PathLike) -> dict[str, dict]:
    """Reads a results CSV back (``snt_id`` -> row of floats).

    Arguments
    ---------
    path : str or os.PathLike
        CSV written by :func:`write_results_csv`.

    Returns
    -------
    dict
        Rows keyed by ``snt_id`` (including ``"avg"``).

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> rows = [{"snt_id": "a", "x": 2}]
    >>> _ = write_results_csv(tmpdir / "r.csv", rows, ["x"])
    >>> read_results_csv(tmpdir / "r.csv")["avg"]
    {'x': 2.0}
    """
    out = {}
    with open(path, encoding="utf-8", newline="") as fin:
        for row in csv.DictReader(fin):
            key = row.pop(ID_COLUMN)
            out[key] = {
                k: float(v) if v != "" else math.nan for k, v in row.items()
            }
    return out
