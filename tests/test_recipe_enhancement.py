"""End-to-end speech-enhancement recipe (Mamba-TasNet with one output) on
the mini VoiceBank-DEMAND corpus: CPU, tiny model."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_mamba.separation.enhancement.metrics import ENHANCEMENT_METRICS
from speechbrain_mamba.separation.enhancement.mini_voicebank import (
    build_voicebank,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "Voicebank" / "enhancement"


def run(out, corpus, **overrides):
    values = {
        "data_folder": corpus,
        "output_folder": out,
        "N_encoder_out": 32,
        "out_channels": 32,
        "num_layers": 2,
        "d_state": 8,
        "number_of_epochs": 4,
        "lr": 0.002,
        "warmup_steps": 5,
        "precision": "fp32",
        "training_signal_len": 16000,
        "n_audio_to_save": 1,
        "train_dataloader_opts": (
            "{batch_size: 2, num_workers: 0, shuffle: True}"
        ),
        "eval_dataloader_opts": "{batch_size: 1, num_workers: 0}",
        **overrides,
    }
    cmd = [
        sys.executable,
        str(RECIPE / "train.py"),
        str(RECIPE / "hparams" / "mamba_tasnet_XS.yaml"),
        "--device=cpu",
        "--noprogressbar",
    ] + [f"--{k}={v}" for k, v in values.items()]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        SBMAMBA_NUMBA="0",
    )
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_enhancement_recipe_trains_and_reports_metrics(tmp_path_factory):
    corpus = build_voicebank(
        tmp_path_factory.getbasetemp() / "enh_mini_voicebank",
        seed=1,
        num_utterances=30,
    )
    out = tmp_path_factory.mktemp("enh") / "exp"
    run(out, corpus)
    log = (out / "train_log.txt").read_text().splitlines()
    valid = [
        float(line.split("valid si-snr: ")[1].split(",")[0])
        for line in log
        if line.startswith("epoch:")
    ]
    assert len(valid) == 4
    assert valid[-1] > valid[0] + 3.0, valid  # training improves SI-SNR
    with open(out / "test_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["snt_id", *ENHANCEMENT_METRICS]
    assert [r["snt_id"] for r in rows][-1] == "avg"
    snrs = {
        line.split()[0]: float(line.split()[2])
        for line in (corpus / "log_testset.txt").read_text().splitlines()
    }
    assert sorted(r["snt_id"] for r in rows[:-1]) == sorted(snrs)
    for row in rows[:-1]:
        values = {k: float(v) for k, v in row.items() if k != "snt_id"}
        for key in ("pesq", "pesq_noisy"):
            assert math.isnan(values[key]) or 1.0 <= values[key] <= 4.7
        assert 0.0 <= values["stoi"] <= 1.0
        # SI-SNR of the noisy input = logged SNR (up to the active level)
        noisy = values["si-snr"] - values["si-snr_i"]
        assert abs(noisy - snrs[row["snt_id"]]) < 3.0
    audio = list((out / "audio_results").glob("*.wav"))
    assert len(audio) == 3  # mixture, reference and estimate of one example
    # rerunning resumes: the finished training is not repeated
    run(out, corpus)
    log2 = (out / "train_log.txt").read_text().splitlines()
    assert sum(line.startswith("epoch:") for line in log2) == 4
