"""Data preparation of the LibriTTS TTS recipe: manifests from the LibriTTS
folder layout (24 kHz wavs with ``.normalized.txt`` transcripts next to
them), phonemisation, and the symbol table of the text front end.

Layout read::

    data_folder/<split>/<speaker>/<chapter>/<utt>.wav
    data_folder/<split>/<speaker>/<chapter>/<utt>.normalized.txt

Written to ``save_folder``: ``train.json``, ``valid.json``, ``test.json``
(SpeechBrain JSON manifests: ``wav``, ``duration``, ``spk_id``, ``text``,
``phonemes`` as space-separated symbols) and ``text_frontend.json``.
Every wav is checked before training can start
(:mod:`speechbrain_mamba.utils.audio_check`): a file that is unreadable,
truncated, stereo, at another sample rate, empty or not finite stops the
preparation with its path.

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from speechbrain_mamba.tts.text import SymbolTable, TextFrontEnd
from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.audio_check import (
    recorded_audio_unchanged,
    validate_audio_files,
)
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)


#: Name of the saved front end inside ``save_folder``.
FRONTEND_FILE = "text_frontend.json"
OPTIONS_FILE = "prepare_options.json"
#: Record of the checked audio of one split (``.format(split)``).
AUDIO_RECORD = "audio_check_{}.json"
#: Sample rate of LibriTTS.
LIBRITTS_SAMPLE_RATE = 24000
SETS = ("train", "valid", "test")


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))


def scan_split(
    data_folder: PathLike,
    split: str,
    sample_rate: int = LIBRITTS_SAMPLE_RATE,
    record_file: Optional[PathLike] = None,
) -> List[dict]:
    """Utterances of one LibriTTS split, sorted by id, after checking their
    audio with :func:`~speechbrain_mamba.utils.audio_check.
    validate_audio_files`: a file that is unreadable, truncated, not mono,
    at another sample rate, empty or not finite is an error naming it (it
    is never resampled or downmixed behind the user's back).

    Arguments
    ---------
    data_folder : str or Path
        LibriTTS root.
    split : str
        Subset folder, e.g. "train-clean-100".
    sample_rate : int
        Sample rate every file must have.
    record_file : str or Path, optional
        Record of the checked files (unchanged files are not decoded
        again).

    Returns
    -------
    list of dict
        ``id``, ``wav``, ``duration``, ``spk_id``, ``text`` of each
        utterance with a non-empty transcript.

    Raises
    ------
    AudioFileError
        Naming every audio file the recipe cannot use.
    """
    data_folder = Path(data_folder)
    folder = data_folder / split
    if not folder.is_dir():
        found = sorted(p.name for p in data_folder.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"LibriTTS split {split!r} not found in {data_folder} (folders "
            f"there: {found}); expected {folder}/SPEAKER/CHAPTER/*.wav"
        )
    wavs = sorted(folder.glob("*/*/*.wav"))
    if not wavs:
        raise FileNotFoundError(
            f"no .wav files in {folder} (expected the LibriTTS layout "
            f"{split}/SPEAKER/CHAPTER/SPEAKER_CHAPTER_*.wav)"
        )
    entries = []
    for wav in wavs:
        utt = wav.name[: -len(".wav")]
        text_file = wav.with_name(f"{utt}.normalized.txt")
        if not text_file.is_file():
            raise FileNotFoundError(
                f"transcript {text_file} missing for {wav} (LibriTTS keeps "
                "the normalised text in <utt>.normalized.txt)"
            )
        text = " ".join(text_file.read_text(encoding="utf-8").split())
        if not text:
            logger.warning("skipping %s: empty transcript", wav)
            continue
        entries.append(
            {
                "id": utt,
                "wav": str(wav.resolve()),
                "duration": None,  # known once the audio is checked
                "spk_id": wav.parent.parent.name,
                "text": text,
            }
        )
    infos = validate_audio_files(
        [e["wav"] for e in entries], sample_rate, record_file
    )
    for entry, info in zip(entries, infos):
        entry["duration"] = info.duration
    return entries


def prepare_libritts(
    data_folder: PathLike,
    save_folder: PathLike,
    train_splits: Sequence[str] = ("train-clean-100",),
    valid_splits: Sequence[str] = ("dev-clean",),
    test_splits: Sequence[str] = ("test-clean",),
    text_backend: str = "phonemes",
    language: str = "en-us",
    min_duration: float = 0.0,
    max_duration: Optional[float] = None,
    skip_prep: bool = False,
    sample_rate: int = LIBRITTS_SAMPLE_RATE,
) -> Dict[str, Path]:
    """Writes the manifests and the text front end of the recipe.

    Every audio file is checked first (see :func:`scan_split`). A second
    call with the same options returns at once unless an audio file was
    changed or removed since; then the changed files are checked again
    (the others are not decoded again) and the manifests rewritten.

    Arguments
    ---------
    data_folder : str or Path
        LibriTTS root.
    save_folder : str or Path
        Where the manifests go.
    train_splits, valid_splits, test_splits : sequence of str
        LibriTTS subsets of each set.
    text_backend : str
        "phonemes", "characters" or "auto" (phonemes when espeak-ng is
        usable, characters otherwise).
    language : str
        espeak-ng language.
    min_duration, max_duration : float
        Training and validation utterances outside this range (seconds)
        are left out.
    skip_prep : bool
        Only check that the outputs exist.
    sample_rate : int
        Sample rate every audio file must have (LibriTTS: 24 kHz).

    Returns
    -------
    dict
        Set name ("train", "valid", "test", "frontend") -> file.

    Example
    -------
    >>> prepare_libritts("/nonexistent", "/tmp/x")
    Traceback (most recent call last):
    ...
    FileNotFoundError: LibriTTS data_folder /nonexistent not found ...
    """
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    outputs = {s: save_folder / f"{s}.json" for s in SETS}
    outputs["frontend"] = save_folder / FRONTEND_FILE
    options = dict(
        data_folder=str(data_folder.resolve()),
        splits={
            "train": list(train_splits),
            "valid": list(valid_splits),
            "test": list(test_splits),
        },
        text_backend=text_backend,
        language=language,
        min_duration=min_duration,
        max_duration=max_duration,
        sample_rate=sample_rate,
    )
    done = all(p.is_file() for p in outputs.values())
    if skip_prep:
        if not done:
            raise FileNotFoundError(
                f"skip_prep is set but {save_folder} lacks the prepared "
                "manifests"
            )
        return outputs
    options_file = save_folder / OPTIONS_FILE
    all_splits = dict.fromkeys(
        split for splits in options["splits"].values() for split in splits
    )
    records = {s: save_folder / AUDIO_RECORD.format(s) for s in all_splits}
    if done and options_file.is_file():
        unchanged = all(map(recorded_audio_unchanged, records.values()))
        if json.loads(options_file.read_text()) == options and unchanged:
            logger.info("LibriTTS manifests in %s are ready", save_folder)
            return outputs
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"LibriTTS data_folder {data_folder} not found (expected the "
            "LibriTTS root holding train-clean-100/, dev-clean/, ...)"
        )
    if text_backend == "auto":
        front = TextFrontEnd.auto(language)
    else:
        front = TextFrontEnd(text_backend, language)
    save_folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, splits in options["splits"].items():
        entries = [
            e
            for split in splits
            for e in scan_split(data_folder, split, sample_rate, records[split])
        ]
        if name != "test":
            entries = [
                e
                for e in entries
                if e["duration"] >= min_duration
                and (max_duration is None or e["duration"] <= max_duration)
            ]
        if not entries:
            raise ValueError(
                f"no {name} utterances left in {splits} (duration range "
                f"[{min_duration}, {max_duration}] s)"
            )
        sets[name] = entries
    for name, entries in sets.items():
        chunk = 256
        bar = tqdm(total=len(entries), desc=f"phonemising {name}", unit="utt")
        for start in range(0, len(entries), chunk):
            part = entries[start : start + chunk]
            tokens = front.tokenize_batch([e["text"] for e in part])
            for entry, symbols in zip(part, tokens):
                entry["phonemes"] = " ".join(symbols)
            bar.update(len(part))
        bar.close()
    front.symbols = SymbolTable.build(
        e["phonemes"].split() for e in sets["train"]
    )
    for name, entries in sets.items():
        manifest = {e.pop("id"): e for e in entries}
        _write_json(outputs[name], manifest)
    front.save(outputs["frontend"])
    _write_json(options_file, options)
    logger.info(
        "LibriTTS prepared in %s: %s utterances, %d symbols (%s)",
        save_folder,
        {k: len(v) for k, v in sets.items()},
        len(front.symbols),
        front.backend,
    )
    return outputs
