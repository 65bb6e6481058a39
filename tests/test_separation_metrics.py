"""Tests of the test-stage metrics and of the results CSV."""

import math

import numpy as np
import pytest
import torch

from speechbrain_mamba.separation.metrics import (
    METRICS,
    pesq_score,
    pit_si_snr,
    separation_metrics,
    stoi_score,
)
from speechbrain_mamba.separation.results import (
    average_row,
    read_results_csv,
    write_results_csv,
)


def _speechlike(seconds, rate, seed):
    """Amplitude-modulated harmonic signal (PESQ's VAD detects it)."""
    g = np.random.RandomState(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * g.rand()
    sig = sum(
        np.sin(2 * np.pi * f0 * k * t + g.rand()) / k for k in range(1, 8)
    )
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.1 * sig * env + 0.001 * g.randn(t.size)).astype(np.float32)


def _si_snr(est, ref):
    ref = ref - ref.mean()
    est = est - est.mean()
    proj = (est @ ref) / (ref @ ref) * ref
    return 10 * math.log10((proj @ proj) / ((est - proj) @ (est - proj)))


def test_pit_si_snr_matches_definition_and_reorders():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(4000, 2, generator=g)
    est = targets[:, [1, 0]] + 0.3 * torch.randn(4000, 2, generator=g)
    value, ordered = pit_si_snr(est, targets)
    expected = np.mean(
        [
            _si_snr(ordered[:, k].double(), targets[:, k].double())
            for k in (0, 1)
        ]
    )
    assert value == pytest.approx(expected, abs=1e-3)
    torch.testing.assert_close(ordered, est[:, [1, 0]])


def test_separation_metrics_against_references():
    import mir_eval

    rate = 8000
    s1 = torch.from_numpy(_speechlike(3.0, rate, 1))
    s2 = torch.from_numpy(_speechlike(3.0, rate, 2))
    targets = torch.stack([s1, s2], dim=1)
    mix = s1 + s2
    # estimates with 20 dB leakage of the other speaker, in swapped order
    est = targets[:, [1, 0]] + 0.1 * targets
    m = separation_metrics(est, targets, mix, rate)
    assert set(m) == set(METRICS)
    assert all(np.isfinite(list(m.values())))
    # SI-SNR improvement = SI-SNR(est) - SI-SNR(mixture)
    base = np.mean(
        [_si_snr(mix.double(), targets[:, k].double()) for k in (0, 1)]
    )
    assert m["si-snr_i"] == pytest.approx(m["si-snr"] - base, abs=1e-3)
    # SDR agrees with mir_eval's BSS-eval (same definition, 512 taps)
    sdr, _, _, _ = mir_eval.separation.bss_eval_sources(
        targets.t().double().numpy(), est.t().double().numpy()
    )
    assert m["sdr"] == pytest.approx(float(np.mean(sdr)), abs=0.05)
    assert m["sdr_i"] > 15
    # PESQ (narrowband at 8 kHz) and STOI on the PIT-ordered estimates
    from pesq import pesq
    from pystoi import stoi

    ordered = est[:, [1, 0]]
    assert m["si-snr"] == pytest.approx(20.0, abs=1.0)
    pesq_ref = np.mean(
        [
            pesq(rate, targets[:, k].numpy(), ordered[:, k].numpy(), "nb")
            for k in (0, 1)
        ]
    )
    stoi_ref = np.mean(
        [
            stoi(targets[:, k].numpy(), ordered[:, k].numpy(), rate)
            for k in (0, 1)
        ]
    )
    assert m["pesq"] == pytest.approx(pesq_ref, abs=1e-4)
    assert m["stoi"] == pytest.approx(stoi_ref, abs=1e-4)
    # The mixture itself scores ~0 improvement and lower PESQ / STOI
    m_mix = separation_metrics(mix[:, None].repeat(1, 2), targets, mix, rate)
    assert abs(m_mix["si-snr_i"]) < 1e-3 and abs(m_mix["sdr_i"]) < 0.05
    assert m_mix["pesq"] < m["pesq"] and m_mix["stoi"] < m["stoi"]
    # PESQ / STOI can be switched off
    m_off = separation_metrics(est, targets, mix, rate, False, False)
    assert math.isnan(m_off["pesq"]) and math.isnan(m_off["stoi"])
    assert m_off["sdr"] == m["sdr"]


def test_separation_metrics_single_source():
    import mir_eval
    from pesq import pesq
    from pystoi import stoi

    rate = 8000
    speech = torch.from_numpy(_speechlike(3.0, rate, 3))
    noise = torch.from_numpy(_speechlike(3.0, rate, 4))
    mix = speech + 0.5 * noise
    est = speech + 0.1 * noise
    m = separation_metrics(est[:, None], speech[:, None], mix, rate)
    assert all(np.isfinite(list(m.values())))

    def bss_sdr(signal):
        sdr, _, _, perm = mir_eval.separation.bss_eval_sources(
            speech[None].double().numpy(), signal[None].double().numpy()
        )
        assert perm.tolist() == [0]
        return float(sdr[0])

    si_snr = _si_snr(est.double(), speech.double())
    si_snr_mix = _si_snr(mix.double(), speech.double())
    assert m["si-snr"] == pytest.approx(si_snr, abs=1e-3)
    assert m["si-snr_i"] == pytest.approx(si_snr - si_snr_mix, abs=1e-3)
    assert m["si-snr_i"] > 10
    assert m["sdr"] == pytest.approx(bss_sdr(est), abs=0.05)
    assert m["sdr_i"] == pytest.approx(bss_sdr(est) - bss_sdr(mix), abs=0.05)
    ref, out = speech.numpy(), est.numpy()
    assert m["pesq"] == pytest.approx(pesq(rate, ref, out, "nb"), abs=1e-4)
    assert m["stoi"] == pytest.approx(stoi(ref, out, rate), abs=1e-4)
    # The estimate is the mixture: no improvement
    m_mix = separation_metrics(mix[:, None], speech[:, None], mix, rate)
    assert abs(m_mix["si-snr_i"]) < 1e-3 and abs(m_mix["sdr_i"]) < 1e-6
    # One source: PIT keeps the estimate as it is
    value, ordered = pit_si_snr(est[:, None], speech[:, None])
    assert value == pytest.approx(si_snr, abs=1e-3)
    torch.testing.assert_close(ordered, est[:, None])


def test_pesq_modes_and_failures():
    ref16 = _speechlike(3.0, 16000, 4)
    deg16 = ref16 + 0.02 * np.random.RandomState(0).randn(ref16.size)
    wb = pesq_score(ref16, deg16, 16000)
    assert 1.0 <= wb <= 4.7
    from pesq import pesq

    assert wb == pytest.approx(pesq(16000, ref16, deg16, "wb"), abs=1e-6)
    ref8, deg8 = ref16[::2].copy(), deg16[::2].copy()
    assert pesq_score(ref8, deg8, 8000) == pytest.approx(
        pesq(8000, ref8, deg8, "nb"), abs=1e-6
    )
    with pytest.warns(UserWarning, match="PESQ not computed"):
        assert math.isnan(pesq_score(ref8[:500], deg8[:500], 8000))
    with pytest.warns(UserWarning, match="silent"):
        assert math.isnan(pesq_score(np.zeros(24000), deg8, 8000))
    with pytest.warns(UserWarning, match="undefined at 22050"):
        assert math.isnan(pesq_score(ref8, deg8, 22050))


def test_stoi_too_short_is_nan():
    x = _speechlike(0.05, 8000, 5)
    with pytest.warns(UserWarning, match="too short"):
        assert math.isnan(stoi_score(x, x, 8000))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="num_spks"):
        separation_metrics(
            torch.zeros(10, 2), torch.zeros(10, 3), torch.zeros(10), 8000
        )
    with pytest.raises(ValueError, match="mixture"):
        separation_metrics(
            torch.zeros(10, 2), torch.zeros(10, 2), torch.zeros(9), 8000
        )


def test_results_csv_avg_row(tmp_path):
    rows = [
        {
            "snt_id": "a",
            "si-snr": 1.0,
            "si-snr_i": 2.0,
            "sdr": 3.0,
            "sdr_i": 4.0,
            "pesq": math.nan,
            "stoi": 0.5,
        },
        {
            "snt_id": "b",
            "si-snr": 3.0,
            "si-snr_i": 4.0,
            "sdr": 5.0,
            "sdr_i": 6.0,
            "pesq": 2.0,
            "stoi": 0.7,
        },
    ]
    path = tmp_path / "res" / "test_results.csv"
    avg = write_results_csv(path, rows)
    assert avg == average_row(rows)
    back = read_results_csv(path)
    assert list(back) == ["a", "b", "avg"]
    assert back["avg"]["si-snr"] == 2.0 and back["avg"]["pesq"] == 2.0
    assert back["avg"]["stoi"] == pytest.approx(0.6)
    assert math.isnan(back["a"]["pesq"])
    assert path.read_text("utf-8").splitlines()[0] == (
        "snt_id,si-snr,si-snr_i,sdr,sdr_i,pesq,stoi"
    )
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
