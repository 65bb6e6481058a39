"""Dynamic mixing: new training mixtures drawn on the fly from single-speaker
utterances (WSJ0 ``si_tr_s`` for WSJ0-2mix, LibriSpeech for LibriMix).

Each mixture takes ``num_spks`` different speakers (speakers are drawn with
probability proportional to their number of utterances), one random
utterance of each, and a random window of the shortest length (capped by
``max_length``). Gains follow the WSJ0-2mix recipe of SpeechBrain: the first
source gets a level of N(-27.43, 2.57) dB (clipped to [-45, 0]), each other
source the first level plus N(-2.51, 2.66) dB; the mixture and its sources
are then scaled so that no peak exceeds 0.9. Files at another sample rate are
resampled; every file is checked once, when the speaker table is built
(before training), and a file that is unreadable, truncated, stereo, empty
or not finite is an error naming it. All randomness uses torch's generator,
which DataLoader workers seed independently, so workers never produce the
same mixtures.

Author
------
speechbrain-mamba developers
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_mamba.separation.dataio import output_keys
from speechbrain_mamba.utils.audio_check import validate_audio_files
from speechbrain_mamba.utils.io import PathLike, read_audio

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass(frozen=True)
class SourceFile:
    """One single-speaker utterance usable for dynamic mixing.

    Arguments
    ---------
    path : str
        Audio file.
    frames : int
        Number of samples.
    sample_rate : int
        Sample rate of the file in Hz.
    """

    path: str
    frames: int
    sample_rate: int


def speaker_of(path: Path, folder: Path) -> str:
    """Returns the speaker of an utterance.

    The speaker is the first folder below ``folder`` (``si_tr_s/<SPK>/...``
    for WSJ0, ``train-clean-360/<SPK>/<CHAP>/...`` for LibriSpeech), or the
    first three characters of the file name (WSJ0 naming) for files placed
    directly in ``folder``.

    Arguments
    ---------
    path : pathlib.Path
        Utterance file.
    folder : pathlib.Path
        The dynamic-mixing base folder.

    Returns
    -------
    str
        Speaker identifier.

    Example
    -------
    >>> speaker_of(Path("/d/si_tr_s/01a/01aa0101.wav"), Path("/d/si_tr_s"))
    '01a'
    >>> speaker_of(Path("/d/01ba0203.wav"), Path("/d"))
    '01b'
    """
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else path.stem[:3]


def build_speaker_table(
    folder: PathLike,
    extensions: tuple = AUDIO_EXTENSIONS,
    record_file: Optional[PathLike] = None,
) -> dict[str, list[SourceFile]]:
    """Lists the utterances of every speaker below ``folder``, after checking
    each file with :func:`~speechbrain_mamba.utils.audio_check.
    validate_audio_files` (decodes to the end, mono, finite, not empty; any
    sample rate, since the mixer resamples), so that a bad source stops the
    recipe before training instead of in the middle of an epoch.

    Arguments
    ---------
    folder : str or os.PathLike
        Folder of single-speaker utterances (searched recursively).
    extensions : tuple of str
        File extensions to use.
    record_file : str or os.PathLike, optional
        Record of the checked files: files unchanged since the last check
        are not decoded again.

    Returns
    -------
    dict
        Speaker -> list of :class:`SourceFile`.

    Raises
    ------
    AudioFileError
        Naming every file of the folder the mixer cannot use.

    Example
    -------
    >>> build_speaker_table("/does/not/exist")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: dynamic mixing folder (base_folder_dm) not found: ...
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dynamic mixing folder (base_folder_dm) not found: {folder}"
        )
    table: dict[str, list[SourceFile]] = {}
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in extensions
    )
    infos = validate_audio_files(
        files,
        None,
        record_file,
        advice="listed as a dynamic mixing source of base_folder_dm",
    )
    for path, info in zip(files, infos):
        table.setdefault(speaker_of(path, folder), []).append(
            SourceFile(str(path), info.frames, info.sample_rate)
        )
    if not table:
        raise FileNotFoundError(
            f"no audio files ({', '.join(extensions)}) in the dynamic mixing "
            f"folder {folder}"
        )
    return table


class DynamicMixer:
    """Draws random mixtures from a speaker table.

    Arguments
    ---------
    speaker_table : dict
        Output of :func:`build_speaker_table`.
    num_spks : int
        Number of sources per mixture.
    sample_rate : int
        Output sample rate (files at another rate are resampled).
    max_length : int, optional
        Maximum mixture length in samples.
    first_gain_db : tuple of float
        Mean and standard deviation of the first source level (dB).
    relative_gain_db : tuple of float
        Mean and standard deviation of the other sources' level relative to
        the first (dB).
    peak : float
        Maximum absolute value of the mixture and the sources.

    Example
    -------
    >>> tmpdir = getfixture("tmpdir")
    >>> from speechbrain_mamba.utils.atomic import atomic_write_wav
    >>> for spk in ["aaa", "bbb", "ccc"]:
    ...     p = tmpdir / spk / f"{spk}01.wav"
    ...     _ = atomic_write_wav(p, torch.randn(400) * 0.1, 8000)
    >>> mixer = DynamicMixer(build_speaker_table(tmpdir), 2, 8000)
    >>> mix, sources = mixer()
    >>> sources.shape
    torch.Size([2, 400])
    >>> bool(torch.allclose(mix, sources.sum(0)))
    True
    """

    def __init__(
        self,
        speaker_table: dict[str, list[SourceFile]],
        num_spks: int,
        sample_rate: int,
        max_length: Optional[int] = None,
        first_gain_db: tuple = (-27.43, 2.57),
        relative_gain_db: tuple = (-2.51, 2.66),
        peak: float = 0.9,
    ):
        if len(speaker_table) < num_spks:
            raise ValueError(
                f"dynamic mixing needs at least {num_spks} speakers, the "
                f"folder has {len(speaker_table)}"
            )
        self.speakers = sorted(speaker_table)
        self.table = speaker_table
        self.weights = torch.tensor(
            [float(len(speaker_table[s])) for s in self.speakers]
        )
        self.num_spks = num_spks
        self.sample_rate = sample_rate
        self.max_length = max_length
        self.first_gain_db = first_gain_db
        self.relative_gain_db = relative_gain_db
        self.peak = peak
        rates = {f.sample_rate for fs in speaker_table.values() for f in fs}
        if rates != {sample_rate}:
            logger.info(
                "dynamic mixing: resampling sources at %s Hz to %d Hz",
                sorted(rates),
                sample_rate,
            )

    def _length(self, source: SourceFile) -> int:
        return source.frames * self.sample_rate // source.sample_rate

    def _read_window(
        self, source: SourceFile, length: int, generator
    ) -> torch.Tensor:
        """Reads a random window of ``length`` output samples."""
        ratio = source.sample_rate / self.sample_rate
        file_len = min(source.frames, math.ceil(length * ratio) + 1)
        max_start = source.frames - file_len
        start = 0
        if max_start > 0:
            start = int(
                torch.randint(0, max_start + 1, (1,), generator=generator)
            )
        if source.sample_rate == self.sample_rate:
            return read_audio(
                source.path, source.sample_rate, start, start + length
            )
        import torchaudio

        wav = read_audio(
            source.path, source.sample_rate, start, start + file_len
        )
        wav = torchaudio.functional.resample(
            wav, source.sample_rate, self.sample_rate
        )
        if wav.numel() < length:
            wav = torch.nn.functional.pad(wav, (0, length - wav.numel()))
        return wav[:length]

    def _gain(self, mean_std: tuple, generator) -> float:
        mean, std = mean_std
        return mean + std * float(torch.randn((), generator=generator))

    def __call__(
        self, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws one mixture.

        Arguments
        ---------
        generator : torch.Generator, optional
            Random generator (default: torch's global one).

        Returns
        -------
        mixture : torch.Tensor
            ``[T]``.
        sources : torch.Tensor
            ``[num_spks, T]``; ``mixture == sources.sum(0)``.
        """
        picks = torch.multinomial(
            self.weights, self.num_spks, replacement=False, generator=generator
        )
        files = []
        for idx in picks.tolist():
            utts = self.table[self.speakers[idx]]
            choice = int(torch.randint(0, len(utts), (1,), generator=generator))
            files.append(utts[choice])
        length = min(self._length(f) for f in files)
        if self.max_length is not None:
            length = min(length, int(self.max_length))

        sources = []
        first_db = None
        for i, source in enumerate(files):
            wav = self._read_window(source, length, generator)
            if i == 0:
                level_db = min(
                    max(self._gain(self.first_gain_db, generator), -45), 0
                )
                first_db = level_db
            else:
                level_db = first_db + self._gain(
                    self.relative_gain_db, generator
                )
                level_db = min(max(level_db, -45), 0)
            amplitude = wav.abs().mean().clamp_min(1e-8)
            sources.append(wav * (10 ** (level_db / 20)) / amplitude)
        sources = torch.stack(sources)
        mixture = sources.sum(0)
        top = torch.maximum(mixture.abs().max(), sources.abs().max())
        top = top.clamp_min(1e-8)
        scale = self.peak / top
        return mixture * scale, sources * scale


def dynamic_mixing_dataset(
    csv_path: PathLike,
    data_folder: PathLike,
    mixer: DynamicMixer,
    limit: Optional[int] = None,
) -> DynamicItemDataset:
    """A training set of the same size as ``csv_path`` whose items are fresh
    dynamic mixtures (the CSV rows only set the epoch length).

    Arguments
    ---------
    csv_path : str or os.PathLike
        Training CSV (see :mod:`speechbrain_mamba.separation.prepare`).
    data_folder : str or os.PathLike
        Replaces ``$data_root`` in the CSV.
    mixer : DynamicMixer
        Draws the mixtures.
    limit : int, optional
        Keeps only the first ``limit`` rows (shorter epochs).

    Returns
    -------
    DynamicItemDataset
        Items with keys ``id``, ``mix_sig``, ``s1_sig``, ...
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data CSV not found: {csv_path}")
    dataset = DynamicItemDataset.from_csv(
        csv_path=str(csv_path), replacements={"data_root": str(data_folder)}
    )
    provides = ["mix_sig"] + [f"s{i + 1}_sig" for i in range(mixer.num_spks)]

    def draw(_id: str):
        mixture, sources = mixer()
        yield mixture
        yield from sources

    sb.dataio.dataset.add_dynamic_item(
        [dataset], draw, takes=["id"], provides=provides
    )
    if limit is not None:
        dataset = dataset.filtered_sorted(select_n=int(limit))
    dataset.set_output_keys(output_keys(mixer.num_spks))
    return dataset
