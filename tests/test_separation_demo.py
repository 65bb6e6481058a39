"""The README's main command (separation demo), in its smoke mode."""

import csv
import re

import pytest
import soundfile as sf

from speechbrain_mamba.demo.separation import main


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 held-out mixtures (unseen speakers)" in text
    match = re.search(r"SI-SNRi = (-?[0-9.]+) dB, SDRi = (-?[0-9.]+) dB", text)
    si_snri, sdri = (float(v) for v in match.groups())
    # the shipped model separates even in the smoke run's two mixtures
    assert si_snri > 5 and sdri > 5
    with open(out / "separated" / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["snt_id"] for r in rows][-1] == "avg" and len(rows) == 3
    assert float(rows[-1]["si-snr_i"]) == pytest.approx(si_snri, abs=0.01)
    for row in rows[:-1]:
        mix, rate = sf.read(out / "separated" / f"{row['snt_id']}_mix.wav")
        for k in (1, 2):
            est, _ = sf.read(
                out / "separated" / f"{row['snt_id']}_s{k}_hat.wav"
            )
            assert rate == 8000 and len(est) == len(mix)
    assert (out / "spectrogram.png").read_bytes()[:4] == b"\x89PNG"
    # the training demo ran the recipe and its loss fell
    losses = re.search(r"per epoch: (.*)", text).group(1).split(" -> ")
    assert float(losses[-1]) < float(losses[0])
    assert (out / "smoke" / "train_log.txt").is_file()
    # the closing lines say where the files are and what to run next
    tail = text.strip().splitlines()[-9:]
    assert tail[0] == "Files:" and "Next:" in tail
