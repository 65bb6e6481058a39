"""End-to-end runs of recipes/WSJ0Mix/separation on the mini WSJ0-2mix
corpus (tiny models, CPU): training, resuming, dynamic mixing, the test-stage
metrics CSV, clear data errors, and torchrun (DDP over gloo)."""

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
from speechbrain_mamba.separation.recipe import train_and_test

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "WSJ0Mix" / "separation"
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
    "n_audio_to_save": 1,
    "train_dataloader_opts": {"batch_size": 1, "num_workers": 0},
    "eval_dataloader_opts": {"batch_size": 1, "num_workers": 0},
}


def _cli(overrides):
    args = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
        args += [f"--{key}", str(value)]
    return args


def _run_train(hparams, overrides, extra=(), launcher=(sys.executable,)):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [*launcher, "train.py", f"hparams/{hparams}", *_cli(overrides)]
    cmd += ["--device", "cpu", "--precision", "fp32", "--noprogressbar", *extra]
    return subprocess.run(
        cmd, cwd=RECIPE, env=env, capture_output=True, text=True, timeout=600
    )


def _results(path):
    with open(path, encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_wsj0_2mix(
        tmp_path_factory.mktemp("corpus") / "wsj0-2mix", num_utterances=14
    )


def test_file_corrupted_after_epoch_1_stops_the_resume_before_training(
    corpus, tmp_path
):
    """Epoch 1 ran, then a training file was cut short: the resumed run
    (its preparation cached) names the file before any optimiser step."""
    data = tmp_path / "wsj0-2mix"
    shutil.copytree(corpus / "wav8k", data / "wav8k")
    overrides = {
        **TINY,
        "data_folder": str(data),
        "output_folder": str(tmp_path / "exp"),
        "compute_pesq": False,
        "compute_stoi": False,
    }
    hparams = RECIPE / "hparams" / "mamba_tasnet_XS.yaml"
    brain = train_and_test(hparams, overrides, {"device": "cpu"}, test=False)
    # epoch 1 ran and was saved: the run to resume from
    assert brain.hparams.epoch_counter.current == 1
    assert len(list((tmp_path / "exp" / "save").glob("CKPT+*"))) == 1
    victim = sorted((data / "wav8k" / "min" / "tr" / "mix").glob("*.wav"))[0]
    original = victim.read_bytes()
    victim.write_bytes(original[: len(original) // 2])
    overrides["number_of_epochs"] = 2
    with pytest.raises(ValueError, match=f"{victim.name} is truncated"):
        train_and_test(hparams, overrides, {"device": "cpu"}, test=False)
    log = (tmp_path / "exp" / "train_log.txt").read_text()
    assert "epoch: 1," in log and "epoch: 2," not in log
    assert len(list((tmp_path / "exp" / "save").glob("CKPT+*"))) == 1


@pytest.mark.slow
def test_train_test_and_resume_cli(corpus, tmp_path):
    out = tmp_path / "exp"
    overrides = {**TINY, "data_folder": corpus, "output_folder": out}
    proc = _run_train("mamba_tasnet_S.yaml", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _results(out / "test_results.csv")
    assert [r["snt_id"] for r in rows][-1] == "avg" and len(rows) == 3
    for row in rows:
        values = [float(row[c]) for c in COLUMNS[1:]]
        assert all(math.isfinite(v) for v in values), row
    assert 1.0 <= float(rows[-1]["pesq"]) <= 4.6
    assert 0.0 <= float(rows[-1]["stoi"]) <= 1.0
    wavs = sorted(p.name for p in (out / "audio_results").iterdir())
    assert len(wavs) == 5 and wavs[0].endswith("_mix.wav")
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1," in log and "epoch: 2," not in log
    ckpts = list((out / "save").glob("CKPT+*"))
    assert len(ckpts) == 1

    # Resume: the same experiment with one more epoch continues at epoch 2
    overrides["number_of_epochs"] = 2
    proc = _run_train("mamba_tasnet_S.yaml", overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1
    assert "Epoch loaded: 2" in log
    assert f"Loading a checkpoint from {ckpts[0]}" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "hparams,model",
    [
        (
            "dpmamba_XS.yaml",
            {"num_dp_layers": 1, "chunk_size": 50, "warmup_steps": 0},
        ),
        (
            "sepformer.yaml",
            {
                "num_dp_layers": 1,
                "chunk_size": 50,
                "num_layers": 1,
                "nhead": 2,
                "d_ffn": 32,
            },
        ),
    ],
)
def test_other_models_in_process(corpus, tmp_path, hparams, model):
    overrides = {
        **{k: v for k, v in TINY.items() if k != "warmup_steps"},
        **model,
        "data_folder": str(corpus),
        "output_folder": str(tmp_path / "exp"),
        "train_limit": 1,
        "test_limit": 1,
        "compute_pesq": False,
    }
    brain = train_and_test(
        RECIPE / "hparams" / hparams, overrides, {"device": "cpu"}
    )
    rows = _results(tmp_path / "exp" / "test_results.csv")
    assert len(rows) == 2 and math.isfinite(float(rows[0]["sdr_i"]))
    assert math.isfinite(brain.valid_stats["si-snr_i"])


def test_dynamic_mixing_in_process(corpus, tmp_path):
    overrides = {
        **TINY,
        "data_folder": str(corpus),
        "output_folder": str(tmp_path / "exp"),
        "dynamic_mixing": True,
        "base_folder_dm": str(corpus / "wsj0" / "si_tr_s"),
        "training_signal_len": 8000,
        "test_limit": 1,
        "compute_pesq": False,
        "compute_stoi": False,
    }
    brain = train_and_test(
        RECIPE / "hparams" / "mamba_tasnet_XS.yaml",
        overrides,
        {"device": "cpu"},
    )
    assert brain.optimizer_step == 2
    assert (tmp_path / "exp" / "test_results.csv").is_file()


def test_bad_data_folders_fail_before_training(corpus, tmp_path):
    base = {**TINY, "output_folder": str(tmp_path / "exp")}
    with pytest.raises(
        FileNotFoundError, match="data folder not found.*nowhere"
    ):
        train_and_test(
            RECIPE / "hparams" / "mamba_tasnet_XS.yaml",
            {**base, "data_folder": str(tmp_path / "nowhere")},
            {"device": "cpu"},
        )
    with pytest.raises(FileNotFoundError, match="base_folder_dm"):
        train_and_test(
            RECIPE / "hparams" / "mamba_tasnet_XS.yaml",
            {**base, "data_folder": str(corpus), "dynamic_mixing": True},
            {"device": "cpu"},
        )
    with pytest.raises(ValueError, match="16000 Hz"):
        bad = tmp_path / "bad"
        shutil.copytree(corpus / "wav8k", bad / "wav16k")
        train_and_test(
            RECIPE / "hparams" / "mamba_tasnet_XS.yaml",
            {**base, "data_folder": str(bad), "sample_rate": 16000},
            {"device": "cpu"},
        )
    assert not list((tmp_path / "exp").glob("save/CKPT+*"))


@pytest.mark.slow
def test_torchrun_two_processes(corpus, tmp_path):
    """SpeechBrain DDP under torchrun (gloo backend on CPU)."""
    out = tmp_path / "exp"
    overrides = {
        **TINY,
        "data_folder": corpus,
        "output_folder": out,
        "train_limit": 4,
        "compute_pesq": False,
    }
    launcher = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
    )
    proc = _run_train(
        "mamba_tasnet_S.yaml",
        overrides,
        extra=("--distributed_backend", "gloo"),
        launcher=launcher,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    # 4 training mixtures shared by 2 processes: 2 steps each
    assert "cosine schedule over 2 optimizer steps" in text
    assert len(_results(out / "test_results.csv")) == 3
