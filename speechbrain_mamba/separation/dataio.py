"""SpeechBrain datasets for separation CSV files (mixture + sources).

Author
------
speechbrain-mamba developers
"""

from pathlib import Path
from typing import Optional

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_mamba.utils.io import PathLike, read_audio

SORTINGS = ("ascending", "descending", "random")


def output_keys(num_spks: int) -> list[str]:
    """Returns the keys a separation batch provides.

    Arguments
    ---------
    num_spks : int
        Number of speakers.

    Returns
    -------
    list of str
        ``["id", "mix_sig", "s1_sig", ...]``.

    Example
    -------
    >>> output_keys(2)
    ['id', 'mix_sig', 's1_sig', 's2_sig']
    """
    return ["id", "mix_sig"] + [f"s{i + 1}_sig" for i in range(num_spks)]


def separation_dataset(
    csv_path: PathLike,
    data_folder: PathLike,
    num_spks: int,
    sample_rate: int,
    sorting: Optional[str] = None,
    limit: Optional[int] = None,
) -> DynamicItemDataset:
    """Builds a dataset that reads the mixture and the sources of each row.

    Arguments
    ---------
    csv_path : str or os.PathLike
        CSV written by :mod:`speechbrain_mamba.separation.prepare`.
    data_folder : str or os.PathLike
        Replaces ``$data_root`` in the CSV paths.
    num_spks : int
        Number of sources to read (``s1_wav`` ... ``s<num_spks>_wav``).
    sample_rate : int
        Expected sample rate; files at another rate raise ``ValueError``.
    sorting : str, optional
        ``"ascending"`` / ``"descending"`` sorts by duration; ``"random"`` or
        None keeps the CSV order.
    limit : int, optional
        Keeps only the first ``limit`` rows (after sorting).

    Returns
    -------
    DynamicItemDataset
        Items with keys :func:`output_keys`.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> import torch
    >>> from speechbrain_mamba.utils.atomic import atomic_write_wav
    >>> for name in ["mix", "s1", "s2"]:
    ...     _ = atomic_write_wav(tmpdir / f"{name}.wav", torch.zeros(160), 8000)
    >>> _ = (tmpdir / "d.csv").write_text(
    ...     "ID,duration,mix_wav,s1_wav,s2_wav\\n"
    ...     "a,0.02,$data_root/mix.wav,$data_root/s1.wav,$data_root/s2.wav\\n",
    ...     encoding="utf-8",
    ... )
    >>> data = separation_dataset(tmpdir / "d.csv", tmpdir, 2, 8000)
    >>> data[0]["s2_sig"].shape
    torch.Size([160])
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data CSV not found: {csv_path}")
    if sorting is not None and sorting not in SORTINGS:
        raise ValueError(f"sorting must be one of {SORTINGS}, got {sorting!r}")
    dataset = DynamicItemDataset.from_csv(
        csv_path=str(csv_path),
        replacements={"data_root": str(data_folder)},
    )
    if len(dataset) == 0:
        raise ValueError(f"data CSV {csv_path} has no rows")
    columns = ["mix_wav"] + [f"s{i + 1}_wav" for i in range(num_spks)]
    missing = [c for c in columns if c not in dataset.data[dataset.data_ids[0]]]
    if missing:
        raise ValueError(
            f"data CSV {csv_path} lacks the columns {missing} "
            f"(needed for num_spks={num_spks})"
        )

    def reader(path: str) -> torch.Tensor:
        return read_audio(path, sample_rate)

    for column in columns:
        key = column.replace("_wav", "_sig")
        sb.dataio.dataset.add_dynamic_item(
            [dataset], reader, takes=[column], provides=[key]
        )
    if sorting in ("ascending", "descending"):
        dataset = dataset.filtered_sorted(
            sort_key="duration", reverse=sorting == "descending"
        )
    if limit is not None:
        dataset = dataset.filtered_sorted(select_n=int(limit))
    dataset.set_output_keys(output_keys(num_spks))
    return dataset
