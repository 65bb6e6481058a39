"""LibriSpeech-format data preparation: CSVs from the mini corpus, skip on
rerun, clear errors on bad data folders."""

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf

import speechbrain_mamba  # noqa: F401
from speechbrain_mamba.data.librispeech_prepare import (
    CSV_HEADER,
    prepare_librispeech,
)
from speechbrain_mamba.data.mini_corpus import build_librispeech

SPLITS = dict(
    tr_splits=["train-clean-100"],
    dev_splits=["dev-clean"],
    te_splits=["test-clean"],
    merge_lst=["train-clean-100"],
    merge_name="train.csv",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "asr_mini_librispeech"
    return build_librispeech(root, seed=0, num_utterances=60)


@pytest.fixture
def corpus_copy(corpus, tmp_path):
    """A writable copy holding dev-clean only."""
    dst = tmp_path / "LibriSpeech"
    shutil.copytree(corpus / "dev-clean", dst / "dev-clean")
    return dst


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def test_csvs_match_the_corpus(corpus, tmp_path):
    out = prepare_librispeech(corpus, tmp_path, **SPLITS)
    assert set(out) == {"train-clean-100", "dev-clean", "test-clean", "train"}
    flacs = sorted((corpus / "train-clean-100").rglob("*.flac"))
    rows = read_rows(out["train"])
    assert list(rows[0].keys()) == CSV_HEADER
    assert [r["ID"] for r in rows] == [f.stem for f in flacs]
    assert rows == read_rows(out["train-clean-100"])
    first = rows[0]
    spk, chap = first["ID"].split("-")[:2]
    trans = corpus / "train-clean-100" / spk / chap / f"{spk}-{chap}.trans.txt"
    expected_text = dict(
        line.strip().split(" ", 1) for line in trans.read_text().splitlines()
    )[first["ID"]]
    assert first["wrd"] == expected_text
    assert first["spk_id"] == f"{spk}-{chap}"
    info = sf.info(first["wav"])
    assert float(first["duration"]) == pytest.approx(info.duration, abs=1e-3)
    # no temporary files left behind
    assert not list(tmp_path.glob("*.tmp"))


def test_second_call_is_skipped_and_options_change_redoes(corpus, tmp_path):
    out = prepare_librispeech(corpus, tmp_path, **SPLITS)
    stamp = out["train"].stat().st_mtime_ns
    prepare_librispeech(corpus, tmp_path, **SPLITS)
    assert out["train"].stat().st_mtime_ns == stamp
    prepare_librispeech(corpus, tmp_path, select_n_sentences=3, **SPLITS)
    assert len(read_rows(out["train"])) == 3


def test_missing_folders(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="data folder .* does not"):
        prepare_librispeech(tmp_path / "nope", tmp_path, dev_splits=["x"])
    with pytest.raises(FileNotFoundError, match="train-other-500"):
        prepare_librispeech(corpus, tmp_path, tr_splits=["train-other-500"])


def test_folder_without_audio(tmp_path):
    (tmp_path / "data" / "dev-clean" / "1" / "2").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .flac files"):
        prepare_librispeech(
            tmp_path / "data", tmp_path, dev_splits=["dev-clean"]
        )


def test_missing_transcript(corpus_copy, tmp_path):
    trans = next(corpus_copy.rglob("*.trans.txt"))
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[1:]) + "\n")
    missing = lines[0].split(" ")[0]
    with pytest.raises(ValueError, match=f"no transcript for .*{missing}"):
        prepare_librispeech(corpus_copy, tmp_path, dev_splits=["dev-clean"])


def test_malformed_transcript_line(corpus_copy, tmp_path):
    trans = next(corpus_copy.rglob("*.trans.txt"))
    trans.write_text(trans.read_text() + "JUSTANID\n")
    with pytest.raises(ValueError, match="expected 'UTT-ID TRANSCRIPT'"):
        prepare_librispeech(corpus_copy, tmp_path, dev_splits=["dev-clean"])


def test_corrupt_empty_and_wrong_rate_audio(corpus_copy, tmp_path):
    flac = next(corpus_copy.rglob("*.flac"))
    flac.write_bytes(b"not audio at all")
    with pytest.raises(
        ValueError, match=f"cannot read audio file .*{flac.name}"
    ):
        prepare_librispeech(corpus_copy, tmp_path, dev_splits=["dev-clean"])
    sf.write(flac, np.zeros(0, dtype="float32"), 16000, format="FLAC")
    with pytest.raises(ValueError, match="empty"):
        prepare_librispeech(corpus_copy, tmp_path, dev_splits=["dev-clean"])
    sf.write(flac, np.zeros(800, dtype="float32"), 8000, format="FLAC")
    with pytest.raises(ValueError, match="8000 Hz; expected 16000"):
        prepare_librispeech(corpus_copy, tmp_path, dev_splits=["dev-clean"])


def test_merge_list_must_be_prepared(corpus, tmp_path):
    with pytest.raises(ValueError, match="merge_lst"):
        prepare_librispeech(
            corpus,
            tmp_path,
            dev_splits=["dev-clean"],
            merge_lst=["train-clean-100"],
            merge_name="train.csv",
        )


@pytest.fixture
def full_copy(corpus, tmp_path):
    """A writable copy of every split."""
    dst = tmp_path / "LibriSpeech"
    shutil.copytree(corpus, dst)
    return dst


def truncate_to_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("split", ["test-clean", "train-clean-100"])
def test_truncated_flac_stops_the_preparation(full_copy, tmp_path, split):
    """A FLAC cut to half its size keeps a valid header: the preparation
    decodes it to the end and names it, in every split."""
    flac = sorted((full_copy / split).rglob("*.flac"))[1]
    truncate_to_half(flac)
    assert sf.info(str(flac)).frames > 0  # the header still reads
    with pytest.raises(ValueError, match=f"{flac.name} is truncated"):
        prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)
    assert not (tmp_path / "save" / "train.csv").exists()


def test_stereo_flac_stops_the_preparation(full_copy, tmp_path):
    flac = sorted((full_copy / "train-clean-100").rglob("*.flac"))[0]
    mono, rate = sf.read(str(flac))
    sf.write(str(flac), np.stack([mono, mono], axis=1), rate, format="FLAC")
    with pytest.raises(ValueError, match=f"{flac.name} has 2 channels"):
        prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)


def test_file_corrupted_after_a_cached_preparation(corpus, full_copy, tmp_path):
    """The cached preparation does not decode again, but notices a changed
    file, checks it and names it before training can start."""
    out = prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)
    rows = read_rows(out["test-clean"])
    flac = sorted((full_copy / "test-clean").rglob("*.flac"))[-1]
    truncate_to_half(flac)
    with pytest.raises(ValueError, match=f"{flac.name} is truncated"):
        prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)
    # still refused on the next call (the failure is not cached as a pass)
    with pytest.raises(ValueError, match=f"{flac.name} is truncated"):
        prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)
    # repaired: prepared again, with the same rows
    shutil.copy(corpus / flac.relative_to(full_copy), flac)
    prepare_librispeech(full_copy, tmp_path / "save", **SPLITS)
    assert read_rows(out["test-clean"]) == rows
