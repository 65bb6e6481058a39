"""Mini VoiceBank-DEMAND builder, VoiceBank data preparation and the
enhancement metrics."""

import csv
import hashlib
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.data import corpus_folder
from speechbrain_mamba.lobes.transformer_masknet import (
    TransformerMaskNet,
)
from speechbrain_mamba.separation.enhancement.metrics import (
    ENHANCEMENT_METRICS,
    enhancement_metrics,
    si_snr,
)
from speechbrain_mamba.separation.enhancement.mini_voicebank import (
    FOLDERS,
    MARKER_NAME,
    TEST_NOISES,
    TRAIN_NOISES,
    add_noise,
    build_voicebank,
    main,
    make_noise,
)
from speechbrain_mamba.separation.enhancement.voicebank_prepare import (
    prepare_voicebank,
)


@pytest.fixture(scope="module")
def voicebank(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "mini_voicebank"
    return build_voicebank(root, seed=0, num_utterances=14)


def read_log(path):
    return {
        line.split()[0]: (line.split()[1], float(line.split()[2]))
        for line in path.read_text().splitlines()
    }


def test_layout_pairs_and_snrs(voicebank):
    train_log = read_log(voicebank / "log_trainset_28spk.txt")
    test_log = read_log(voicebank / "log_testset.txt")
    assert len(train_log) == 11 and len(test_log) == 3
    assert {k.split("_")[0] for k in test_log} <= {"p232", "p257"}
    assert {"p226", "p287"} <= {k.split("_")[0] for k in train_log}
    for subset, log in (("train", train_log), ("test", test_log)):
        clean_dir, noisy_dir = FOLDERS[subset]
        assert sorted(
            p.stem for p in (voicebank / clean_dir).glob("*.wav")
        ) == sorted(log)
        noises = TRAIN_NOISES if subset == "train" else TEST_NOISES
        for utt, (noise, snr) in log.items():
            assert noise in noises
            clean, rate = sf.read(voicebank / clean_dir / f"{utt}.wav")
            noisy, rate2 = sf.read(voicebank / noisy_dir / f"{utt}.wav")
            assert rate == rate2 == 16000 and clean.shape == noisy.shape
            # the SNR of the pair is the logged one (active speech level)
            from speechbrain_mamba.data.mixing import active_level

            noise_rms = np.sqrt(np.mean((noisy - clean) ** 2))
            measured = 20 * np.log10(active_level(clean, 16000) / noise_rms)
            assert measured == pytest.approx(snr, abs=0.3)
    text = (
        voicebank / "trainset_28spk_txt" / f"{next(iter(train_log))}.txt"
    ).read_text()
    assert text.strip() and text.strip()[-1] in ".?"
    # same parameters: nothing is rebuilt
    stamp = (voicebank / ".mini_voicebank.json").stat().st_mtime_ns
    build_voicebank(voicebank, seed=0, num_utterances=14)
    assert (voicebank / ".mini_voicebank.json").stat().st_mtime_ns == stamp


def test_marker_keeps_the_generator_name_of_older_corpora(voicebank):
    # corpora built when the builder was speechbrain_mamba.enhancement
    # (before it moved into the separation package) are still up to date
    marker = json.loads((voicebank / ".mini_voicebank.json").read_text())
    assert marker["generator"] == "speechbrain_mamba.enhancement.mini_voicebank"
    assert marker["version"] == 1


# ---------------------------------------------------------------------------
# Build safety: nothing the builder did not write is lost or overwritten
# ---------------------------------------------------------------------------
def tree_hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def leftovers(parent):
    """Temporary, moved-aside and lock files the builds left in parent."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name[0] == ".")


def before_swap(monkeypatch, action):
    """Calls ``action()`` when a build has written its corpus, just before
    it moves it into place (as a user or another process may)."""
    lock = corpus_folder.folder_lock

    def act_then_lock(final):
        action()
        return lock(final)

    monkeypatch.setattr(corpus_folder, "folder_lock", act_then_lock)


def test_rebuild_refuses_a_foreign_file_and_keeps_it(tmp_path, capsys):
    out = build_voicebank(tmp_path / "vb", seed=0, num_utterances=4)
    corpus = tree_hashes(out)
    (out / "notes.txt").write_text("mine")
    (out / "clean_testset_wav" / "p232_099.wav").write_bytes(b"RIFF")
    # Same parameters: up to date, nothing is touched.
    assert build_voicebank(out, seed=0, num_utterances=4) == out
    for kwargs in ({"seed": 1}, {"seed": 0, "force": True}):
        with pytest.raises(FileExistsError) as err:
            build_voicebank(out, num_utterances=4, **kwargs)
        assert str(out) in str(err.value)
        assert "clean_testset_wav/p232_099.wav, notes.txt" in str(err.value)
        assert (out / "notes.txt").read_text() == "mine"
        assert (out / "clean_testset_wav" / "p232_099.wav").read_bytes() == (
            b"RIFF"
        )
        after = tree_hashes(out)
        del after["notes.txt"], after["clean_testset_wav/p232_099.wav"]
        assert after == corpus  # the previous corpus is untouched
    assert main(["--out", str(out), "-n", "4", "--seed", "1"]) == 1
    assert "notes.txt" in capsys.readouterr().err
    # A folder the builder never wrote to: refused before any synthesis.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not made by the mini Voice"):
        build_voicebank(other, num_utterances=4)
    assert tree_hashes(other) == {
        "keep.txt": hashlib.sha256(b"keep").hexdigest()
    }
    assert leftovers(tmp_path) == []


def test_rebuild_over_its_own_output_is_byte_identical(tmp_path):
    out = build_voicebank(tmp_path / "vb", seed=0, num_utterances=4)
    first = tree_hashes(out)
    assert build_voicebank(out, seed=0, num_utterances=4, force=True) == out
    assert tree_hashes(out) == first
    # Other parameters replace it with what a fresh folder gets, and back.
    build_voicebank(out, seed=1, num_utterances=5)
    fresh = build_voicebank(tmp_path / "fresh", seed=1, num_utterances=5)
    assert tree_hashes(out) == tree_hashes(fresh) != first
    # Corpus files the user deleted are no reason to refuse.
    (out / "log_testset.txt").unlink()
    build_voicebank(out, seed=0, num_utterances=4)
    assert tree_hashes(out) == first
    assert leftovers(tmp_path) == []


def test_older_corpus_is_kept_but_not_replaced(voicebank, tmp_path):
    # A corpus of the builder before markers listed their files is up to
    # date with the same parameters; files added to it cannot be told
    # apart from the corpus, so it is not replaced.
    out = tmp_path / "vb"
    shutil.copytree(voicebank, out)
    marker = json.loads((out / MARKER_NAME).read_text())
    del marker["files"]
    (out / MARKER_NAME).write_text(json.dumps(marker))
    before = tree_hashes(out)
    assert build_voicebank(out, seed=0, num_utterances=14) == out
    with pytest.raises(FileExistsError, match="older version"):
        build_voicebank(out, seed=1, num_utterances=4)
    assert tree_hashes(out) == before


def test_file_added_during_the_build_survives(tmp_path, monkeypatch):
    out = build_voicebank(tmp_path / "vb", seed=0, num_utterances=4)
    corpus = tree_hashes(out)
    before_swap(monkeypatch, lambda: (out / "notes.txt").write_text("mine"))
    with pytest.raises(FileExistsError, match="did not write.*notes.txt"):
        build_voicebank(out, seed=1, num_utterances=4)
    assert (out / "notes.txt").read_text() == "mine"
    after = tree_hashes(out)
    del after["notes.txt"]
    assert after == corpus
    assert leftovers(tmp_path) == []


def concurrent_builds(monkeypatch, out, seeds):
    """Builds ``out`` once per seed in threads whose writes all finish
    before any of them moves its corpus into place. Returns each build's
    folder or exception."""
    barrier = threading.Barrier(len(seeds), timeout=120)
    before_swap(monkeypatch, barrier.wait)
    results = [None] * len(seeds)

    def build(i):
        try:
            results[i] = build_voicebank(out, seed=seeds[i], num_utterances=4)
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
    out = tmp_path / "vb"
    results = concurrent_builds(monkeypatch, out, (1, 2))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1, results
    assert isinstance(errors[0], FileExistsError)
    assert "another build" in str(errors[0])
    assert str(out.resolve()) in str(errors[0])
    assert "seed 1" in str(errors[0]) and "seed 2" in str(errors[0])
    winner = (1, 2)[results.index(out.resolve())]
    assert json.loads((out / MARKER_NAME).read_text())["seed"] == winner
    reference = build_voicebank(tmp_path / "ref", seed=winner, num_utterances=4)
    assert tree_hashes(out) == tree_hashes(reference)
    assert leftovers(tmp_path) == []


def test_concurrent_identical_builds_both_succeed(tmp_path, monkeypatch):
    out = tmp_path / "vb"
    results = concurrent_builds(monkeypatch, out, (3, 3))
    assert results == [out.resolve(), out.resolve()]
    reference = build_voicebank(tmp_path / "ref", seed=3, num_utterances=4)
    assert tree_hashes(out) == tree_hashes(reference)
    assert leftovers(tmp_path) == []


def test_noises_and_add_noise():
    rng = np.random.default_rng(0)
    for kind in TRAIN_NOISES + ("speech_shaped",):
        noise = make_noise(kind, 8000, rng)
        assert noise.shape == (8000,)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-6)
    babble = make_noise("babble", 8000, rng, babble=[rng.standard_normal(3000)])
    assert np.isfinite(babble).all()
    # pink noise has more low- than high-frequency energy; white does not
    spec = np.abs(np.fft.rfft(make_noise("pink", 16000, rng))) ** 2
    assert spec[10:100].mean() > 10 * spec[4000:8000].mean()
    with pytest.raises(ValueError, match="unknown noise"):
        make_noise("rain", 10, rng)
    with pytest.raises(ValueError, match="babble noise needs"):
        make_noise("babble", 10, rng)
    with pytest.raises(ValueError, match="differ in length"):
        add_noise(np.ones(4), np.ones(5), 0.0, 16000)


def test_prepare_writes_separation_style_csvs(voicebank, tmp_path):
    paths = prepare_voicebank(voicebank, tmp_path)
    rows = {}
    for split, path in paths.items():
        with open(path) as f:
            rows[split] = list(csv.DictReader(f))
        assert list(rows[split][0]) == ["ID", "duration", "mix_wav", "s1_wav"]
    assert {r["ID"].split("_")[0] for r in rows["valid"]} <= {"p226", "p287"}
    assert not {r["ID"].split("_")[0] for r in rows["train"]} & {"p226", "p287"}
    assert len(rows["train"]) + len(rows["valid"]) == 11
    assert len(rows["test"]) == 3
    first = rows["test"][0]
    assert first["mix_wav"] == f"$data_root/noisy_testset_wav/{first['ID']}.wav"
    assert first["s1_wav"] == f"$data_root/clean_testset_wav/{first['ID']}.wav"


def test_prepare_errors(voicebank, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_voicebank(tmp_path / "none", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="clean_trainset_28spk_wav"):
        prepare_voicebank(tmp_path / "empty", tmp_path)
    with pytest.raises(ValueError, match="48 kHz"):
        prepare_voicebank(voicebank, tmp_path / "out", sample_rate=48000)
    with pytest.raises(FileNotFoundError, match="skip_prep"):
        prepare_voicebank(voicebank, tmp_path / "nothing", skip_prep=True)


def test_prepare_notices_a_file_corrupted_after_it(voicebank, tmp_path):
    data = tmp_path / "voicebank"
    shutil.copytree(voicebank, data)
    paths = prepare_voicebank(data, tmp_path / "save")
    stamp = paths["test"].stat().st_mtime_ns
    prepare_voicebank(data, tmp_path / "save")  # cached: nothing rewritten
    assert paths["test"].stat().st_mtime_ns == stamp
    victim = sorted(data.glob("clean_testset_wav*/*.wav"))[0]
    audio, rate = sf.read(str(victim))
    sf.write(str(victim), np.stack([audio, audio], axis=1), rate)
    with pytest.raises(ValueError, match=f"{victim.name} has 2 channels"):
        prepare_voicebank(data, tmp_path / "save")


def test_metrics():
    g = torch.Generator().manual_seed(0)
    clean = torch.sin(torch.arange(32000) / 7.0) * torch.rand(
        32000, generator=g
    )
    noise = torch.randn(32000, generator=g)
    noisy = clean + 0.3 * noise
    half = clean + 0.1 * noise
    m = enhancement_metrics(half, clean, noisy, 16000, True, True)
    assert list(m) == list(ENHANCEMENT_METRICS)
    assert m["si-snr_i"] == pytest.approx(20 * math.log10(3), abs=0.3)
    assert m["sdr_i"] > 5
    assert 1.0 <= m["pesq_noisy"] < m["pesq"] <= 4.7
    assert 0.0 <= m["stoi_noisy"] < m["stoi"] <= 1.0
    assert si_snr(clean * 5, clean) > 100
    assert math.isnan(si_snr(clean, torch.zeros(10).repeat(3200)))
    with pytest.raises(ValueError, match="same length"):
        enhancement_metrics(clean[:10], clean, noisy, 16000)


def test_transformer_masknet_contract_and_padding():
    net = TransformerMaskNet(16, 24, num_layers=2, num_spks=1, nhead=2).eval()
    x = torch.rand(2, 16, 30)
    masks = net(x, torch.tensor([1.0, 0.5]))
    assert masks.shape == (1, 2, 16, 30) and (masks >= 0).all()
    alone = net(x[1:, :, :15])
    torch.testing.assert_close(
        masks[0, 1, :, :15], alone[0, 0], atol=1e-5, rtol=1e-4
    )
    assert masks[0, 1, :, 15:].abs().max() == 0
    with pytest.raises(ValueError, match="N=16"):
        net(torch.rand(2, 8, 30))
