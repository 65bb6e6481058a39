"""The efficiency study's brain harness (benchmarks.brain_step): the timed
training step is SeparationBrain.fit_batch (the recipe's loss, one Adam
step at the recipe's learning rate), inference is the test-stage forward
without gradients, and the CLI writes brain rows and their ratios with the
mask net's own graphs left as the user has them."""

import csv
import math

import pytest
import torch
from speechbrain.lobes.models.dual_path import (
    Dual_Path_Model,
    SBTransformerBlock,
)
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_mamba.benchmarks import efficiency
from speechbrain_mamba.benchmarks.brain_step import (
    RECIPE_LR,
    brain_step,
    measure_brain_step,
    separation_batch,
    separation_brain,
)
from speechbrain_mamba.benchmarks.models import SeparationPipeline
from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet

CHANNELS = 16


def tiny_mamba_tasnet():
    return SeparationPipeline(
        MambaTasNetMaskNet(CHANNELS, num_layers=2, d_state=4), CHANNELS
    )


def tiny_sepformer():
    def block():
        return SBTransformerBlock(
            num_layers=1,
            d_model=CHANNELS,
            nhead=2,
            d_ffn=32,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )

    masknet = Dual_Path_Model(
        CHANNELS,
        CHANNELS,
        block(),
        block(),
        num_layers=1,
        norm="ln",
        K=50,
        num_spks=2,
        skip_around_intra=True,
        linear_layer_after_inter_intra=False,
    )
    return SeparationPipeline(masknet, CHANNELS)


BUILDERS = [tiny_mamba_tasnet, tiny_sepformer]


@pytest.mark.parametrize("builder", BUILDERS)
def test_fit_batch_takes_one_recipe_step(builder):
    """The timed step returns the PIT SI-SNR loss of the batch before the
    step (computed here through the model's own forward) and moves the
    weights by one Adam step of the recipe's learning rate."""
    torch.manual_seed(0)
    model = builder()
    batch = separation_batch(0.25, 1)
    targets = torch.stack([batch.s1_sig.data, batch.s2_sig.data], dim=-1)
    with torch.no_grad():
        expected = get_si_snr_with_pitwrapper(
            targets, model.train()(batch.mix_sig.data)
        ).mean()
    before = [p.detach().clone() for p in model.parameters()]

    brain = separation_brain(model, "cpu", "fp32")
    step = brain_step(brain, batch, "train")
    loss = step()

    assert brain.optimizer_step == 1
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5)
    # Adam's first step moves each weight by lr * g / (|g| + eps): lr
    change = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(model.parameters(), before)
    )
    assert change == pytest.approx(RECIPE_LR, rel=1e-3)
    assert all(p.grad is None for p in model.parameters())  # zero_grad
    assert brain.modules.training


@pytest.mark.parametrize("builder", BUILDERS)
def test_infer_step_is_the_eval_forward_without_gradients(builder):
    torch.manual_seed(0)
    model = builder()
    batch = separation_batch(0.25, 1)
    brain = separation_brain(model, "cpu", "fp32")
    est = brain_step(brain, batch, "infer")()
    assert not brain.modules.training and not est.requires_grad
    with torch.no_grad():
        expected = model.eval()(batch.mix_sig.data)
    torch.testing.assert_close(est, expected, rtol=1e-5, atol=1e-6)
    result = measure_brain_step(brain, batch, "infer", repeats=2)
    assert result["runs"] == 2 and result["seconds"] > 0
    assert result["oom"] is False and result["cuda_graph"] is False


def test_brain_needs_a_separation_model():
    model = torch.nn.Module()
    model.encoder = torch.nn.Identity()
    with pytest.raises(ValueError, match="Module has no masknet, decoder "):
        separation_brain(model)
    with pytest.raises(ValueError, match="Linear has no encoder"):
        separation_brain(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="precision must be one of"):
        separation_brain(tiny_mamba_tasnet(), precision="bfloat16")
    with pytest.raises(ValueError, match="mode must be one of"):
        brain_step(separation_brain(tiny_mamba_tasnet()), None, "ar-step")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "harness, flag", [("brain", []), ("module", ["--no-masknet-graphs"])]
)
def test_cli_writes_harness_rows_and_ratios(
    tmp_path, monkeypatch, harness, flag
):
    """The separation rows of the chosen harness, both models, a ratio per
    mode; the mask net's own graphs stay on unless --no-masknet-graphs."""
    built = []

    def record(builder):
        def build():
            built.append(builder())
            return built[-1]

        return build

    _, _, make_input, rate = efficiency.TASKS["separation"]
    monkeypatch.setitem(
        efficiency.TASKS,
        "separation",
        (record(tiny_mamba_tasnet), record(tiny_sepformer), make_input, rate),
    )
    out = tmp_path / "eff"
    efficiency.main(
        [
            "--out", str(out), "--device", "cpu", "--tasks", "separation",
            "--seconds", "0.25", "--modes", "train", "infer", "--dtypes",
            "float32", "--repeats", "1", "--harness", harness, *flag,
        ]
    )  # fmt: skip
    rows = read_csv(out / "results.csv")
    assert {(r["model"], r["mode"]) for r in rows} == {
        (model, mode)
        for model in ("MambaTasNetMaskNet", "Dual_Path_Model")
        for mode in ("train", "infer")
    }
    assert {r["harness"] for r in rows} == {harness}
    assert all(float(r["seconds_median"]) > 0 for r in rows)
    times = {(r["role"], r["mode"]): float(r["seconds_median"]) for r in rows}
    ratios = read_csv(out / "ratios.csv")
    assert sorted(r["mode"] for r in ratios) == ["infer", "train"]
    for r in ratios:
        assert r["harness"] == harness
        expected = times[("peer", r["mode"])] / times[("mamba", r["mode"])]
        assert math.isclose(float(r["time_ratio"]), expected, rel_tol=1e-9)
    assert built[0].masknet.cuda_graphs is not bool(flag)


def test_ratios_pair_rows_of_one_harness():
    def row(role, harness, seconds_median):
        return dict(
            task="separation", role=role, seconds=1, mode="train",
            dtype="float32", harness=harness, model=role, oom=False,
            seconds_median=seconds_median, peak_mib=None,
        )  # fmt: skip

    rows = [
        row("mamba", "brain", 2.0),
        row("peer", "brain", 3.0),
        row("mamba", "module", 1.0),
        row("peer", "module", 4.0),
    ]
    ratios = {
        r["harness"]: r["time_ratio"] for r in efficiency.ratio_rows(rows)
    }
    assert ratios == {"brain": 1.5, "module": 4.0}


def test_only_separation_has_a_brain_harness():
    assert efficiency.task_harness("separation", "brain") == "brain"
    assert efficiency.task_harness("asr", "brain") == "module"
    assert efficiency.task_harness("separation", "module") == "module"
    with pytest.raises(ValueError, match="harness must be one of"):
        efficiency.task_harness("separation", "recipe")
