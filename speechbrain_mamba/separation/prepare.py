"""Data preparation for WSJ0-2mix / WSJ0-3mix and Libri2Mix / Libri3Mix.

Both corpora are read from their standard folder layouts and turned into the
CSV files SpeechBrain's separation recipes use (columns ``ID``,
``duration``, ``mix_wav``, ``s1_wav``, ``s2_wav`` [, ``s3_wav``]; paths are
stored relative to ``$data_root`` so that the data folder can move).

- WSJ0-mix: ``<data_folder>/wav8k/{min,max}/{tr,cv,tt}/{mix,s1,s2}/*.wav``
  (``<data_folder>`` is the ``2speakers`` / ``3speakers`` folder; ``wav16k``
  for 16 kHz).
- LibriMix: ``<data_folder>/wav{8k,16k}/{min,max}/{train-360,dev,test}/
  {mix_clean,s1,s2}/*.wav`` (``<data_folder>`` is the ``Libri2Mix`` /
  ``Libri3Mix`` folder).

Every problem is reported before training starts, with the folder or file
that causes it: missing folders, empty folders, sources missing for a
mixture, unreadable files, wrong sample rates, or length mismatches between a
mixture and its sources. Every file is decoded to the end and must be mono,
at the expected sample rate, finite and not empty
(:mod:`speechbrain_mamba.utils.audio_check`). Preparation is skipped when
the CSV files exist, were written with the same options and no audio file
changed since (a file changed after the preparation is checked again, so a
file corrupted between two runs stops the next run before training).

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Optional

from speechbrain_mamba.utils.atomic import atomic_write_csv, atomic_write_text
from speechbrain_mamba.utils.audio_check import (
    recorded_audio_unchanged,
    validate_audio_files,
)
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

#: Split folders of WSJ0-mix for the train / valid / test stages.
WSJ0MIX_SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}
#: Split folders of LibriMix (train-100 can replace train-360).
LIBRIMIX_SPLITS = {"train": "train-360", "valid": "dev", "test": "test"}
SUPPORTED_SAMPLE_RATES = (8000, 16000)
MODES = ("min", "max")


def csv_columns(num_spks: int) -> list[str]:
    """Returns the CSV columns for ``num_spks`` sources.

    Arguments
    ---------
    num_spks : int
        Number of speakers.

    Returns
    -------
    list of str
        Column names.

    Example
    -------
    >>> csv_columns(2)
    ['ID', 'duration', 'mix_wav', 's1_wav', 's2_wav']
    """
    return ["ID", "duration", "mix_wav"] + [
        f"s{i + 1}_wav" for i in range(num_spks)
    ]


def _check_options(num_spks: int, sample_rate: int, mode: str) -> None:
    if num_spks not in (2, 3):
        raise ValueError(f"num_spks must be 2 or 3, got {num_spks}")
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise ValueError(
            f"sample_rate must be one of {SUPPORTED_SAMPLE_RATES} Hz, "
            f"got {sample_rate}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} not found: {path} (check data_folder, sample_rate and "
            "mode in the hparams)"
        )


def _scan_split(
    data_folder: Path,
    split_dir: Path,
    mix_dirname: str,
    num_spks: int,
    sample_rate: int,
    record_file: Optional[Path] = None,
) -> list[dict]:
    """Lists the mixtures of one split folder, after checking all their
    audio with :func:`~speechbrain_mamba.utils.audio_check.
    validate_audio_files`."""
    mix_dir = split_dir / mix_dirname
    source_dirs = [split_dir / f"s{i + 1}" for i in range(num_spks)]
    for folder in [mix_dir, *source_dirs]:
        _require_dir(folder, "folder")
    mixtures = sorted(mix_dir.glob("*.wav"))
    if not mixtures:
        raise FileNotFoundError(f"no .wav files in {mix_dir}")

    groups = []
    for mix_path in mixtures:
        paths = [mix_path] + [d / mix_path.name for d in source_dirs]
        for path in paths[1:]:
            if not path.is_file():
                raise FileNotFoundError(
                    f"source file {path} of mixture {mix_path} is missing"
                )
        groups.append(paths)
    infos = validate_audio_files(
        [path for paths in groups for path in paths], sample_rate, record_file
    )
    rows = []
    for index, paths in enumerate(groups):
        group = infos[index * len(paths) : (index + 1) * len(paths)]
        frames = [info.frames for info in group]
        if len(set(frames)) != 1:
            raise ValueError(
                f"mixture {paths[0]} and its sources have different lengths "
                f"({frames} samples)"
            )
        row = {
            "ID": paths[0].stem,
            "duration": round(frames[0] / sample_rate, 4),
        }
        for key, path in zip(csv_columns(num_spks)[2:], paths):
            rel = path.relative_to(data_folder).as_posix()
            row[key] = f"$data_root/{rel}"
        rows.append(row)
    return rows


def _prepare(
    name: str,
    data_folder: PathLike,
    save_folder: PathLike,
    split_dirs: dict[str, Path],
    csv_paths: dict[str, Path],
    mix_dirname: str,
    num_spks: int,
    sample_rate: int,
    options: dict,
    skip_prep: bool,
) -> dict[str, Path]:
    save_folder = Path(save_folder)
    if skip_prep:
        missing = [str(p) for p in csv_paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                "skip_prep is set but these CSV files do not exist: "
                + ", ".join(missing)
            )
        return csv_paths

    marker = save_folder / f"{name}_prep.json"
    records = {
        stage: save_folder / f"{name}_audio_check_{stage}.json"
        for stage in split_dirs
    }
    options = {**options, "data_folder": str(Path(data_folder).resolve())}
    if all(p.is_file() for p in csv_paths.values()) and marker.is_file():
        unchanged = all(map(recorded_audio_unchanged, records.values()))
        if json.loads(marker.read_text(encoding="utf-8")) == options:
            if unchanged:
                logger.info("%s CSV files already prepared, skipping", name)
                return csv_paths
            logger.info(
                "%s: audio files changed since the preparation, checking "
                "them again",
                name,
            )

    data_folder = Path(data_folder)
    _require_dir(data_folder, "data folder")
    for split_dir in split_dirs.values():
        _require_dir(split_dir, "split folder")
    save_folder.mkdir(parents=True, exist_ok=True)
    for stage, split_dir in split_dirs.items():
        rows = _scan_split(
            data_folder,
            split_dir,
            mix_dirname,
            num_spks,
            sample_rate,
            records[stage],
        )
        atomic_write_csv(csv_paths[stage], csv_columns(num_spks), rows)
        logger.info("wrote %s (%d mixtures)", csv_paths[stage], len(rows))
    atomic_write_text(marker, json.dumps(options, sort_keys=True))
    return csv_paths


def prepare_wsj0mix(
    data_folder: PathLike,
    save_folder: PathLike,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    skip_prep: bool = False,
) -> dict[str, Path]:
    """Writes ``wsj_tr.csv``, ``wsj_cv.csv`` and ``wsj_tt.csv``.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The WSJ0-mix ``2speakers`` (or ``3speakers``) folder.
    save_folder : str or os.PathLike
        Where the CSV files are written.
    num_spks : int
        2 (WSJ0-2mix) or 3 (WSJ0-3mix).
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` or ``"max"``.
    skip_prep : bool
        If True, only checks that the CSV files exist.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}`` of the CSV files.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> prepare_wsj0mix(tmpdir / "missing", tmpdir)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: data folder not found: ...
    """
    _check_options(num_spks, sample_rate, mode)
    root = Path(data_folder) / f"wav{sample_rate // 1000}k" / mode
    split_dirs = {k: root / v for k, v in WSJ0MIX_SPLITS.items()}
    csv_paths = {
        k: Path(save_folder) / f"wsj_{v}.csv" for k, v in WSJ0MIX_SPLITS.items()
    }
    options = {"num_spks": num_spks, "sample_rate": sample_rate, "mode": mode}
    return _prepare(
        "wsj0mix",
        data_folder,
        save_folder,
        split_dirs,
        csv_paths,
        "mix",
        num_spks,
        sample_rate,
        options,
        skip_prep,
    )


def prepare_librimix(
    data_folder: PathLike,
    save_folder: PathLike,
    num_spks: int = 2,
    sample_rate: int = 8000,
    mode: str = "min",
    train_split: str = "train-360",
    mixture_type: str = "mix_clean",
    skip_prep: bool = False,
    splits: Optional[dict[str, str]] = None,
) -> dict[str, Path]:
    """Writes ``libri<N>mix_<split>.csv`` for the train, dev and test splits.

    Arguments
    ---------
    data_folder : str or os.PathLike
        The ``Libri2Mix`` (or ``Libri3Mix``) folder.
    save_folder : str or os.PathLike
        Where the CSV files are written.
    num_spks : int
        2 or 3.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``).
    mode : str
        ``"min"`` or ``"max"``.
    train_split : str
        ``"train-360"`` or ``"train-100"``.
    mixture_type : str
        Mixture folder: ``"mix_clean"``, ``"mix_both"`` or ``"mix_single"``.
    skip_prep : bool
        If True, only checks that the CSV files exist.
    splits : dict, optional
        Overrides the split folder names (``{"train": ..., "valid": ...,
        "test": ...}``).

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}`` of the CSV files.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> prepare_librimix(tmpdir, tmpdir, mode="avg")
    Traceback (most recent call last):
    ...
    ValueError: mode must be one of ('min', 'max'), got 'avg'
    """
    _check_options(num_spks, sample_rate, mode)
    splits = dict(splits or {**LIBRIMIX_SPLITS, "train": train_split})
    root = Path(data_folder) / f"wav{sample_rate // 1000}k" / mode
    split_dirs = {k: root / v for k, v in splits.items()}
    csv_paths = {
        k: Path(save_folder) / f"libri{num_spks}mix_{v}.csv"
        for k, v in splits.items()
    }
    options = {
        "num_spks": num_spks,
        "sample_rate": sample_rate,
        "mode": mode,
        "splits": splits,
        "mixture_type": mixture_type,
    }
    return _prepare(
        "librimix",
        data_folder,
        save_folder,
        split_dirs,
        csv_paths,
        mixture_type,
        num_spks,
        sample_rate,
        options,
        skip_prep,
    )
