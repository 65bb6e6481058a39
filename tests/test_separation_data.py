"""Tests of the separation data preparation, datasets and dynamic mixing on
the mini WSJ0-2mix and Libri2Mix corpora."""

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.data.mini_corpus import (
    ALL_SPEAKERS,
    build_librimix,
    build_wsj0_2mix,
)
from speechbrain_mamba.separation.dataio import separation_dataset
from speechbrain_mamba.separation.dynamic_mixing import (
    DynamicMixer,
    build_speaker_table,
    dynamic_mixing_dataset,
)
from speechbrain_mamba.separation.prepare import (
    prepare_librimix,
    prepare_wsj0mix,
)


@pytest.fixture(scope="module")
def wsj(tmp_path_factory):
    return build_wsj0_2mix(
        tmp_path_factory.mktemp("c") / "wsj0-2mix", num_utterances=14
    )


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    return build_librimix(
        tmp_path_factory.mktemp("c") / "LibriMix", num_utterances=14
    )


def _rows(path):
    with open(path, encoding="utf-8", newline="") as fin:
        return list(csv.DictReader(fin))


def test_prepare_wsj0mix_csvs(wsj, tmp_path):
    paths = prepare_wsj0mix(wsj, tmp_path)
    assert {k: p.name for k, p in paths.items()} == {
        "train": "wsj_tr.csv",
        "valid": "wsj_cv.csv",
        "test": "wsj_tt.csv",
    }
    counts = {}
    for stage, split in (("train", "tr"), ("valid", "cv"), ("test", "tt")):
        rows = _rows(paths[stage])
        counts[stage] = len(rows)
        files = sorted((wsj / "wav8k" / "min" / split / "mix").glob("*.wav"))
        assert [r["ID"] for r in rows] == [f.stem for f in files]
        assert list(rows[0]) == [
            "ID",
            "duration",
            "mix_wav",
            "s1_wav",
            "s2_wav",
        ]
        row = rows[0]
        assert (
            row["s2_wav"] == f"$data_root/wav8k/min/{split}/s2/{row['ID']}.wav"
        )
        info = sf.info(files[0])
        assert float(row["duration"]) == pytest.approx(info.duration, abs=1e-3)
    assert counts == {"train": 10, "valid": 2, "test": 2}
    # same options: skipped (files untouched); skip_prep: only checks
    mtime = paths["train"].stat().st_mtime_ns
    prepare_wsj0mix(wsj, tmp_path)
    assert paths["train"].stat().st_mtime_ns == mtime
    prepare_wsj0mix(wsj, tmp_path, skip_prep=True)
    with pytest.raises(FileNotFoundError, match="skip_prep"):
        prepare_wsj0mix(wsj, tmp_path / "none", skip_prep=True)


def test_prepare_librimix_modes_and_rates(libri, tmp_path):
    for rate in (8000, 16000):
        for mode in ("min", "max"):
            out = tmp_path / f"{rate}{mode}"
            paths = prepare_librimix(libri, out, sample_rate=rate, mode=mode)
            assert paths["train"].name == "libri2mix_train-360.csv"
            rows = _rows(paths["test"])
            assert len(rows) == 2
            path = rows[0]["mix_wav"].replace("$data_root", str(libri))
            assert f"wav{rate // 1000}k/{mode}/test/mix_clean/" in path
            assert sf.info(path).samplerate == rate


def test_prepare_errors_name_the_problem(wsj, tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        prepare_wsj0mix(tmp_path / "nope", tmp_path / "o1")
    # asking for 16 kHz when only wav8k exists names the missing folder
    with pytest.raises(FileNotFoundError, match="wav16k"):
        prepare_wsj0mix(wsj, tmp_path / "o2", sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate must be"):
        prepare_wsj0mix(wsj, tmp_path / "o3", sample_rate=22050)

    broken = tmp_path / "broken"
    shutil.copytree(wsj / "wav8k", broken / "wav8k")
    tt = broken / "wav8k" / "min" / "tt"
    victim = sorted((tt / "s2").glob("*.wav"))[0]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        prepare_wsj0mix(broken, tmp_path / "o4")

    sf.write(victim, np.zeros(800, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="sample rate 16000 Hz"):
        prepare_wsj0mix(broken, tmp_path / "o5")

    sf.write(victim, np.zeros(80, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="different lengths"):
        prepare_wsj0mix(broken, tmp_path / "o6")

    victim.write_bytes(b"not a wav file")
    with pytest.raises(ValueError, match="cannot read audio"):
        prepare_wsj0mix(broken, tmp_path / "o7")

    for f in (tt / "mix").glob("*.wav"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no .wav files"):
        prepare_wsj0mix(broken, tmp_path / "o8")


def test_separation_dataset_reads_sources(wsj, tmp_path):
    paths = prepare_wsj0mix(wsj, tmp_path)
    data = separation_dataset(paths["valid"], wsj, 2, 8000)
    item = data[0]
    assert set(item) == {"id", "mix_sig", "s1_sig", "s2_sig"}
    # mini corpus mixtures are the sum of their sources (16-bit rounding)
    torch.testing.assert_close(
        item["mix_sig"], item["s1_sig"] + item["s2_sig"], atol=2e-4, rtol=0
    )
    limited = separation_dataset(
        paths["train"], wsj, 2, 8000, sorting="ascending", limit=3
    )
    durations = [float(limited.data[i]["duration"]) for i in limited.data_ids]
    assert len(limited) == 3 and durations == sorted(durations)
    with pytest.raises(ValueError, match="expected"):
        separation_dataset(paths["valid"], wsj, 2, 16000)[0]
    with pytest.raises(ValueError, match="s3_wav"):
        separation_dataset(paths["valid"], wsj, 3, 8000)
    with pytest.raises(FileNotFoundError, match="data CSV not found"):
        separation_dataset(tmp_path / "x.csv", wsj, 2, 8000)


def test_dynamic_mixing_from_wsj0(wsj, tmp_path):
    table = build_speaker_table(wsj / "wsj0" / "si_tr_s")
    train_ids = {s.wsj_id for s in ALL_SPEAKERS if s.subset == "train"}
    folders = {p.name for p in (wsj / "wsj0" / "si_tr_s").iterdir()}
    assert set(table) == folders and set(table) <= train_ids
    assert all(len(spk) == 3 for spk in table)
    mixer = DynamicMixer(table, 2, 8000, max_length=4000)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mix, sources = mixer(g)
        assert sources.shape[0] == 2 and sources.shape[1] <= 4000
        torch.testing.assert_close(mix, sources.sum(0))
        peak = max(mix.abs().max(), sources.abs().max())
        assert float(peak) == pytest.approx(0.9, abs=1e-5)
    paths = prepare_wsj0mix(wsj, tmp_path)
    data = dynamic_mixing_dataset(paths["train"], wsj, mixer, limit=4)
    assert len(data) == 4
    first, again = data[0], data[0]
    assert set(first) == {"id", "mix_sig", "s1_sig", "s2_sig"}
    assert not torch.equal(first["mix_sig"][:100], again["mix_sig"][:100])


def test_dynamic_mixing_resamples_librispeech(tmp_path):
    """LibriSpeech-style 16 kHz flac sources mixed at 8 kHz."""
    rng = np.random.RandomState(0)
    for spk in ("19", "26", "32"):
        folder = tmp_path / "train-clean-360" / spk / "100"
        folder.mkdir(parents=True)
        sf.write(folder / f"{spk}-100-0000.flac", rng.randn(16000) * 0.1, 16000)
    table = build_speaker_table(tmp_path / "train-clean-360")
    assert sorted(table) == ["19", "26", "32"]
    mix, sources = DynamicMixer(table, 2, 8000)(
        torch.Generator().manual_seed(1)
    )
    assert sources.shape == (2, 8000)
    with pytest.raises(ValueError, match="at least 3 speakers"):
        DynamicMixer({"a": table["19"], "b": table["26"]}, 3, 8000)
    with pytest.raises(FileNotFoundError, match="base_folder_dm"):
        build_speaker_table(tmp_path / "missing")


def test_file_corrupted_after_the_cached_preparation(wsj, tmp_path):
    """A rerun of a cached preparation notices the changed file, decodes it
    and names it (it used to crash the next epoch)."""
    data = tmp_path / "wsj0-2mix"
    shutil.copytree(wsj / "wav8k", data / "wav8k")
    paths = prepare_wsj0mix(data, tmp_path / "save")
    rows = _rows(paths["train"])
    victim = sorted((data / "wav8k" / "min" / "tr" / "s1").glob("*.wav"))[3]
    original = victim.read_bytes()
    victim.write_bytes(original[: len(original) // 2])
    for _ in range(2):  # also refused on the next call
        with pytest.raises(ValueError, match=f"{victim.name} is truncated"):
            prepare_wsj0mix(data, tmp_path / "save")
    victim.write_bytes(original)
    prepare_wsj0mix(data, tmp_path / "save")
    assert _rows(paths["train"]) == rows


@pytest.mark.parametrize("damage", ["stereo", "nan"])
def test_prepare_refuses_stereo_and_nan_sources(wsj, tmp_path, damage):
    data = tmp_path / "wsj0-2mix"
    shutil.copytree(wsj / "wav8k", data / "wav8k")
    victim = sorted((data / "wav8k" / "min" / "cv" / "s2").glob("*.wav"))[0]
    audio, rate = sf.read(str(victim), dtype="float32")
    if damage == "stereo":
        sf.write(str(victim), np.stack([audio, audio], axis=1), rate)
        match = "has 2 channels"
    else:
        audio[len(audio) // 2] = np.inf
        sf.write(str(victim), audio, rate, subtype="FLOAT")
        match = "holds NaN or infinite samples"
    with pytest.raises(ValueError, match=f"{victim.name} {match}"):
        prepare_wsj0mix(data, tmp_path / "save")


def test_dynamic_mixing_sources_are_checked(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "si_tr_s"
    for spk in ("01a", "01b", "01c"):
        (folder / spk).mkdir(parents=True)
        sf.write(folder / spk / f"{spk}c0201.wav", rng.randn(800) * 0.1, 8000)
    record = tmp_path / "save" / "dm_record.json"
    table = build_speaker_table(folder, record_file=record)
    assert [s.frames for spk in sorted(table) for s in table[spk]] == [800] * 3
    victim = folder / "01b" / "01bc0201.wav"
    sf.write(victim, np.stack([rng.randn(800)] * 2, axis=1) * 0.1, 8000)
    with pytest.raises(ValueError, match=f"{victim.name} has 2 channels"):
        build_speaker_table(folder, record_file=record)
    sf.write(victim, rng.randn(800) * 0.1, 8000)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{victim.name} is truncated"):
        build_speaker_table(folder, record_file=record)
