"""Audio lists for the analysis tools: utterances from a CSV file or a
folder, optional per-utterance labels, reading with sample-rate checks and
padded batches.

A CSV needs an ``ID`` column and an audio column (``wav``, ``mix_wav``,
``noisy_wav``, ``path`` or ``file``, or the one named); ``$data_root`` in
paths is replaced by ``data_root`` (default: the CSV's folder). A label
column may hold, per utterance,

- frame labels: a ``.npy`` / ``.pt`` file of integers or the integers
  themselves separated by spaces (discrete labels), or
- an audio file (a continuous target such as the clean source of a
  mixture).

Author
------
speechbrain-mamba developers
"""

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch

from speechbrain_mamba.utils.io import PathLike

AUDIO_COLUMNS = ("wav", "mix_wav", "noisy_wav", "path", "file")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


@dataclass
class Utterance:
    """One utterance to analyse.

    Arguments
    ---------
    id : str
        Utterance ID.
    path : str
        Audio file.
    label : str, optional
        Raw label field (see the module docstring).
    """

    id: str
    path: str
    label: Optional[str] = None

    @property
    def label_is_audio(self) -> bool:
        """The label is an audio file (continuous target)."""
        return self.label is not None and self.label.lower().endswith(
            AUDIO_EXTENSIONS
        )


def list_utterances(
    source: PathLike,
    audio_column: Optional[str] = None,
    label_column: Optional[str] = None,
    data_root: Optional[PathLike] = None,
    max_utterances: Optional[int] = None,
    seed: int = 0,
    label_file: Optional[PathLike] = None,
) -> List[Utterance]:
    """Lists the utterances of a CSV file or of a folder (recursively).

    Arguments
    ---------
    source : str or os.PathLike
        CSV file or folder of audio files.
    audio_column : str, optional
        Audio column of the CSV (default: the first of
        :data:`AUDIO_COLUMNS` present).
    label_column : str, optional
        Label column of the CSV.
    data_root : str or os.PathLike, optional
        Replaces ``$data_root`` in the CSV.
    max_utterances : int, optional
        Keep a random subset of this size (seeded), in ID order.
    seed : int
        Seed of the subset.
    label_file : str or os.PathLike, optional
        Frame labels in a file of ``ID label label ...`` lines (e.g. the
        ``.km`` targets of the SSL recipe), instead of ``label_column``.

    Returns
    -------
    list of Utterance
        Sorted by ID.

    Example
    -------
    >>> list_utterances("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: audio source /nonexistent is neither a CSV file ...
    """
    source = Path(source)
    if source.is_dir():
        if label_column:
            raise ValueError("label_column needs a CSV file, not a folder")
        files = sorted(
            p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
        )
        if not files:
            raise FileNotFoundError(
                f"no audio files ({AUDIO_EXTENSIONS}) in {source}"
            )
        utts = [
            Utterance(str(p.relative_to(source).with_suffix("")), str(p))
            for p in files
        ]
    elif source.is_file():
        utts = _read_csv(source, audio_column, label_column, data_root)
    else:
        raise FileNotFoundError(
            f"audio source {source} is neither a CSV file nor a folder"
        )
    if label_file is not None:
        if label_column:
            raise ValueError("give label_column or label_file, not both")
        utts = _attach_label_file(utts, Path(label_file))
    utts.sort(key=lambda u: u.id)
    if max_utterances is not None and len(utts) > max_utterances:
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(utts), int(max_utterances), replace=False))
        utts = [utts[i] for i in keep]
    return utts


def _attach_label_file(utts: List[Utterance], path: Path) -> List[Utterance]:
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    labels = {}
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            parts = line.split(" ", 1)
            if len(parts) == 2:
                labels[parts[0]] = parts[1].strip()
    missing = [u.id for u in utts if u.id not in labels]
    if missing:
        raise ValueError(
            f"{path} has no labels for {len(missing)} utterances (e.g. "
            f"{missing[:3]})"
        )
    return [Utterance(u.id, u.path, labels[u.id]) for u in utts]


def _read_csv(path, audio_column, label_column, data_root) -> List[Utterance]:
    root = str(Path(data_root) if data_root else path.parent)
    with open(path, encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        columns = reader.fieldnames or []
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has no rows")
    if audio_column is None:
        found = [c for c in AUDIO_COLUMNS if c in columns]
        if not found:
            raise ValueError(
                f"{path} has none of the audio columns {AUDIO_COLUMNS} "
                f"(columns: {columns}); name one with audio_column"
            )
        audio_column = found[0]
    for column in (audio_column, label_column):
        if column and column not in columns:
            raise ValueError(
                f"{path} has no column {column!r} (columns: {columns})"
            )
    id_column = "ID" if "ID" in columns else None
    utts = []
    for index, row in enumerate(rows):
        audio = row[audio_column].replace("$data_root", root)
        label = None
        if label_column:
            label = row[label_column].replace("$data_root", root).strip()
        utt_id = row[id_column] if id_column else Path(audio).stem
        utts.append(Utterance(utt_id or str(index), audio, label))
    return utts


def read_audio(
    path: PathLike, sample_rate: int, resample: bool = False
) -> torch.Tensor:
    """Reads a mono file at ``sample_rate`` (resampled when asked).

    Arguments
    ---------
    path : str or os.PathLike
        Audio file.
    sample_rate : int
        Expected rate.
    resample : bool
        Resample other rates instead of failing.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32.

    Example
    -------
    >>> read_audio("/nonexistent.wav", 16000)
    Traceback (most recent call last):
    ...
    FileNotFoundError: audio file not found: /nonexistent.wav
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty (0 samples)")
    if data.shape[1] != 1:
        raise ValueError(
            f"{path} has {data.shape[1]} channels; mono is expected"
        )
    wav = data[:, 0]
    if rate != sample_rate:
        if not resample:
            raise ValueError(
                f"{path} has sample rate {rate} Hz but the model expects "
                f"{sample_rate} Hz (pass --resample to convert)"
            )
        from speechbrain_mamba.data.espeak import resample as resample_fn

        wav = resample_fn(wav, rate, sample_rate).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(wav))


def read_frame_labels(field: str) -> np.ndarray:
    """Parses a discrete label field: a ``.npy`` / ``.pt`` file or integers
    separated by spaces.

    Arguments
    ---------
    field : str
        The CSV field.

    Returns
    -------
    numpy.ndarray
        ``[L]`` int64 labels.

    Example
    -------
    >>> read_frame_labels("3 3 1 0")
    array([3, 3, 1, 0])
    """
    field = field.strip()
    if field.endswith(".npy"):
        labels = np.load(field)
    elif field.endswith(".pt"):
        labels = torch.load(field, map_location="cpu", weights_only=True)
        labels = np.asarray(labels)
    else:
        try:
            labels = np.array([int(v) for v in field.split()])
        except ValueError as err:
            raise ValueError(
                f"label field {field[:40]!r} is neither a .npy/.pt file, an "
                "audio file nor integers separated by spaces"
            ) from err
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise ValueError(f"empty label sequence in {field[:40]!r}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"frame labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


def pad_batch(
    wavs: Sequence[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pads waveforms to ``[B, T_max]`` and returns relative lengths.

    Arguments
    ---------
    wavs : sequence of torch.Tensor
        ``[T_i]`` signals.

    Returns
    -------
    wavs : torch.Tensor
        ``[B, T_max]``.
    lengths : torch.Tensor
        ``[B]`` relative lengths.

    Example
    -------
    >>> batch, lens = pad_batch([torch.ones(4), torch.ones(2)])
    >>> batch.shape, lens.tolist()
    (torch.Size([2, 4]), [1.0, 0.5])
    """
    longest = max(int(w.shape[0]) for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, : w.shape[0]] = w
    lengths = torch.tensor([w.shape[0] / longest for w in wavs])
    return batch, lengths
