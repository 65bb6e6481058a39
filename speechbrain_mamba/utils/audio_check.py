"""One check of the audio files a recipe will train on, run in data
preparation so that a bad file stops the recipe before the first optimiser
step, with the file and the problem named.

:func:`validate_audio_file` checks that a file is readable and complete
(the whole file is decoded and the decoded sample count must equal the one
its header promises; a WAV whose data chunk is cut short is caught from the
chunk size), mono, at the expected sample rate, not empty, and that every
sample is finite. :func:`validate_audio_files` checks a list of files and
reports every failure in one :class:`AudioFileError`.

Decoding a large corpus takes time, so :func:`validate_audio_files` can
keep a record (a JSON file next to the prepared CSVs) of the size and
modification time of every file it checked: a file whose size and time
are unchanged is not decoded again. A cached preparation calls
:func:`recorded_audio_unchanged` to learn whether any recorded file was
changed (or removed) since the check and, if so, prepares again, which
checks the changed files.

Author
------
speechbrain-mamba developers
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import soundfile as sf

from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.io import PathLike

#: Frames decoded per read when a whole file is checked.
BLOCK_FRAMES = 1 << 16
#: Failures listed in the message of an aggregated error.
SHOWN_FAILURES = 10
_RECORD_FORMAT = 1
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


class AudioFileError(ValueError):
    """An audio file a recipe cannot use (unreadable, truncated, not mono,
    wrong sample rate, empty, or non-finite samples).

    Arguments
    ---------
    failures : list of (str, str)
        ``(path, message)`` of every bad file; each message names the file,
        the problem and what the recipe expects.

    Example
    -------
    >>> err = AudioFileError([("a.wav", "a.wav is empty (0 samples)")])
    >>> str(err), err.path, isinstance(err, ValueError)
    ('a.wav is empty (0 samples)', 'a.wav', True)
    """

    def __init__(self, failures: List[tuple]):
        self.failures = list(failures)
        self.path = self.failures[0][0]
        messages = [message for _, message in self.failures]
        if len(messages) == 1:
            text = messages[0]
        else:
            shown = "\n".join(f"  - {m}" for m in messages[:SHOWN_FAILURES])
            more = len(messages) - SHOWN_FAILURES
            if more > 0:
                shown += f"\n  ... and {more} more"
            text = f"{len(messages)} audio files failed the check:\n{shown}"
        super().__init__(text)


@dataclass(frozen=True)
class AudioFileInfo:
    """What a passed check learned about a file.

    Arguments
    ---------
    path : str
        The file.
    frames : int
        Number of samples.
    sample_rate : int
        Sample rate in Hz.
    """

    path: str
    frames: int
    sample_rate: int

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate


def _fail(path: str, problem: str, advice: str) -> AudioFileError:
    message = f"audio file {path} {problem}"
    if advice:
        message += f" ({advice})"
    return AudioFileError([(path, message)])


def _wav_data_shortfall(path: str) -> Optional[tuple]:
    """``(declared, present)`` bytes of a RIFF/WAVE data chunk that is cut
    short, or None (complete, size unknown, or not a WAV file)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fin:
        head = fin.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        while True:
            chunk = fin.read(8)
            if len(chunk) < 8:
                return None
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = size - fin.tell()
                if declared in _UNKNOWN_WAV_SIZES or declared <= present:
                    return None
                return declared, present
            fin.seek(declared + (declared & 1), os.SEEK_CUR)


def validate_audio_file(
    path: PathLike,
    expected_rate: Optional[int],
    advice: str = "",
) -> AudioFileInfo:
    """Checks that a recipe can use an audio file, decoding all of it.

    Arguments
    ---------
    path : str or os.PathLike
        Audio file (any format libsndfile reads: wav, flac, ogg...).
    expected_rate : int or None
        Sample rate the recipe expects in Hz; None accepts any rate (for
        readers that resample).
    advice : str
        Appended to the error message (e.g. how to convert the corpus).

    Returns
    -------
    AudioFileInfo
        Sample count and rate of the file.

    Raises
    ------
    AudioFileError
        Naming the file, the problem and what the recipe expects: missing
        or unreadable, truncated or corrupt (fewer decoded samples than the
        header promises), not mono, another sample rate, empty, or NaN /
        infinite samples.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "tone.wav"
    >>> sf.write(str(path), np.full(800, 0.1), 8000)
    >>> validate_audio_file(path, 8000).duration
    0.1
    >>> validate_audio_file(path, 16000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_mamba...AudioFileError: ... 8000 Hz; expected 16000 Hz
    """
    path = str(path)
    if not os.path.isfile(path):
        raise _fail(path, "does not exist (the recipe lists it)", advice)
    try:
        info = sf.info(path)
    except (RuntimeError, sf.SoundFileError) as err:
        message = f"cannot read audio file {path}: {err}"
        if advice:
            message += f" ({advice})"
        raise AudioFileError([(path, message)]) from err
    if info.channels != 1:
        raise _fail(
            path,
            f"has {info.channels} channels; the recipe expects mono "
            "(1 channel) audio",
            advice,
        )
    if expected_rate is not None and info.samplerate != expected_rate:
        raise _fail(
            path,
            f"has sample rate {info.samplerate} Hz; expected "
            f"{expected_rate} Hz",
            advice,
        )
    if info.frames <= 0:
        raise _fail(path, "is empty (0 samples)", advice)
    shortfall = _wav_data_shortfall(path)
    if shortfall is not None:
        raise _fail(
            path,
            f"is truncated: its header declares {shortfall[0]} bytes of "
            f"samples but the file holds {shortfall[1]}; the recipe expects "
            "complete files",
            advice,
        )
    decoded = 0
    try:
        with sf.SoundFile(path) as audio:
            while True:
                block = audio.read(BLOCK_FRAMES, dtype="float32")
                if len(block) == 0:
                    break
                finite = np.isfinite(block)
                if not finite.all():
                    first = decoded + int(np.argmin(finite))
                    raise _fail(
                        path,
                        f"holds NaN or infinite samples (the first at "
                        f"sample {first}); the recipe expects finite audio",
                        advice,
                    )
                decoded += len(block)
    except (RuntimeError, sf.SoundFileError) as err:
        raise _fail(
            path,
            f"is truncated or corrupt: decoding failed after {decoded} of "
            f"{info.frames} samples ({err}); the recipe expects complete, "
            "readable files",
            advice,
        ) from err
    if decoded != info.frames:
        raise _fail(
            path,
            f"is truncated or corrupt: its header promises {info.frames} "
            f"samples but {decoded} were decoded; the recipe expects "
            "complete files",
            advice,
        )
    return AudioFileInfo(path, int(info.frames), int(info.samplerate))


def _fingerprint(path: str) -> Optional[List[int]]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_record(record_file: Optional[PathLike]) -> Dict[str, dict]:
    if record_file is None or not Path(record_file).is_file():
        return {}
    try:
        record = json.loads(Path(record_file).read_text(encoding="utf-8"))
    except ValueError:
        return {}
    if not isinstance(record, dict) or record.get("format") != _RECORD_FORMAT:
        return {}
    files = record.get("files")
    return files if isinstance(files, dict) else {}


def validate_audio_files(
    paths: Iterable[PathLike],
    expected_rate: Optional[int],
    record_file: Optional[PathLike] = None,
    advice: str = "",
) -> List[AudioFileInfo]:
    """Checks every file with :func:`validate_audio_file` and reports all
    failures at once.

    Arguments
    ---------
    paths : iterable of str or os.PathLike
        Audio files.
    expected_rate : int or None
        Sample rate every file must have (None: any).
    record_file : str or os.PathLike, optional
        JSON record of the checked files (rewritten atomically): a file
        whose size and modification time match a passed entry of the same
        sample rate is not decoded again.
    advice : str
        Appended to every error message.

    Returns
    -------
    list of AudioFileInfo
        In the order of ``paths``.

    Raises
    ------
    AudioFileError
        Listing every bad file with its problem (the files that passed are
        recorded all the same).

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> sf.write(str(folder / "a.wav"), np.zeros(160), 16000)
    >>> sf.write(str(folder / "b.wav"), np.zeros((160, 2)), 16000)
    >>> sf.write(str(folder / "c.wav"), np.zeros(160), 8000)
    >>> try:
    ...     validate_audio_files(sorted(folder.glob("*.wav")), 16000)
    ... except AudioFileError as err:
    ...     print([Path(p).name for p, _ in err.failures])
    ['b.wav', 'c.wav']
    """
    recorded = _read_record(record_file)
    infos: List[AudioFileInfo] = []
    failures: List[tuple] = []
    updated: Dict[str, dict] = {}
    for path in paths:
        path = os.path.abspath(path)
        fingerprint = _fingerprint(path)
        entry = recorded.get(path)
        if (
            fingerprint is not None
            and entry is not None
            and entry.get("fingerprint") == fingerprint
            and "frames" in entry
            and expected_rate in (None, entry.get("sample_rate"))
        ):
            info = AudioFileInfo(path, entry["frames"], entry["sample_rate"])
        else:
            try:
                info = validate_audio_file(path, expected_rate, advice)
            except AudioFileError as err:
                failures.extend(err.failures)
                if fingerprint is not None:
                    updated[path] = {
                        "fingerprint": fingerprint,
                        "error": err.failures[0][1],
                    }
                continue
        infos.append(info)
        updated[path] = {
            "fingerprint": fingerprint,
            "frames": info.frames,
            "sample_rate": info.sample_rate,
        }
    if record_file is not None:
        record = {"format": _RECORD_FORMAT, "files": updated}
        atomic_write_text(Path(record_file), json.dumps(record, indent=0))
    if failures:
        raise AudioFileError(failures)
    return infos


def recorded_audio_unchanged(record_file: PathLike) -> bool:
    """Whether every file of a record still passes without a new check.

    Arguments
    ---------
    record_file : str or os.PathLike
        Record written by :func:`validate_audio_files`.

    Returns
    -------
    bool
        False when the record is missing or unreadable, when a recorded
        file failed its check, or when one was removed or changed (size or
        modification time) since; a cached preparation then prepares again.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> sf.write(str(folder / "a.flac"), np.zeros(1600), 16000)
    >>> record = folder / "record.json"
    >>> _ = validate_audio_files([folder / "a.flac"], 16000, record)
    >>> recorded_audio_unchanged(record)
    True
    >>> sf.write(str(folder / "a.flac"), np.zeros(800), 16000)
    >>> recorded_audio_unchanged(record)
    False
    """
    record_file = Path(record_file)
    if not record_file.is_file():
        return False
    recorded = _read_record(record_file)
    if not recorded:
        return False
    return all(
        "frames" in entry and _fingerprint(path) == entry.get("fingerprint")
        for path, entry in recorded.items()
    )
