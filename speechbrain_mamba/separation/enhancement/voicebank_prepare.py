"""Data preparation for VoiceBank-DEMAND (speech enhancement).

Reads the corpus layout (``clean_trainset_28spk_wav``,
``noisy_trainset_28spk_wav``, ``clean_testset_wav``, ``noisy_testset_wav``;
SpeechBrain's 16 kHz copies with a ``_16k`` suffix are used when present)
and writes CSV files in the format of the separation recipes with one
source: ``ID, duration, mix_wav`` (the noisy file), ``s1_wav`` (the clean
file), paths relative to ``$data_root``. The training speakers p226 and p287
form the validation set, as in SpeechBrain's VoiceBank recipes. Every
problem (missing folder, noisy file without clean file, a file that is
unreadable, truncated, not mono, at another sample rate, empty or not
finite (:mod:`speechbrain_mamba.utils.audio_check`), length mismatch) stops
the preparation with the path that causes it. Nothing is rewritten when the
CSV files exist for the same options and no audio file changed since they
were written.

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Dict, Sequence

from speechbrain_mamba.utils.atomic import atomic_write_csv, atomic_write_text
from speechbrain_mamba.utils.audio_check import (
    recorded_audio_unchanged,
    validate_audio_files,
)
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

COLUMNS = ["ID", "duration", "mix_wav", "s1_wav"]
TRAIN_DIRS = ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav")
TEST_DIRS = ("clean_testset_wav", "noisy_testset_wav")
VALID_SPEAKERS = ("p226", "p287")
MARKER = "voicebank_prep.json"
#: Records of the checked audio of the training and test folders.
AUDIO_RECORDS = {
    "train": "voicebank_audio_check_train.json",
    "test": "voicebank_audio_check_test.json",
}
RATE_ADVICE = (
    "VoiceBank-DEMAND is distributed at 48 kHz; the recipe reads 16 kHz "
    "copies from *_16k folders"
)


def _find_dir(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}_16k", root / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"VoiceBank folder {root / name} not found (nor {name}_16k); "
        "data_folder must hold clean_trainset_28spk_wav, "
        "noisy_trainset_28spk_wav, clean_testset_wav and noisy_testset_wav"
    )


def _rows(
    root: Path,
    clean_dir: Path,
    noisy_dir: Path,
    sample_rate: int,
    record_file: Path,
):
    noisy_files = sorted(noisy_dir.glob("*.wav"))
    if not noisy_files:
        raise FileNotFoundError(f"no .wav files in {noisy_dir}")
    pairs = []
    for noisy in noisy_files:
        clean = clean_dir / noisy.name
        if not clean.is_file():
            raise FileNotFoundError(
                f"clean file {clean} of noisy file {noisy} is missing"
            )
        pairs.append((noisy, clean))
    infos = validate_audio_files(
        [path for pair in pairs for path in pair],
        sample_rate,
        record_file,
        advice=RATE_ADVICE,
    )
    rows = []
    for (noisy, clean), noisy_info, clean_info in zip(
        pairs, infos[::2], infos[1::2]
    ):
        frames = [noisy_info.frames, clean_info.frames]
        if frames[0] != frames[1]:
            raise ValueError(
                f"{noisy} and {clean} differ in length ({frames} samples)"
            )
        rows.append(
            {
                "ID": noisy.stem,
                "duration": round(frames[0] / sample_rate, 4),
                "mix_wav": "$data_root/" + noisy.relative_to(root).as_posix(),
                "s1_wav": "$data_root/" + clean.relative_to(root).as_posix(),
            }
        )
    return rows


def prepare_voicebank(
    data_folder: PathLike,
    save_folder: PathLike,
    sample_rate: int = 16000,
    valid_speakers: Sequence[str] = VALID_SPEAKERS,
    skip_prep: bool = False,
) -> Dict[str, Path]:
    """Writes ``voicebank_{train,valid,test}.csv``.

    Arguments
    ---------
    data_folder : str or os.PathLike
        VoiceBank-DEMAND root.
    save_folder : str or os.PathLike
        Where the CSV files go.
    sample_rate : int
        Expected sample rate of every file.
    valid_speakers : sequence of str
        Training speakers held out for validation.
    skip_prep : bool
        Only check that the CSV files exist.

    Returns
    -------
    dict
        ``{"train": path, "valid": path, "test": path}``.

    Example
    -------
    >>> prepare_voicebank("/nonexistent", "/tmp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: VoiceBank data folder /nonexistent does not exist
    """
    save = Path(save_folder)
    paths = {s: save / f"voicebank_{s}.csv" for s in ("train", "valid", "test")}
    if skip_prep:
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                "skip_prep is set but these CSV files do not exist: "
                + ", ".join(missing)
            )
        return paths
    root = Path(data_folder)
    if not root.is_dir():
        raise FileNotFoundError(f"VoiceBank data folder {root} does not exist")
    options = {
        "data_folder": str(root.resolve()),
        "sample_rate": int(sample_rate),
        "valid_speakers": list(valid_speakers),
    }
    marker = save / MARKER
    records = {k: save / name for k, name in AUDIO_RECORDS.items()}
    if marker.is_file() and all(p.is_file() for p in paths.values()):
        unchanged = all(map(recorded_audio_unchanged, records.values()))
        if json.loads(marker.read_text(encoding="utf-8")) == options:
            if unchanged:
                logger.info("VoiceBank CSV files already prepared in %s", save)
                return paths
            logger.info("audio files changed since the preparation in %s", save)
    save.mkdir(parents=True, exist_ok=True)
    train_rows = _rows(
        root,
        *(_find_dir(root, name) for name in TRAIN_DIRS),
        sample_rate,
        records["train"],
    )
    test_rows = _rows(
        root,
        *(_find_dir(root, name) for name in TEST_DIRS),
        sample_rate,
        records["test"],
    )
    valid = set(valid_speakers)
    split = {
        "train": [r for r in train_rows if r["ID"].split("_")[0] not in valid],
        "valid": [r for r in train_rows if r["ID"].split("_")[0] in valid],
        "test": test_rows,
    }
    for name, rows in split.items():
        if not rows:
            raise ValueError(
                f"the {name} split is empty (valid speakers: "
                f"{sorted(valid)}; check data_folder)"
            )
        atomic_write_csv(paths[name], COLUMNS, rows)
        logger.info("wrote %s (%d utterances)", paths[name], len(rows))
    atomic_write_text(marker, json.dumps(options, sort_keys=True))
    return paths
