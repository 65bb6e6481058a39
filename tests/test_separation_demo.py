"""The README's main command (separation demo), in its smoke mode."""

import math
import re

import pytest

from speechbrain_mamba.demo.separation import main


@pytest.mark.slow
def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    match = re.search(r"SI-SNRi = (-?[0-9.]+) dB, SDRi = (-?[0-9.]+) dB", text)
    assert match, text
    assert all(math.isfinite(float(v)) for v in match.groups())
    assert "Held-out test mixtures (unseen speakers): 2" in text
    audio = out / "smoke" / "audio_results"
    hats = sorted(p.name for p in audio.glob("*hat.wav"))
    assert len(hats) == 4  # 2 mixtures x 2 separated sources
    lines = (out / "smoke" / "test_results.csv").read_text("utf-8").splitlines()
    assert lines[0].startswith("snt_id,si-snr,si-snr_i,sdr,sdr_i")
    assert lines[-1].startswith("avg,") and len(lines) == 4
    assert (out / "corpus" / "wsj0-2mix" / "wav8k" / "min" / "tt").is_dir()
