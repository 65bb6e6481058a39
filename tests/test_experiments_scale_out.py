"""The scale-out experiment (experiments/scale_out.py) on CPU:
the separation and recognition recipes under torchrun with 1 and 2 gloo
processes on tiny corpora and models; result rows, checkpoints, world size,
data split over the ranks, and the failure path."""

import json
import math
import os
from pathlib import Path

import pytest
import scale_out
from scale_out import TASKS, RunError, main

from speechbrain_mamba.data.mini_corpus import (
    build_librispeech,
    build_wsj0_2mix,
)
from speechbrain_mamba.utils.checkpoints import COMPLETE_MARKER


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_out_corpus")
    build_wsj0_2mix(root / "wsj0-2mix", num_utterances=14)
    # the corpus of tests/test_recipe_librispeech.py (built once a session)
    librispeech = build_librispeech(
        tmp_path_factory.getbasetemp() / "asr_mini_librispeech",
        seed=0,
        num_utterances=60,
    )
    (root / "LibriSpeech").symlink_to(librispeech, target_is_directory=True)
    return root


def _common(corpus_dir, out):
    return [
        "--corpus-dir",
        str(corpus_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--tiny",
        "--epochs",
        "2",
        "--num-workers",
        "0",
        "--vocab",
        "60",
    ]


@pytest.mark.slow
def test_scale_out_on_cpu(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")  # no per-process compilation
    out = tmp_path / "bench"
    args = _common(corpus_dir, out)
    assert main([*args, "--tasks", "separation", "--nproc", "1", "2"]) == 0
    # a second command adds its rows to the same report
    assert main([*args, "--tasks", "recognition", "--nproc", "2"]) == 0

    report = json.loads((out / "scale_out.json").read_text())
    assert report["settings"]["device"] == "cpu"
    rows = {(r["task"], r["nproc"]): r for r in report["rows"]}
    assert list(rows) == [
        ("separation", 1),
        ("separation", 2),
        ("recognition", 2),
    ]
    # 10 training mixtures / 48 utterances, batch 2 / 8 per process
    batches = {
        ("separation", 1): 5,
        ("separation", 2): 3,
        ("recognition", 2): 3,
    }
    for (task, nproc), row in rows.items():
        run = out / task / f"nproc{nproc}"
        assert row["status"] == "ok", row
        assert row["world_size"] == nproc and row["backend"] == "gloo"
        assert row["batches_per_process_epoch"] == batches[(task, nproc)]
        assert row["timed_epochs"] == [2]
        assert row["audio_s_per_s"] > 0 and row["utterances_per_s"] > 0
        assert math.isfinite(row["final_train_loss"])

        # one statistics file per rank, each in a group of nproc processes
        stats = [
            json.loads(p.read_text())
            for p in sorted((run / "throughput").glob("rank*.json"))
        ]
        assert [s["rank"] for s in stats] == list(range(nproc))
        assert {s["world_size"] for s in stats} == {nproc}
        assert len({s["pid"] for s in stats}) == nproc
        for s in stats:
            assert [e["batches"] for e in s["epochs"]] == [
                batches[(task, nproc)]
            ] * 2
        log = (run / "torchrun.log").read_text()
        assert f"train throughput (rank 0 of {nproc}) epoch 2" in log

        # the newest end-of-epoch checkpoint, with the recipe's files
        ckpt = Path(row["checkpoint"])
        assert ckpt.parent == run / "save" and ckpt.name.startswith("CKPT+")
        assert (ckpt / "counter.ckpt").read_text().strip() == "2"
        files = sorted(p.name for p in ckpt.iterdir())
        # the recipe's files, marked complete by the checkpointer
        assert files == sorted([*TASKS[task].recoverables, COMPLETE_MARKER])
        assert (
            len(list((run / "save").glob("CKPT+*"))) == row["checkpoints_kept"]
        )

    sep1, sep2 = rows[("separation", 1)], rows[("separation", 2)]
    assert sep1["ratio_vs_1"] == 1.0
    expected = round(sep2["audio_s_per_s"] / sep1["audio_s_per_s"], 3)
    assert sep2["ratio_vs_1"] == expected
    assert rows[("recognition", 2)]["ratio_vs_1"] is None  # no 1-process run
    table = (out / "scale_out.md").read_text()
    assert "| separation | 2 | 2 | 3 |" in table
    assert "| recognition | 2 | 2 | 3 |" in table


def test_failed_run_prints_log_and_exits_1(tmp_path, monkeypatch, capsys):
    def fake_run_job(job):
        assert job.cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
        assert str(scale_out.REPO) in job.env["PYTHONPATH"].split(os.pathsep)
        job.log.write_text(
            "Traceback (most recent call last):\nboom: bad recipe\n"
        )
        job.returncode = 3
        return job

    monkeypatch.setattr(scale_out, "run_job", fake_run_job)
    corpus_dir = tmp_path / "corpus"  # the folders the checks look for
    for name in TASKS["separation"].corpus_dirs:
        (corpus_dir / "wsj0-2mix" / name).mkdir(parents=True)
    out = tmp_path / "bench"
    args = [*_common(corpus_dir, out), "--tasks", "separation"]
    assert main([*args, "--nproc", "2"]) == 1
    err = capsys.readouterr().err
    assert "separation, 2 process(es) FAILED" in err
    assert "torchrun exited with status 3" in err
    assert "boom: bad recipe" in err
    row = json.loads((out / "scale_out.json").read_text())["rows"][0]
    assert row["status"] == "failed" and row["nproc"] == 2


def test_missing_corpus_or_hparams(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--corpus-dir", str(tmp_path / "none"), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 2
    assert "lacks" in capsys.readouterr().err
    assert main([*args, "--device", "cpu", "--sep-hparams", "nope"]) == 2
    assert "no hparams file" in capsys.readouterr().err
    assert not out.exists()


def test_check_stats_rejects_wrong_world_size(tmp_path):
    epochs = [{"epoch": 1, "batches": 3}]
    for rank in range(2):
        record = {
            "rank": rank,
            "world_size": 1,  # two separate 1-process runs, not DDP
            "backend": "gloo",
            "device": "cpu",
            "epochs": epochs,
        }
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(record))
    with pytest.raises(RunError, match="world size 1.*expected 2"):
        scale_out.check_stats(tmp_path, 2, "gloo", 1, 3)
    with pytest.raises(RunError, match="ranks 0..2"):
        scale_out.check_stats(tmp_path, 3, "gloo", 1, 3)
    for rank in range(2):
        path = tmp_path / f"rank{rank}.json"
        record = json.loads(path.read_text())
        record["world_size"] = 2
        path.write_text(json.dumps(record))
    assert len(scale_out.check_stats(tmp_path, 2, "gloo", 1, 3)) == 2
    with pytest.raises(RunError, match=r"ran \[3\] batches.*expected 5"):
        scale_out.check_stats(tmp_path, 2, "gloo", 1, 5)
