"""End-to-end runs of recipes/LibriMix/separation on the mini Libri2Mix
corpus (tiny models, CPU): 16 kHz max mode from the command line (wideband
PESQ) and 8 kHz min mode in process."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_mamba.data.mini_corpus import build_librimix
from speechbrain_mamba.separation.recipe import train_and_test

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "LibriMix" / "separation"
COLUMNS = ["snt_id", "si-snr", "si-snr_i", "sdr", "sdr_i", "pesq", "stoi"]
TINY = {
    "N_encoder_out": 16,
    "out_channels": 16,
    "num_layers": 1,
    "number_of_epochs": 1,
    "train_limit": 2,
    "valid_limit": 1,
    "test_limit": 2,
    "warmup_steps": 0,
    "save_audio": False,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_librimix(
        tmp_path_factory.mktemp("corpus") / "LibriMix", num_utterances=14
    )


def _results(path):
    with open(path, encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    return rows


@pytest.mark.slow
def test_libri2mix_16k_max_cli(corpus, tmp_path):
    out = tmp_path / "exp"
    args = [f"--{k}={v}" for k, v in TINY.items()]
    args += [
        f"--data_folder={corpus}",
        f"--output_folder={out}",
        "--sample_rate=16000",
        "--mode=max",
        "--train_dataloader_opts={batch_size: 2, num_workers: 0}",
        "--eval_dataloader_opts={batch_size: 2, num_workers: 0}",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "hparams/mamba_tasnet_XS.yaml",
            *args,
            "--device=cpu",
            "--precision=fp32",
            "--noprogressbar",
        ],
        cwd=RECIPE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _results(out / "test_results.csv")
    assert len(rows) == 3 and rows[-1]["snt_id"] == "avg"
    for row in rows:
        assert all(math.isfinite(float(row[c])) for c in COLUMNS[1:]), row
    # wideband PESQ is defined on [1.04, 4.64]
    assert 1.0 <= float(rows[-1]["pesq"]) <= 4.7
    csv_text = (out / "save" / "libri2mix_test.csv").read_text("utf-8")
    assert "wav16k/max/test/mix_clean" in csv_text


def test_libri2mix_8k_min_in_process(corpus, tmp_path):
    overrides = {
        **TINY,
        "data_folder": str(corpus),
        "output_folder": str(tmp_path / "exp"),
        "test_limit": 1,
        "compute_pesq": False,
        "train_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        "eval_dataloader_opts": {"batch_size": 1, "num_workers": 0},
    }
    brain = train_and_test(
        RECIPE / "hparams" / "mamba_tasnet_XS.yaml",
        overrides,
        {"device": "cpu"},
    )
    assert brain.optimizer_step == 2
    rows = _results(tmp_path / "exp" / "test_results.csv")
    assert len(rows) == 2 and math.isfinite(float(rows[0]["si-snr_i"]))
    csv_text = (tmp_path / "exp" / "save" / "libri2mix_dev.csv").read_text(
        "utf-8"
    )
    assert "wav8k/min/dev/mix_clean" in csv_text
