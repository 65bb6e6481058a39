"""The efficiency study CLI on CPU with the tiny TTS pair (VALL-M vs
VALL-E): rows for every model and mode, ratios from the rows, outputs
written; the AR step's static buffers; ar_latency after its refactoring."""

import argparse
import csv
import json
import math

import pytest
import torch

from speechbrain_mamba.benchmarks import ar_latency, efficiency
from speechbrain_mamba.benchmarks.models import tts_batch, vall_e, vall_m

SECONDS = [0.2, 0.4]
MODES = {"train", "infer", "ar-step"}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tts_task_rows_ratios_and_outputs(tmp_path):
    out = tmp_path / "eff"
    efficiency.main(
        [
            "--out",
            str(out),
            "--tasks",
            "tts",
            "--tts-size",
            "tiny",
            "--seconds",
            *map(str, SECONDS),
            "--dtypes",
            "float32",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--ar-steps",
            "3",
        ]
    )
    rows = read_csv(out / "results.csv")
    jsonl = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == len(jsonl) == 2 * len(SECONDS) * len(MODES)
    measured = {(r["model"], float(r["seconds"]), r["mode"]) for r in rows}
    assert measured == {
        (model, s, mode)
        for model in ("VALL-M", "VALL-E")
        for s in SECONDS
        for mode in MODES
    }
    for row in jsonl:
        assert row["task"] == "tts" and row["dtype"] == "float32"
        assert row["oom"] is False and row["seconds_median"] > 0
        assert row["role"] == ("mamba" if row["model"] == "VALL-M" else "peer")
        assert row["batch"] == 1 and row["params_M"] > 0

    ratios = read_csv(out / "ratios.csv")
    assert len(ratios) == len(SECONDS) * len(MODES)
    times = {
        (r["role"], r["seconds"], r["mode"]): r["seconds_median"] for r in jsonl
    }
    for r in ratios:
        key = (float(r["seconds"]), r["mode"])
        expected = times[("peer", *key)] / times[("mamba", *key)]
        assert math.isclose(float(r["time_ratio"]), expected, rel_tol=1e-9)
        assert (r["mamba"], r["peer"]) == ("VALL-M", "VALL-E")
        assert r["memory_ratio"] == ""  # no CUDA memory on CPU

    thresholds = json.loads((out / "thresholds.json").read_text())
    assert set(thresholds) == {
        f"tts/{mode}/float32/{metric}"
        for mode in MODES
        for metric in ("time", "memory")
    }
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounds_interleave_each_pair_and_ratios_are_their_medians(tmp_path):
    """With --rounds, every Mamba row is next to its peer's row of the same
    round (first in even rounds, second in odd ones), and a ratio is the
    median of the rounds' ratios, with their range and count."""
    out = tmp_path / "eff"
    efficiency.main(
        [
            "--out", str(out), "--tasks", "tts", "--tts-size", "tiny",
            "--seconds", "0.2", "0.4", "--modes", "infer",
            "--dtypes", "float32", "--device", "cpu", "--repeats", "1",
            "--rounds", "3",
        ]
    )  # fmt: skip
    jsonl = [json.loads(line) for line in open(out / "results.jsonl")]
    order = [(r["round"], r["seconds"], r["role"]) for r in jsonl]
    assert order == [
        (turn, seconds, role)
        for turn in range(3)
        for seconds in (0.2, 0.4)
        for role in (("mamba", "peer") if turn % 2 == 0 else ("peer", "mamba"))
    ]
    ratios = {float(r["seconds"]): r for r in read_csv(out / "ratios.csv")}
    assert sorted(ratios) == [0.2, 0.4]
    for seconds, r in ratios.items():
        times = {
            (row["round"], row["role"]): row["seconds_median"]
            for row in jsonl
            if row["seconds"] == seconds
        }
        per_round = sorted(
            times[(turn, "peer")] / times[(turn, "mamba")] for turn in range(3)
        )
        assert int(r["rounds"]) == 3
        assert math.isclose(float(r["time_ratio"]), per_round[1])
        assert math.isclose(float(r["time_ratio_min"]), per_round[0])
        assert math.isclose(float(r["time_ratio_max"]), per_round[2])


def test_a_round_where_only_one_model_ran_out_of_memory_counts():
    """Out of memory is a measured outcome, not a missing one: 0 where only
    the Mamba model ran out, inf where only the peer did."""

    def row(role, turn, oom):
        return dict(
            task="t", role=role, seconds=1, mode="train", dtype="d",
            model=role, round=turn, oom=oom,
            seconds_median=None if oom else 1.0, peak_mib=None,
        )  # fmt: skip

    rows = [row("mamba", 0, True), row("peer", 0, False)]
    rows += [row("mamba", 1, False), row("peer", 1, True)]
    rows += [row("mamba", 2, True), row("peer", 2, False)]
    (ratio,) = efficiency.ratio_rows(rows)
    assert ratio["rounds"] == 3
    assert (ratio["time_ratio_min"], ratio["time_ratio"]) == (0.0, 0.0)
    assert ratio["time_ratio_max"] == float("inf")


def test_median_rows_collapse_rounds_for_the_plot():
    rows = [
        dict(
            model=model, task="tts", seconds=1, mode="train", dtype="bf16",
            round=turn, seconds_median=t, peak_mib=m,
        )
        for model, values in (
            ("VALL-M", [(3.0, 10.0), (1.0, 30.0), (2.0, None)]),
            ("VALL-E", [(5.0, 40.0), (4.0, 40.0), (6.0, 50.0)]),
        )
        for turn, (t, m) in enumerate(values)
    ]  # fmt: skip
    medians = {r["model"]: r for r in efficiency.median_rows(rows)}
    assert medians["VALL-M"]["seconds_median"] == 2.0
    assert medians["VALL-M"]["peak_mib"] == 20.0  # the rounds that have one
    assert (
        medians["VALL-E"]["seconds_median"],
        medians["VALL-E"]["peak_mib"],
    ) == (5.0, 40.0)


def test_rows_name_the_bimamba_kernels(tmp_path):
    """Each row says which kernels the Mamba model's BiMamba layers ran
    (on CPU the PyTorch path; none for the transformer peer) and their
    low_memory setting."""
    out = tmp_path / "eff"
    efficiency.main(
        [
            "--out", str(out), "--tasks", "separation", "--seconds", "0.05",
            "--modes", "infer", "--dtypes", "float32", "--device", "cpu",
            "--repeats", "1", "--low-memory", "false",
        ]
    )  # fmt: skip
    rows = read_csv(out / "results.csv")
    kernels = {r["role"]: r["bimamba_kernels"] for r in rows}
    assert kernels == {"mamba": "torch", "peer": ""}
    low_memory = {r["role"]: r["low_memory"] for r in rows}
    assert low_memory == {"mamba": "false", "peer": ""}


def test_plan_skips_modes_a_task_lacks(capsys):
    args = argparse.Namespace(
        tasks=["separation", "tts"],
        seconds=[1.0],
        modes=["infer", "ar-step"],
        dtypes=["float32", "bfloat16"],
    )
    jobs = efficiency.plan(args)
    assert "separation: no ar-step mode" in capsys.readouterr().out
    assert {(job[0], job[3]) for job in jobs} == {
        ("separation", "infer"),
        ("tts", "infer"),
        ("tts", "ar-step"),
    }
    assert len(jobs) == 3 * 2 * 2  # (task, mode) x roles x dtypes
    args.tasks, args.modes = ["asr"], ["ar-step"]
    with pytest.raises(ValueError, match="nothing to measure"):
        efficiency.plan(args)
    with pytest.raises(SystemExit):
        efficiency.main(["--modes", "decode"])


@pytest.mark.parametrize("builder", [vall_m, vall_e])
def test_ar_step_static_buffers_follow_eager_decoding(builder):
    """The CUDA-graph form of the AR step (results written back into the
    tensors read) decodes the same tokens as the eager form."""
    model = builder("tiny")
    batch = tts_batch(0.1, 2, "cpu")
    eager = efficiency.make_ar_step(model, batch, torch.float32, "cpu")
    static = efficiency.make_ar_step(
        model, batch, torch.float32, "cpu", for_graph=True
    )
    before = [t.data_ptr() for _, _, t in efficiency._state_slots(static.state)]
    for _ in range(4):
        eager()
        static()
    slots = efficiency._state_slots(static.state)
    if builder is vall_m:  # fixed-size state: the same tensors, updated
        assert [t.data_ptr() for _, _, t in slots] == before
        for (_, name, a), (_, _, b) in zip(
            efficiency._state_slots(eager.state), slots
        ):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    assert int(static.state.next_position[0]) == 1 + 8 + 4
    token = torch.tensor([3, 5])
    with torch.no_grad():
        after_eager = model.ar.step(token, eager.state)
        after_static = model.ar.step(token, static.state)
    assert torch.allclose(after_eager, after_static, atol=1e-4)


def test_ar_step_needs_an_ar_model():
    with pytest.raises(ValueError, match="AR decoder"):
        efficiency.make_step(
            torch.nn.Linear(2, 2), None, "ar-step", torch.float32, "cpu"
        )


def test_ar_latency_still_runs(tmp_path):
    out = tmp_path / "ar.json"
    ar_latency.main(
        [
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--tokens",
            "6",
            "--window",
            "3",
            "--prompt_frames",
            "4",
            "--phonemes",
            "3",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"vallm", "valle"}
    for model in results["models"].values():
        assert [(w["start"], w["end"]) for w in model["windows"]] == [
            (0, 3),
            (3, 6),
        ]
        assert model["first_ms"] > 0 and model["total_s"] > 0
    assert out.with_suffix(".md").read_text().startswith("AR per-token")
