"""Mini VoiceBank-DEMAND builder, VoiceBank data preparation and the
enhancement metrics."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

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
    TEST_NOISES,
    TRAIN_NOISES,
    add_noise,
    build_voicebank,
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
