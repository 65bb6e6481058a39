"""Tests of the espeak-ng mini corpus generator."""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbrain_mamba.data import espeak as espeak_mod
from speechbrain_mamba.data import festival as festival_mod
from speechbrain_mamba.data import mini_corpus
from speechbrain_mamba.data.espeak import (
    ESPEAK_SAMPLE_RATE,
    EspeakNotFoundError,
    synthesize,
)
from speechbrain_mamba.data.mini_corpus import (
    ALL_SPEAKERS,
    FESTIVAL_SPEAKERS,
    MARKER_NAME,
    PSEUDO_SPEAKERS,
    _split_counts,
    build_librimix,
    build_librispeech,
    build_libritts,
    build_wsj0_2mix,
    main,
    remix_wsj0_2mix,
)
from speechbrain_mamba.data.mixing import active_level, mix_sources

REPO = Path(__file__).resolve().parents[1]
WSJ_NAME = re.compile(r"^(\w{8})_(-?[0-9.]+)_(\w{8})_(-?[0-9.]+)$")
LS_ID = r"\d+-\d+-\d{4}"


def read_int(path):
    data, rate = sf.read(str(path), dtype="int16")
    return data.astype(np.int64), rate


def tree_hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def librispeech(tmp_path_factory):
    out = tmp_path_factory.mktemp("ls") / "LibriSpeech"
    return build_librispeech(out, seed=0, num_utterances=12)


@pytest.fixture(scope="session")
def libritts(tmp_path_factory):
    out = tmp_path_factory.mktemp("tts") / "LibriTTS"
    return build_libritts(out, seed=0, num_utterances=10)


@pytest.fixture(scope="session")
def wsj0_2mix(tmp_path_factory):
    out = tmp_path_factory.mktemp("wsj") / "wsj0-2mix"
    return build_wsj0_2mix(out, seed=0, num_utterances=14, modes=("min", "max"))


@pytest.fixture(scope="session")
def libri2mix(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "LibriMix"
    return build_librimix(out, seed=0, num_utterances=7)


# ---------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------
def test_librispeech_layout(librispeech):
    subsets = {"train-clean-100": 10, "dev-clean": 1, "test-clean": 1}
    assert sorted(p.name for p in librispeech.iterdir()) == sorted(
        [*subsets, "SPEAKERS.txt", MARKER_NAME]
    )
    speakers = {}
    for subset, count in subsets.items():
        flacs = sorted((librispeech / subset).glob("*/*/*.flac"))
        assert len(flacs) == count
        speakers[subset] = {f.parts[-3] for f in flacs}
        for flac in flacs:
            info = sf.info(str(flac))
            assert (info.samplerate, info.channels) == (16000, 1)
            assert info.format == "FLAC" and info.subtype == "PCM_16"
            assert 0.8 < info.duration < 5.0
            spk, chap = flac.parts[-3], flac.parts[-2]
            assert re.fullmatch(rf"{spk}-{chap}-\d{{4}}", flac.stem)
        # Each chapter's transcript lists exactly its audio files.
        for chap_dir in (librispeech / subset).glob("*/*"):
            spk, chap = chap_dir.parts[-2], chap_dir.name
            lines = (chap_dir / f"{spk}-{chap}.trans.txt").read_text()
            ids, texts = zip(*(ln.split(" ", 1) for ln in lines.splitlines()))
            assert list(ids) == sorted(ids)
            assert set(ids) == {f.stem for f in chap_dir.glob("*.flac")}
            for text in texts:
                assert re.fullmatch(r"[A-Z']+( [A-Z']+){3,11}", text), text
    # Subsets have disjoint speakers, as in LibriSpeech.
    assert not speakers["train-clean-100"] & speakers["dev-clean"]
    assert not speakers["dev-clean"] & speakers["test-clean"]
    table = (librispeech / "SPEAKERS.txt").read_text().splitlines()
    rows = [ln.split("|") for ln in table if not ln.startswith(";")]
    assert {r[0].strip() for r in rows} == set().union(*speakers.values())


def test_librispeech_audio_is_speech(librispeech):
    flac = sorted(librispeech.glob("train-clean-100/*/*/*.flac"))[0]
    wav, rate = sf.read(str(flac))
    peak = np.abs(wav).max()
    # Peak normalised to -12..-2 dBFS, silence trimmed to 50-250 ms.
    assert 10 ** (-12.5 / 20) < peak < 10 ** (-1.5 / 20)
    active = np.nonzero(np.abs(wav) > 0.01 * peak)[0]
    assert 0.04 * rate < active[0] < 0.3 * rate
    assert 0.04 * rate < len(wav) - active[-1] < 0.3 * rate


# ---------------------------------------------------------------------------
# LibriTTS
# ---------------------------------------------------------------------------
def test_libritts_layout(libritts):
    wavs = sorted(libritts.glob("*/*/*/*.wav"))
    assert len(wavs) == 10
    assert {w.parts[-4] for w in wavs} == {
        "train-clean-100",
        "dev-clean",
        "test-clean",
    }
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (
            24000,
            1,
            "PCM_16",
        )
        spk, chap = wav.parts[-3], wav.parts[-2]
        assert re.fullmatch(rf"{spk}_{chap}_\d{{6}}_\d{{6}}", wav.stem)
        norm = wav.with_suffix(".normalized.txt").read_text()
        orig = wav.with_suffix(".original.txt").read_text()
        assert norm and orig and "\n" not in norm
        # Normalised text has numbers and titles spelled out.
        assert not re.search(r"\d|Mr\.|Mrs\.|Dr\.", norm)
        tsv = wav.parent / f"{spk}_{chap}.trans.tsv"
        rows = [ln.split("\t") for ln in tsv.read_text().splitlines()]
        assert [wav.stem, orig, norm] in rows
    for tsv in libritts.glob("*/*/*/*.trans.tsv"):
        ids = [ln.split("\t")[0] for ln in tsv.read_text().splitlines()]
        assert set(ids) == {w.stem for w in tsv.parent.glob("*.wav")}


# ---------------------------------------------------------------------------
# WSJ0-2mix
# ---------------------------------------------------------------------------
def wsj_source(root, utt):
    (path,) = root.glob(f"wsj0/*/{utt[:3]}/{utt}.wav")
    return path


def test_wsj0_2mix_layout(wsj0_2mix):
    counts = {"tr": 10, "cv": 2, "tt": 2}
    for mode in ("min", "max"):
        for subset, count in counts.items():
            base = wsj0_2mix / "wav8k" / mode / subset
            names = {
                d: sorted(p.name for p in (base / d).iterdir())
                for d in ("mix", "s1", "s2")
            }
            assert len(names["mix"]) == count
            assert names["mix"] == names["s1"] == names["s2"]
            for name in names["mix"]:
                u1, snr1, u2, snr2 = WSJ_NAME.fullmatch(name[:-4]).groups()
                assert float(snr2) == -float(snr1) and 0 < abs(float(snr1))
                assert abs(float(snr1)) <= 2.5 and u1[:3] != u2[:3]
                folders = {wsj_source(wsj0_2mix, u).parts[-3] for u in (u1, u2)}
                if subset == "tt":
                    assert folders <= {"si_dt_05", "si_et_05"}
                else:
                    assert folders == {"si_tr_s"}
                for d in ("mix", "s1", "s2"):
                    info = sf.info(str(base / d / name))
                    assert (info.samplerate, info.channels) == (8000, 1)
    for src in wsj0_2mix.glob("wsj0/*/*/*.wav"):
        assert src.stem[:3] == src.parent.name and len(src.stem) == 8
        assert sf.info(str(src)).samplerate == 8000
    tr_list = (wsj0_2mix / "mix_2_spk_tr.txt").read_text().splitlines()
    assert len(tr_list) == counts["tr"]
    for line in tr_list:
        src1, snr1, src2, snr2 = line.split()
        assert (wsj0_2mix / src1).is_file() and (wsj0_2mix / src2).is_file()
        name = f"{Path(src1).stem}_{snr1}_{Path(src2).stem}_{snr2}.wav"
        assert (wsj0_2mix / "wav8k/min/tr/mix" / name).is_file()


def test_wsj0_2mix_mixture_is_sum_of_sources(wsj0_2mix):
    files = sorted(wsj0_2mix.glob("wav8k/*/*/mix/*.wav"))
    assert len(files) == 28
    for mix_path in files:
        mix, _ = read_int(mix_path)
        s1, _ = read_int(mix_path.parents[1] / "s1" / mix_path.name)
        s2, _ = read_int(mix_path.parents[1] / "s2" / mix_path.name)
        assert mix.shape == s1.shape == s2.shape
        # Within PCM rounding (here exact: the mixture is summed in int16).
        assert np.abs(mix - (s1 + s2)).max() <= 1
        # Sources and mixture scaled together to a peak of 0.9.
        peak = max(np.abs(x).max() for x in (mix, s1, s2)) / 32768
        assert peak == pytest.approx(0.9, abs=2e-4)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_wsj0_2mix_snr_and_length(wsj0_2mix, mode):
    for mix_path in sorted(wsj0_2mix.glob(f"wav8k/{mode}/*/mix/*.wav")):
        u1, snr1, u2, snr2 = WSJ_NAME.fullmatch(mix_path.stem).groups()
        src1, _ = sf.read(str(wsj_source(wsj0_2mix, u1)))
        src2, _ = sf.read(str(wsj_source(wsj0_2mix, u2)))
        s1, _ = sf.read(str(mix_path.parents[1] / "s1" / mix_path.name))
        s2, _ = sf.read(str(mix_path.parents[1] / "s2" / mix_path.name))
        pick = min if mode == "min" else max
        assert len(s1) == pick(len(src1), len(src2))
        scales = []
        for src, est in ((src1, s1), (src2, s2)):
            n = min(len(src), len(est))
            ref = src[:n]
            scale = np.dot(est[:n], ref) / np.dot(ref, ref)
            residual = est[:n] - scale * ref
            # est = round(scale * ref): the files hold the mixed samples.
            assert np.abs(residual).max() < 0.6 / 32768
            assert not np.any(est[n:])  # zero padding in max mode
            scales.append(scale * active_level(src, 8000))
        # s1 / s2 level ratio (active levels of the full sources) = name.
        ratio_db = 20 * np.log10(scales[0] / scales[1])
        assert ratio_db == pytest.approx(float(snr1) - float(snr2), abs=0.01)


# ---------------------------------------------------------------------------
# Libri2Mix
# ---------------------------------------------------------------------------
def test_libri2mix_layout_and_metadata(libri2mix):
    assert libri2mix.name == "Libri2Mix"
    counts = {"train-360": 5, "dev": 1, "test": 1}
    speakers = {}
    for rate in (8000, 16000):
        for mode in ("min", "max"):
            base = libri2mix / f"wav{rate // 1000}k" / mode
            for subset, count in counts.items():
                meta = base / "metadata" / f"mixture_{subset}_mix_clean.csv"
                with open(meta, newline="") as f:
                    rows = list(csv.reader(f))
                assert rows[0] == [
                    "mixture_ID",
                    "mixture_path",
                    "source_1_path",
                    "source_2_path",
                    "length",
                ]
                assert len(rows) == count + 1
                for mid, mix, src1, src2, length in rows[1:]:
                    assert re.fullmatch(rf"{LS_ID}_{LS_ID}", mid)
                    spk1, spk2 = mid.split("_")[0][:4], mid.split("_")[1][:4]
                    assert spk1 != spk2
                    speakers.setdefault(subset, set()).update({spk1, spk2})
                    for path, folder in (
                        (mix, "mix_clean"),
                        (src1, "s1"),
                        (src2, "s2"),
                    ):
                        assert Path(path).is_absolute()
                        assert Path(path) == base / subset / folder / (
                            mid + ".wav"
                        )
                        info = sf.info(path)
                        assert (info.samplerate, info.channels) == (rate, 1)
                        assert info.frames == int(length)
                assert len(list((base / subset / "s1").iterdir())) == count
    assert not speakers["train-360"] & (speakers["dev"] | speakers["test"])


def test_libri2mix_min_max_and_sum(libri2mix):
    for rate in ("8k", "16k"):
        for mix_path in sorted(
            libri2mix.glob(f"wav{rate}/max/*/mix_clean/*.wav")
        ):
            folder = mix_path.parents[1]
            mx = [read_int(folder / d / mix_path.name)[0] for d in ("s1", "s2")]
            mix_max = read_int(mix_path)[0]
            assert np.array_equal(mix_max, mx[0] + mx[1])
            min_folder = Path(str(folder).replace("/max/", "/min/"))
            mn = [
                read_int(min_folder / d / mix_path.name)[0]
                for d in ("s1", "s2")
            ]
            mix_min = read_int(min_folder / "mix_clean" / mix_path.name)[0]
            assert np.array_equal(mix_min, mn[0] + mn[1])
            n = len(mix_min)
            assert n < len(mix_max)
            # min files are the start of the max files (same gains) ...
            for a, b in zip(mn, mx):
                assert np.array_equal(a, b[:n])
            # ... and in max mode the shorter source is padded with zeros.
            # (The longer one may also end in silence.)
            assert any(not np.any(s[n:]) for s in mx)
            assert np.abs(mix_max).max() / 32768 < 0.95
    # The 8 kHz files are the 16 kHz ones resampled (same length / 2).
    for path16 in libri2mix.glob("wav16k/max/*/mix_clean/*.wav"):
        path8 = Path(str(path16).replace("wav16k", "wav8k"))
        assert sf.info(str(path8)).frames == -(
            -sf.info(str(path16)).frames // 2
        )


# ---------------------------------------------------------------------------
# Determinism, markers, errors
# ---------------------------------------------------------------------------
def test_deterministic_from_seed(tmp_path):
    a = build_librispeech(tmp_path / "a", seed=7, num_utterances=4)
    b = build_librispeech(tmp_path / "b", seed=7, num_utterances=4)
    c = build_librispeech(tmp_path / "c", seed=8, num_utterances=4)
    ha, hb, hc = tree_hashes(a), tree_hashes(b), tree_hashes(c)
    assert len(ha) == 4 + 4 + 2  # flac, trans.txt, SPEAKERS.txt + marker
    assert ha == hb
    assert ha != hc
    flacs = [k for k in ha if k.endswith(".flac")]
    assert all(ha[k] != hc.get(k) for k in flacs)
    w1 = build_wsj0_2mix(tmp_path / "w1", seed=3, num_utterances=3)
    w2 = build_wsj0_2mix(tmp_path / "w2", seed=3, num_utterances=3)
    assert tree_hashes(w1) == tree_hashes(w2)


def test_marker_skip_rebuild_and_refuse(tmp_path):
    out = tmp_path / "ls"
    build_librispeech(out, seed=0, num_utterances=3)
    marker = out / MARKER_NAME
    stamp = marker.stat().st_mtime_ns, marker.stat().st_ino
    build_librispeech(out, seed=0, num_utterances=3)  # up to date: skipped
    assert (marker.stat().st_mtime_ns, marker.stat().st_ino) == stamp
    before = tree_hashes(out)
    build_librispeech(out, seed=1, num_utterances=3)  # parameters differ
    assert tree_hashes(out) != before
    assert '"seed": 1' in marker.read_text()
    stamp = marker.stat().st_ino
    build_librispeech(out, seed=1, num_utterances=3, force=True)
    assert marker.stat().st_ino != stamp
    assert not list(tmp_path.glob(".ls.*"))  # no temporary folders left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_librispeech(foreign, num_utterances=3)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


def test_missing_espeak_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(espeak_mod.ESPEAK_ENV_VAR, raising=False)
    out = tmp_path / "corpus"
    with pytest.raises(EspeakNotFoundError) as err:
        build_wsj0_2mix(out, num_utterances=3)
    assert isinstance(err.value, FileNotFoundError)
    assert "espeak-ng" in str(err.value)
    assert "apt-get install espeak-ng" in str(err.value)
    assert not out.exists()
    with pytest.raises(EspeakNotFoundError):
        synthesize("hello")
    assert main(["all", "--out", str(out), "-n", "3"]) == 1
    assert "apt-get install espeak-ng" in capsys.readouterr().err
    assert not out.exists()


def test_built_corpus_usable_without_espeak(tmp_path, monkeypatch):
    out = build_librispeech(tmp_path / "ls", num_utterances=3)
    before = tree_hashes(out)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(espeak_mod.ESPEAK_ENV_VAR, raising=False)
    assert build_librispeech(out, num_utterances=3) == out
    assert tree_hashes(out) == before
    with pytest.raises(EspeakNotFoundError):  # other parameters: rebuild
        build_librispeech(out, num_utterances=4)
    assert tree_hashes(out) == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 3"):
        _split_counts(2, (8, 1, 1), "x")
    assert _split_counts(3, (8, 1, 1), "x") == [1, 1, 1]
    assert _split_counts(300, (8, 1, 1), "x") == [240, 30, 30]
    assert _split_counts(280, (5, 1, 1), "x") == [200, 40, 40]
    with pytest.raises(ValueError, match="mode"):
        mix_sources([np.ones(3), np.ones(3)], [1, 1], mode="mean")
    with pytest.raises(ValueError, match="silent"):
        active_level(np.zeros(100), 8000)
    with pytest.raises(ValueError, match="sample_rates"):
        build_librimix("unused", sample_rates=(22050,))
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ")
    with pytest.raises(ValueError, match="no voice 'no-such-voice-xyz'"):
        synthesize("hello", voice="no-such-voice-xyz")
    with pytest.raises(ValueError, match="no voice variant 'zz9'"):
        synthesize("hello", voice="en-us+zz9")


def test_pseudo_speakers_are_distinct():
    assert len({(s.voice, s.pitch) for s in PSEUDO_SPEAKERS}) == 16
    assert len({s.wsj_id for s in PSEUDO_SPEAKERS}) == 16
    wavs = [
        synthesize("the red boat", voice=s.voice, pitch=s.pitch)
        for s in PSEUDO_SPEAKERS[:3]
    ]
    assert all(len(w) > 0.3 * ESPEAK_SAMPLE_RATE for w in wavs)
    assert len({w.tobytes() for w in wavs}) == 3


def test_cli(tmp_path):
    out = tmp_path / "corpora"
    cmd = [sys.executable, "-m", "speechbrain_mamba.data.mini_corpus"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [*cmd, "all", "--out", str(out), "-n", "3", "--seed", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("LibriSpeech/*/*/*/*.flac"))) == 3
    assert len(list(out.glob("LibriTTS/*/*/*/*.wav"))) == 3
    assert len(list(out.glob("wsj0-2mix/wav8k/min/*/mix/*.wav"))) == 3
    assert len(list(out.glob("LibriMix/Libri2Mix/wav*/m*/*/s2/*.wav"))) == 12
    assert "done in" in proc.stdout
    # Same parameters again (in process): every corpus is skipped.
    before = tree_hashes(out)
    assert main(["all", "--out", str(out), "-n", "3", "--seed", "2", "-q"]) == 0
    assert tree_hashes(out) == before


# ---------------------------------------------------------------------------
# Festival voices (separation corpora)
# ---------------------------------------------------------------------------
def _speakers_in(root):
    return {
        sub.name: {p.name for p in (root / "wsj0" / sub.name).iterdir()}
        for sub in (root / "wsj0").iterdir()
    }


def test_festival_speakers_are_unseen_in_dev_and_test():
    by_subset = {}
    for s in FESTIVAL_SPEAKERS:
        by_subset.setdefault(s.subset, set()).add(s.voice)
    assert by_subset["train"].isdisjoint(by_subset["dev"] | by_subset["test"])
    assert by_subset["dev"].isdisjoint(by_subset["test"])
    ids = [s.wsj_id for s in ALL_SPEAKERS]
    assert len(set(ids)) == len(ids) == 16 + 38
    # every variant is a distinct voice: (voice, pitch shift) pairs differ
    assert len({(s.voice, s.pitch) for s in FESTIVAL_SPEAKERS}) == 38
    assert [s.index for s in ALL_SPEAKERS] == list(range(len(ALL_SPEAKERS)))


def test_wsj0_2mix_with_festival_voices(tmp_path):
    a = build_wsj0_2mix(tmp_path / "a", seed=5, num_utterances=12)
    b = build_wsj0_2mix(tmp_path / "b", seed=5, num_utterances=12)
    assert tree_hashes(a) == tree_hashes(b)  # deterministic from the seed
    marker = json.loads((a / MARKER_NAME).read_text())
    assert set(marker["festival_voices"]) >= {"kal_diphone", "ked_diphone"}
    assert marker["festival"].startswith("Festival Speech Synthesis")
    engines = {s.wsj_id: s.engine for s in ALL_SPEAKERS}
    used = set().union(*_speakers_in(a).values())
    assert {engines[spk] for spk in used} == {"festival", "espeak-ng"}
    # a Festival source is speech at the corpus rate, not silence
    spk = next(s for s in sorted(used) if engines[s] == "festival")
    path = next((a / "wsj0").glob(f"*/{spk}/*.wav"))
    data, rate = read_int(path)
    assert rate == 8000 and 0.5 * rate < len(data) and np.abs(data).max() > 1000


def test_without_festival_builds_espeak_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(festival_mod.FESTIVAL_ENV_VAR, "/no/such/festival")
    with caplog.at_level("WARNING"):
        out = build_wsj0_2mix(tmp_path / "e", seed=5, num_utterances=6)
    assert "festival not found" in caplog.text
    assert "espeak-ng voices only" in caplog.text
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["festival_voices"] == []
    engines = {s.wsj_id: s.engine for s in ALL_SPEAKERS}
    used = set().union(*_speakers_in(out).values())
    assert {engines[spk] for spk in used} == {"espeak-ng"}
    with pytest.raises(festival_mod.FestivalNotFoundError, match="apt-get"):
        build_wsj0_2mix(tmp_path / "f", num_utterances=6, voices="festival")
    assert not (tmp_path / "f").exists()
    with pytest.raises(ValueError, match="voices must be one of"):
        build_wsj0_2mix(tmp_path / "g", num_utterances=6, voices="human")


def test_remix_from_flac_sources_equals_build(tmp_path):
    root = build_wsj0_2mix(tmp_path / "w", seed=2, num_utterances=8)
    before = tree_hashes(root / "wav8k")
    shutil.rmtree(root / "wav8k")
    for wav in (root / "wsj0").rglob("*.wav"):  # moved as FLAC
        data, rate = sf.read(str(wav), dtype="int16")
        sf.write(str(wav.with_suffix(".flac")), data, rate)
        wav.unlink()
    assert remix_wsj0_2mix(root) == 8
    assert tree_hashes(root / "wav8k") == before
    (root / "mix_2_spk_cv.txt").unlink()
    with pytest.raises(FileNotFoundError, match="mix_2_spk_cv.txt"):
        remix_wsj0_2mix(root)


# ---------------------------------------------------------------------------
# Build safety: files the generator did not write, concurrent builds
# ---------------------------------------------------------------------------
def _after_write(monkeypatch, action):
    """Calls ``action()`` when a LibriSpeech build has written its files,
    before it moves them into place (as a user or another process may)."""
    original = mini_corpus._write_chapters

    def write_then_act(*args, **kwargs):
        count = original(*args, **kwargs)
        action()
        return count

    monkeypatch.setattr(mini_corpus, "_write_chapters", write_then_act)


def _leftovers(parent):
    """Temporary, moved-aside and lock files the builds left in parent."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name[0] == ".")


def test_file_added_during_rebuild_survives(tmp_path, monkeypatch):
    out = build_librispeech(tmp_path / "ls", seed=0, num_utterances=3)
    before = tree_hashes(out)
    _after_write(monkeypatch, lambda: (out / "notes.txt").write_text("mine"))
    with pytest.raises(FileExistsError, match="did not write.*notes.txt"):
        build_librispeech(out, seed=1, num_utterances=3)
    assert (out / "notes.txt").read_text() == "mine"
    after = tree_hashes(out)
    del after["notes.txt"]
    assert after == before  # the previous corpus is untouched
    assert _leftovers(tmp_path) == []


def test_file_added_to_new_folder_during_build_survives(tmp_path, monkeypatch):
    out = tmp_path / "new"

    def user_writes():
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    _after_write(monkeypatch, user_writes)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_librispeech(out, num_utterances=3)
    assert tree_hashes(out) == {
        "notes.txt": hashlib.sha256(b"mine").hexdigest()
    }
    assert _leftovers(tmp_path) == []


def test_rebuild_refuses_foreign_or_changed_files(tmp_path, monkeypatch):
    out = build_librispeech(tmp_path / "ls", seed=0, num_utterances=3)
    # A file put there before the build: refused before any synthesis.
    (out / "train-clean-100" / "mine.txt").write_text("mine")
    (out / "dev-clean" / "extra").mkdir()
    (out / "dev-clean" / "extra" / "b.txt").write_text("b")
    with monkeypatch.context() as m:
        m.setattr(mini_corpus, "_write_chapters", None)  # never reached
        with pytest.raises(FileExistsError) as err:
            build_librispeech(out, seed=1, num_utterances=3)
    assert "dev-clean/extra/b.txt, train-clean-100/mine.txt" in str(err.value)
    assert (out / "train-clean-100" / "mine.txt").read_text() == "mine"
    (out / "train-clean-100" / "mine.txt").unlink()
    shutil.rmtree(out / "dev-clean" / "extra")
    # A corpus file edited in place (same size) during the build: the
    # hashes differ at the swap, so the edit is kept.
    speakers = out / "SPEAKERS.txt"
    edited = speakers.read_text().replace("Mini", "Mine")
    assert len(edited) == len(speakers.read_text())
    _after_write(monkeypatch, lambda: speakers.write_text(edited))
    with pytest.raises(FileExistsError, match="SPEAKERS.txt"):
        build_librispeech(out, seed=1, num_utterances=3)
    assert speakers.read_text() == edited
    monkeypatch.undo()
    # Corpus files the user deleted are no reason to refuse.
    speakers.unlink()
    build_librispeech(out, seed=1, num_utterances=3)
    assert '"seed": 1' in (out / MARKER_NAME).read_text()
    assert (out / "SPEAKERS.txt").is_file()
    # A corpus of an older generator (no file list) is kept while up to
    # date, but not replaced: added files could not be told apart.
    marker = json.loads((out / MARKER_NAME).read_text())
    del marker["files"]
    (out / MARKER_NAME).write_text(json.dumps(marker))
    assert build_librispeech(out, seed=1, num_utterances=3) == out
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match="older version"):
        build_librispeech(out, seed=2, num_utterances=3)
    assert tree_hashes(out) == before
    assert _leftovers(tmp_path) == []


def _concurrent_builds(monkeypatch, out, seeds):
    """Builds ``out`` once per seed in threads whose writes all finish
    before any of them moves its corpus into place. Returns each build's
    folder or exception."""
    barrier = threading.Barrier(len(seeds), timeout=120)
    _after_write(monkeypatch, barrier.wait)
    results = [None] * len(seeds)

    def build(i):
        try:
            results[i] = build_librispeech(
                out, seed=seeds[i], num_utterances=3, num_workers=1
            )
        except Exception as err:  # the test checks which one failed
            results[i] = err

    threads = [threading.Thread(target=build, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    return results


def test_concurrent_different_builds_one_fails_clearly(tmp_path, monkeypatch):
    out = tmp_path / "ls"
    results = _concurrent_builds(monkeypatch, out, (1, 2))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1, results
    assert isinstance(errors[0], FileExistsError)
    assert "another build" in str(errors[0])
    assert "seed 1" in str(errors[0]) and "seed 2" in str(errors[0])
    winner = (1, 2)[results.index(out.resolve())]
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["seed"] == winner
    reference = build_librispeech(
        tmp_path / "ref", seed=winner, num_utterances=3
    )
    assert tree_hashes(out) == tree_hashes(reference)
    assert _leftovers(tmp_path) == []


def test_concurrent_identical_builds_both_succeed(tmp_path, monkeypatch):
    out = tmp_path / "ls"
    results = _concurrent_builds(monkeypatch, out, (4, 4))
    assert results == [out.resolve(), out.resolve()]
    reference = build_librispeech(tmp_path / "ref", seed=4, num_utterances=3)
    assert tree_hashes(out) == tree_hashes(reference)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# Option checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--workers", "0", "argument --workers: expected a positive integer"),
        ("--seed", "-1", "argument --seed: expected a non-negative integer"),
        ("-n", "0", "argument -n/--num-utterances: expected a positive"),
        ("--max-words", "3", "argument --max-words: expected an integer of"),
        ("--sample-rates", "-8000", "argument --sample-rates: expected a"),
    ],
)
def test_cli_names_the_bad_option(tmp_path, capsys, option, value, message):
    out = tmp_path / "corpus"
    with pytest.raises(SystemExit) as err:
        main(["wsj0-2mix", "--out", str(out), option, value, "-q"])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_api_refuses_bad_workers_and_seed(tmp_path):
    out = tmp_path / "corpus"
    for workers in (0, -2, 1.5, "4", True):
        with pytest.raises(ValueError, match="build_libritts: num_workers"):
            build_libritts(out, num_utterances=3, num_workers=workers)
    with pytest.raises(ValueError, match="build_librimix: seed must be"):
        build_librimix(out, seed=-1, num_utterances=3)
    assert not out.exists()
    with pytest.raises(ValueError, match="remix_wsj0_2mix: num_workers"):
        remix_wsj0_2mix(out, num_workers=0)


def test_cli_sample_rates_without_max_words(tmp_path):
    out = tmp_path / "wsj"
    args = ["wsj0-2mix", "--out", str(out), "-n", "3", "--voices", "espeak"]
    assert main([*args, "--sample-rates", "8000", "16000", "-q"]) == 0
    assert sorted(p.name for p in out.glob("wav*")) == ["wav16k", "wav8k"]
    assert len(list(out.glob("wav16k/min/*/mix/*.wav"))) == 3
