"""Data preparation for LibriSpeech-format corpora.

Walks the LibriSpeech folder layout::

    DATA/SPLIT/SPK/CHAP/SPK-CHAP-UTT.flac
    DATA/SPLIT/SPK/CHAP/SPK-CHAP.trans.txt   ("SPK-CHAP-UTT TEXT" lines)

and writes one SpeechBrain CSV per split (columns ``ID, duration, wav,
spk_id, wrd``), optionally merging the training splits into one CSV. Every
file of every split (test splits included) is checked before training can
start: it has a transcript, decodes to the end, is mono, at the expected
sample rate, finite and not empty
(:mod:`speechbrain_mamba.utils.audio_check`); problems are reported with
the offending path. CSVs are written atomically, and preparation is skipped
when the CSVs already exist for the same options and no audio file changed
since they were written.

Author
------
speechbrain-mamba developers
"""

import csv
import json
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.audio_check import (
    recorded_audio_unchanged,
    validate_audio_files,
)
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

CSV_HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
OPTIONS_FILE = "opt_librispeech_prepare.json"
#: Record of the checked audio of one split (``.format(split)``).
AUDIO_RECORD = "audio_check_{}.json"


def read_transcripts(split_folder: PathLike) -> Dict[str, str]:
    """Reads every ``*.trans.txt`` below a split folder.

    Arguments
    ---------
    split_folder : str or Path
        A LibriSpeech split folder, e.g. ``LibriSpeech/dev-clean``.

    Returns
    -------
    dict
        Utterance id -> transcript (as written, upper case).

    Example
    -------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> (tmp / "1" / "2").mkdir(parents=True)
    >>> trans = tmp / "1" / "2" / "1-2.trans.txt"
    >>> _ = trans.write_text("1-2-0000 HI THERE\\n")
    >>> read_transcripts(tmp)
    {'1-2-0000': 'HI THERE'}
    """
    transcripts: Dict[str, str] = {}
    for trans in sorted(Path(split_folder).rglob("*.trans.txt")):
        with open(trans, encoding="utf-8") as fin:
            for line_no, line in enumerate(fin, start=1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(" ", 1)
                if len(parts) != 2 or not parts[1].strip():
                    raise ValueError(
                        f"{trans}:{line_no}: expected 'UTT-ID TRANSCRIPT', "
                        f"got {line!r}"
                    )
                utt_id, text = parts
                transcripts[utt_id] = " ".join(text.split())
    return transcripts


def split_rows(
    data_folder: PathLike,
    split: str,
    sample_rate: int = 16000,
    select_n_sentences: Optional[int] = None,
    audio_ext: str = ".flac",
    record_file: Optional[PathLike] = None,
) -> List[List[str]]:
    """Builds the CSV rows of one split, after checking every audio file
    with :func:`~speechbrain_mamba.utils.audio_check.validate_audio_files`
    (readable to the end, mono, at ``sample_rate``, finite, not empty).

    Arguments
    ---------
    data_folder : str or Path
        The LibriSpeech root (the folder holding the split folders).
    split : str
        Split name, e.g. ``"train-clean-100"``.
    sample_rate : int
        Expected sample rate of every file.
    select_n_sentences : int, optional
        Keep only the first N utterances (sorted by id).
    audio_ext : str
        Audio file extension.
    record_file : str or Path, optional
        Record of the checked files (unchanged files are not decoded
        again).

    Returns
    -------
    list
        Rows ``[ID, duration, wav, spk_id, wrd]``, sorted by ID.

    Raises
    ------
    AudioFileError
        Naming every audio file the recipe cannot use.
    """
    split_folder = Path(data_folder) / split
    if not split_folder.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech split folder {split_folder} does not exist "
            f"(expected {data_folder}/{split}/SPK/CHAP/SPK-CHAP-UTT"
            f"{audio_ext})"
        )
    audio_files = sorted(split_folder.rglob(f"*{audio_ext}"))
    if not audio_files:
        raise ValueError(
            f"no {audio_ext} files below {split_folder}; is this a "
            "LibriSpeech-format folder?"
        )
    transcripts = read_transcripts(split_folder)
    if select_n_sentences is not None:
        audio_files = audio_files[:select_n_sentences]
    for path in audio_files:
        utt_id = path.name[: -len(audio_ext)]
        if utt_id not in transcripts:
            raise ValueError(
                f"no transcript for {path} (utterance {utt_id!r} is missing "
                f"from the .trans.txt files of {path.parent})"
            )
    infos = validate_audio_files(audio_files, sample_rate, record_file)
    rows = []
    for path, info in zip(audio_files, infos):
        utt_id = path.name[: -len(audio_ext)]
        spk_id = "-".join(utt_id.split("-")[:2])
        rows.append(
            [
                utt_id,
                f"{info.duration:.4f}",
                str(path.resolve()),
                spk_id,
                transcripts[utt_id],
            ]
        )
    return rows


def write_csv(rows: Iterable[Sequence[str]], csv_file: PathLike) -> None:
    """Writes rows under :data:`CSV_HEADER`, atomically.

    Arguments
    ---------
    rows : iterable
        Rows of ``[ID, duration, wav, spk_id, wrd]``.
    csv_file : str or Path
        Destination.

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "x.csv"
    >>> write_csv([["a", "1.0", "/a.flac", "1-2", "HI"]], out)
    >>> out.read_text().splitlines()[0]
    'ID,duration,wav,spk_id,wrd'
    """
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow(row)
    atomic_write_text(Path(csv_file), buffer.getvalue())


def recipe_prepare_kwargs(hparams: Dict) -> Dict:
    """The :func:`prepare_librispeech` arguments of a recipe's hparams.

    Arguments
    ---------
    hparams : dict
        Needs ``data_folder``, ``output_folder``, ``train_splits``,
        ``dev_splits``, ``test_splits``, ``skip_prep``, ``sample_rate`` and
        optionally ``select_n_sentences``.

    Returns
    -------
    dict
        Keyword arguments; the training splits are merged into
        ``train.csv`` in the output folder.

    Example
    -------
    >>> hp = dict(data_folder="d", output_folder="o", train_splits=["a"],
    ...           dev_splits=["b"], test_splits=["c"], skip_prep=False,
    ...           sample_rate=16000)
    >>> recipe_prepare_kwargs(hp)["merge_name"]
    'train.csv'
    """
    return {
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["output_folder"],
        "tr_splits": hparams["train_splits"],
        "dev_splits": hparams["dev_splits"],
        "te_splits": hparams["test_splits"],
        "merge_lst": hparams["train_splits"],
        "merge_name": "train.csv",
        "skip_prep": hparams["skip_prep"],
        "select_n_sentences": hparams.get("select_n_sentences"),
        "sample_rate": hparams["sample_rate"],
    }


def prepare_librispeech(
    data_folder: PathLike,
    save_folder: PathLike,
    tr_splits: Sequence[str] = (),
    dev_splits: Sequence[str] = (),
    te_splits: Sequence[str] = (),
    select_n_sentences: Optional[int] = None,
    merge_lst: Sequence[str] = (),
    merge_name: Optional[str] = None,
    skip_prep: bool = False,
    sample_rate: int = 16000,
) -> Dict[str, Path]:
    """Writes ``SPLIT.csv`` for every split (and the merged training CSV).

    Every audio file is checked first (see :func:`split_rows`). A second
    call with the same options returns at once unless an audio file was
    changed or removed since; then the changed files are checked again
    (the others are not decoded again) and the CSVs rewritten.

    Arguments
    ---------
    data_folder : str or Path
        LibriSpeech root folder (holding ``train-clean-100`` etc.).
    save_folder : str or Path
        Where the CSVs go.
    tr_splits, dev_splits, te_splits : sequence of str
        Split names.
    select_n_sentences : int, optional
        Keep the first N utterances of every split (for quick tests).
    merge_lst : sequence of str
        Splits to concatenate into ``merge_name``.
    merge_name : str, optional
        File name of the merged CSV, e.g. ``"train.csv"``.
    skip_prep : bool
        Do nothing (the CSVs are assumed to exist).
    sample_rate : int
        Expected sample rate.

    Returns
    -------
    dict
        Split name (and ``merge_name``) -> CSV path.

    Example
    -------
    >>> import tempfile
    >>> prepare_librispeech(tempfile.mkdtemp() + "/none", tempfile.mkdtemp(),
    ...                     dev_splits=["dev-clean"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: LibriSpeech data folder ... does not exist
    """
    save_folder = Path(save_folder)
    splits = list(tr_splits) + list(dev_splits) + list(te_splits)
    outputs = {s: save_folder / f"{s}.csv" for s in splits}
    if merge_name and merge_lst:
        outputs[merge_name.removesuffix(".csv")] = save_folder / merge_name
    if skip_prep:
        return outputs
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech data folder {data_folder} does not exist"
        )
    for split in merge_lst:
        if split not in splits:
            raise ValueError(
                f"merge_lst entry {split!r} is not one of the prepared "
                f"splits {splits}"
            )
    save_folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder": str(data_folder.resolve()),
        "splits": splits,
        "select_n_sentences": select_n_sentences,
        "merge_lst": list(merge_lst),
        "merge_name": merge_name,
        "sample_rate": sample_rate,
    }
    options_file = save_folder / OPTIONS_FILE
    records = {s: save_folder / AUDIO_RECORD.format(s) for s in splits}
    if options_file.is_file() and all(p.is_file() for p in outputs.values()):
        try:
            previous = json.loads(options_file.read_text(encoding="utf-8"))
        except ValueError:
            previous = None
        unchanged = all(map(recorded_audio_unchanged, records.values()))
        if previous == options and unchanged:
            logger.info("LibriSpeech CSVs already prepared in %s", save_folder)
            return outputs
        if previous == options:
            logger.info(
                "audio files changed since the preparation in %s: "
                "checking them again",
                save_folder,
            )
    rows_by_split = {}
    for split in dict.fromkeys(splits):
        rows_by_split[split] = split_rows(
            data_folder,
            split,
            sample_rate,
            select_n_sentences,
            record_file=records[split],
        )
        write_csv(rows_by_split[split], outputs[split])
        logger.info(
            "%s: %d utterances -> %s",
            split,
            len(rows_by_split[split]),
            outputs[split],
        )
    if merge_name and merge_lst:
        merged = [row for s in merge_lst for row in rows_by_split[s]]
        write_csv(merged, save_folder / merge_name)
    atomic_write_text(options_file, json.dumps(options, indent=2))
    return outputs
