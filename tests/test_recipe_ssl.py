"""End-to-end self-supervised recipe on the mini LibriSpeech corpus (CPU,
tiny models): targets, pretraining, resume after a kill, export, CTC
fine-tuning from the pretrained encoder, and the MI analysis of the
pretrained model with its k-means labels."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speechbrain_mamba.data.mini_corpus import build_librispeech
from speechbrain_mamba.ssl.targets import read_km

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "LibriSpeech" / "self-supervised-learning"

TINY_MODEL = {
    "d_model": 16,
    "num_layers": 2,
    "conv_channels": 16,
    "final_dim": 8,
    "d_ffn": 32,
    "nhead": 2,
    "d_state": 4,
    "pos_kernel_size": 8,
    "pos_groups": 4,
    "kernel_size": 3,
    "num_clusters": 8,
}
TINY_PRETRAIN = {
    **TINY_MODEL,
    "train_splits": "[train-clean-100]",
    "kmeans_max_frames": 4000,
    "batch_size": 4,
    "number_of_epochs": 2,
    "warmup_steps": 4,
    "decay_steps": 20,
    "lr": 0.002,
    "max_samples": 32000,
    "num_workers": 0,
    "ckpt_interval_minutes": 0,
}


def run(script, hparams, out, timeout=600, wait=True, **overrides):
    cmd = [
        sys.executable,
        str(RECIPE / script),
        str(RECIPE / "hparams" / hparams),
        "--device=cpu",
        "--noprogressbar",
        f"--output_folder={out}",
    ] + [f"--{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        SBMAMBA_NUMBA="0",  # tiny models: skip the numba compilation
    )
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def epochs_logged(out):
    lines = (Path(out) / "train_log.txt").read_text().splitlines()
    return [
        int(line.split(",")[0].split()[1])
        for line in lines
        if line.startswith("epoch:")
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "ssl_mini_librispeech"
    return build_librispeech(root, seed=0, num_utterances=30)


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    """Pretraining killed as soon as it has written a checkpoint (the
    first, intra-epoch one), then rerun to the end."""
    out = tmp_path_factory.mktemp("ssl") / "pretrain"
    args = dict(TINY_PRETRAIN, data_folder=corpus, ckpt_interval_steps=1)
    proc = run("train.py", "pretrain_bimamba.yaml", out, wait=False, **args)
    deadline = time.time() + 400
    killed = False
    while time.time() < deadline and proc.poll() is None:
        if any((out / "save").glob("CKPT+*/CKPT.yaml")):
            proc.kill()
            killed = True
            break
        time.sleep(0.02)
    proc.wait()
    run("train.py", "pretrain_bimamba.yaml", out, **args)
    return out, killed


@pytest.mark.slow
def test_pretraining_outputs_and_resume(pretrained):
    out, killed = pretrained
    assert killed, "the first run ended before an intra-epoch checkpoint"
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["encoder_type"] == "bimamba" and not summary["causal"]
    assert 0.0 <= summary["valid"]["acc_masked"] <= 1.0
    assert summary["chance_uniform"] == pytest.approx(1 / 8)
    assert 1 / 8 <= summary["chance_majority"] < 1.0
    # 24 training utterances, batches of 4: 6 updates per epoch, 2 epochs,
    # whatever the kill interrupted
    assert summary["optimizer_steps"] == 12
    assert epochs_logged(out) == [1, 2]
    state = torch.load(out / "ssl_model.ckpt", weights_only=True)
    assert state["label_embs"].shape == (8, 8)
    labels = read_km(out / "targets" / "train.km")
    assert len(labels) == 24
    targets = json.loads((out / "targets" / "targets.json").read_text())
    assert targets["complete"] and targets["options"]["n_clusters"] == 8


@pytest.mark.slow
def test_rerun_with_more_epochs_continues(pretrained, corpus):
    out, _ = pretrained
    run(
        "train.py",
        "pretrain_bimamba.yaml",
        out,
        **dict(TINY_PRETRAIN, data_folder=corpus, number_of_epochs=3),
    )
    assert epochs_logged(out) == [1, 2, 3]
    summary = json.loads((out / "pretraining_summary.json").read_text())
    assert summary["optimizer_steps"] == 18


@pytest.mark.slow
def test_ctc_finetuning_from_pretrained(pretrained, corpus, tmp_path):
    out, _ = pretrained
    ft = tmp_path / "ft"
    run(
        "finetune_ctc.py",
        "finetune_ctc.yaml",
        ft,
        data_folder=corpus,
        pretrained_folder=out,
        number_of_epochs=1,
        batch_size=4,
        num_workers=0,
        freeze_encoder_steps=2,
        warmup_steps=2,
        decay_steps=10,
        lr=0.001,
    )
    wer = (ft / "wer_test-clean.txt").read_text()
    assert wer.startswith("%WER")
    # the model options came from the pretraining folder
    saved = (ft / "hyperparams.yaml").read_text()
    assert "d_model: 16" in saved and "num_layers: 2" in saved


@pytest.mark.slow
def test_mi_analysis_of_pretrained_model(pretrained, tmp_path):
    out, _ = pretrained
    from speechbrain_mamba.analysis.mutual_information import main

    main(
        [
            "--model",
            f"ssl={out}",
            "--audio",
            str(out / "dev-clean.csv"),
            "--label-file",
            str(out / "targets" / "dev-clean.km"),
            "--out",
            str(tmp_path / "mi"),
            "--estimator",
            "ksg",
            "--device",
            "cpu",
        ]
    )
    with open(tmp_path / "mi" / "mi_ssl.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == [
        "encoder.net.layers.0",
        "encoder.net.layers.1",
    ]
    assert all(np.isfinite(float(r["mi_label"])) for r in rows)
    assert (tmp_path / "mi" / "mi_curves.png").stat().st_size > 5000


@pytest.mark.slow
def test_second_iteration_targets_from_a_pretrained_layer(
    pretrained, corpus, tmp_path
):
    out, _ = pretrained
    it2 = tmp_path / "iteration2"
    targets = it2 / "targets"
    run(
        "extract_targets.py",
        "pretrain_bimamba.yaml",
        it2,
        **dict(
            TINY_PRETRAIN,
            data_folder=corpus,
            target_features="layer",
            target_model=out,
            target_layer=1,
            num_clusters=5,
        ),
    )
    info = json.loads((targets / "targets.json").read_text())
    assert info["options"]["features"] == "layer1"
    first = read_km(out / "targets" / "train.km")
    second = read_km(targets / "train.km")
    assert set(second) == set(first)
    # same frame rate as the MFCC targets (CNN frames are at most one less)
    for utt, labels in second.items():
        assert 0 <= len(first[utt]) - len(labels) <= 2
        assert labels.max() < 5
