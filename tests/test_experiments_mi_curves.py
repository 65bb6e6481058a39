"""The MI-curves experiment (experiments/mi_curves.py): a tiny
CPU run of the ASR pair gives MI rows (input and character labels) for both
models; a model that yields no rows fails the command with its reason in the
summary; budgets, corpora checks and the summary logic."""

import csv
import json
import math
import shutil
from pathlib import Path

import mi_curves
import pytest

from speechbrain_mamba.data.mini_corpus import build_librispeech

TINY_RUN = [
    "--tasks",
    "asr",
    "--tiny",
    "--device",
    "cpu",
    "--budget_s",
    "1",
    "--mine_steps",
    "30",
    "--mi_utterances",
    "6",
    "--ksg_frames",
    "500",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mi_curves")
    corpora = root / "corpora"
    build_librispeech(corpora / "LibriSpeech", seed=0, num_utterances=40)
    work, out = root / "work", root / "out"
    code = mi_curves.main(
        ["--corpora", str(corpora), "--prebuilt", "--work", str(work)]
        + ["--out", str(out)]
        + TINY_RUN
    )
    return code, corpora, work, out


def read_csv(path):
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


@pytest.mark.slow
def test_tiny_asr_run_gives_mi_rows_for_both_models(tiny_run):
    code, _, _, out = tiny_run
    assert code == 0
    rows = read_csv(out / "mi_all.csv")
    for model in ("conmamba", "conformer"):
        model_rows = [r for r in rows if r["model"] == model]
        assert [r["layer"] for r in model_rows] == [
            "encoder.layers.0",
            "encoder.layers.1",
        ]
        for row in model_rows:
            assert row["task"] == "asr"
            assert int(row["frames"]) > 100
            for key in ("mi_input", "mi_label", "mi_input_ksg_pca8"):
                assert math.isfinite(float(row[key])), (model, key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["failures"] == []
    pair = summary["pairs"]["asr"]
    assert pair["ok"]
    for entry in pair["models"].values():
        assert len(entry["mi_input_per_layer"]) == 2
        assert len(entry["mi_label_per_layer"]) == 2
        assert entry["mi_input_shape"]["shape"] in (
            "U",
            "falling",
            "flat",
            "rising",
        )
        assert entry["training"]["returncode"] == 0
        assert entry["training"]["test_wer"] is not None
        assert entry["utterances"] == 6
    markdown = (out / "summary.md").read_text()
    assert "## ASR: ConMamba vs Conformer" in markdown
    assert "MI(layer; characters)" in markdown
    assert "FAILURES" not in markdown
    png = (out / "mi_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "asr/conmamba: training log" in (out / "logs.txt").read_text()


@pytest.mark.slow
def test_a_model_without_rows_fails_the_run_with_its_reason(tiny_run, tmp_path):
    _, corpora, work, _ = tiny_run
    broken = tmp_path / "work"
    shutil.copytree(work, broken)
    for ckpt in (broken / "asr" / "conformer" / "save").glob("CKPT+*"):
        shutil.rmtree(ckpt)
    out = tmp_path / "out"
    code = mi_curves.main(
        ["--corpora", str(corpora), "--prebuilt", "--work", str(broken)]
        + ["--out", str(out), "--stage", "analyse"]
        + TINY_RUN
    )
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"] and not summary["pairs"]["asr"]["ok"]
    conformer = summary["pairs"]["asr"]["models"]["conformer"]
    assert "no checkpoint" in conformer["error"]
    assert "mi_input_per_layer" not in conformer
    # the other model of the pair is still analysed and reported
    assert (
        len(summary["pairs"]["asr"]["models"]["conmamba"]["mi_input_per_layer"])
        == 2
    )
    assert summary["failures"] == [
        f"asr/conformer: no MI rows: {conformer['error']}"
    ]
    markdown = (out / "summary.md").read_text()
    assert "FAILURES" in markdown and "asr/conformer: no MI rows" in markdown
    # the training status of the earlier stage is kept
    assert conformer["training"]["returncode"] == 0

    # an exception inside the analysis is reported with its type
    (broken / "asr" / "conmamba" / "save" / "tokenizer.ckpt").write_text("x")
    out2 = tmp_path / "out2"
    code = mi_curves.main(
        ["--corpora", str(corpora), "--prebuilt", "--work", str(broken)]
        + ["--out", str(out2), "--stage", "analyse"]
        + TINY_RUN
    )
    assert code == 1
    summary = json.loads((out2 / "summary.json").read_text())
    error = summary["pairs"]["asr"]["models"]["conmamba"]["error"]
    assert error.split(":")[0].endswith("Error"), error
    assert "Traceback" in (out2 / "logs.txt").read_text()
    assert not (out2 / "mi_curves.png").exists()


def test_budgets():
    jobs = ["asr/conmamba", "asr/conformer", "ssl/bimamba"]
    budgets = mi_curves.parse_budgets(["ssl=90", "asr/conformer=30"], 60, jobs)
    assert budgets == {
        "asr/conmamba": 60.0,
        "asr/conformer": 30.0,
        "ssl/bimamba": 90.0,
    }
    for bad in ("tts=5", "asr", "asr=-1", "asr=x"):
        with pytest.raises(ValueError, match="--budget"):
            mi_curves.parse_budgets([bad], 60, jobs)
    jobs_cmd = mi_curves.training_jobs(
        ["asr", "ssl"],
        Path("/c"),
        Path("/w"),
        "cpu",
        {**budgets, "ssl/transformer": 7.0},
        "fp32",
    )
    assert "--train_time_budget_s=30.0" in jobs_cmd["asr/conformer"]["cmd"]
    assert "--train_time_budget_s=7.0" in jobs_cmd["ssl/transformer"]["cmd"]


def test_recipe_overrides():
    extra = mi_curves.parse_hparams(
        ["ssl:lr=0.0005", "ssl/bimamba:lr=0.002", "asr:batch_size=8"]
    )
    jobs = mi_curves.training_jobs(
        ["asr", "ssl"],
        Path("/c"),
        Path("/w"),
        "cpu",
        dict.fromkeys(
            ["asr/conmamba", "asr/conformer", "ssl/bimamba", "ssl/transformer"],
            9.0,
        ),
        "fp32",
        overrides=extra,
    )
    assert "--lr=0.002" in jobs["ssl/bimamba"]["cmd"]
    assert "--lr=0.0005" in jobs["ssl/transformer"]["cmd"]
    assert "--batch_size=8" in jobs["asr/conformer"]["cmd"]
    assert "--batch_size=16" not in jobs["asr/conformer"]["cmd"]
    for bad in ("ssl=1", "tts:lr=1", "ssl/nope:lr=1", "ssl:lr"):
        with pytest.raises(ValueError, match="--hparam"):
            mi_curves.parse_hparams([bad])


def test_missing_corpora_and_packages(tmp_path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="--stage corpora"):
        mi_curves.prepare_corpora(tmp_path, 10, 10, prebuilt=True)
    monkeypatch.setitem(
        mi_curves.REQUIRED_MODULES, "separation", ("no_such_module_xyz",)
    )
    assert mi_curves.missing_modules(["asr"]) == []
    code = mi_curves.main(["--corpora", str(tmp_path), "--tasks", "separation"])
    assert code == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_summary_reports_training_failures_and_missing_rows():
    rows = [
        {
            "task": "separation",
            "model": "mamba_tasnet",
            "layer_index": i + 1,
            "frames": 100,
            "mi_input": v,
        }
        for i, v in enumerate([3.0, 2.0, 2.8])
    ]
    training = {
        "separation/mamba_tasnet": {
            "returncode": 1,
            "error": "training exit status 1: ModuleNotFoundError: x",
            "valid": {"si-snr_i": 1.5},
        },
        "separation/transformer_tasnet": {"returncode": 0, "valid": {}},
    }
    analyses = {
        "separation/mamba_tasnet": {"rows": rows, "error": None},
        "separation/transformer_tasnet": {
            "rows": [],
            "error": "RuntimeError: boom",
        },
    }
    summary = mi_curves.build_summary(
        ["separation"], training, analyses, {"budgets": {"a": 1.0}}
    )
    assert not summary["ok"]
    mamba = summary["pairs"]["separation"]["models"]["mamba_tasnet"]
    assert mamba["mi_input_shape"]["shape"] == "U"
    assert mamba["verdict"] == "expected U: agrees"
    assert "exit 1" in mamba["training_summary"]
    assert summary["failures"] == [
        "separation/mamba_tasnet: training exit status 1: "
        "ModuleNotFoundError: x",
        "separation/transformer_tasnet: no MI rows: RuntimeError: boom",
    ]
    markdown = mi_curves.summary_markdown(summary)
    assert "**no MI: RuntimeError: boom**" in markdown
    assert "3.00, 2.00, 2.80" in markdown


def test_run_jobs_records_status_and_kills_jobs_past_their_timeout(tmp_path):
    import sys

    jobs = {
        "asr/ok": {
            "out": tmp_path / "ok",
            "budget_s": 1.0,
            "cmd": [sys.executable, "-c", "print('done')"],
        },
        "asr/fails": {
            "out": tmp_path / "fails",
            "budget_s": 1.0,
            "cmd": [sys.executable, "-c", "raise ValueError('bad value')"],
        },
        "asr/hangs": {
            "out": tmp_path / "hangs",
            "budget_s": 1.0,
            "cmd": [sys.executable, "-c", "import time; time.sleep(60)"],
        },
    }
    timeouts = {"asr/ok": 30.0, "asr/fails": 30.0, "asr/hangs": 1.0}
    mi_curves.run_jobs(jobs, parallel=True, timeouts=timeouts)
    assert jobs["asr/ok"]["returncode"] == 0
    assert jobs["asr/fails"]["returncode"] == 1
    assert jobs["asr/hangs"]["returncode"] == "timeout"
    assert jobs["asr/hangs"]["seconds"] < 30
    assert (tmp_path / "ok" / "benchmark_stdout.txt").read_text() == "done\n"
    result = mi_curves.training_result(jobs["asr/fails"])
    assert result["error"] == "training exit status 1: ValueError: bad value"
    assert "error" not in mi_curves.training_result(jobs["asr/ok"])
