"""The training loop of the separation Brain: Mamba-TasNet learns to separate
spectrally distinct sources, loss thresholding and skipped batches, the
cosine schedule and the wall-clock budget."""

import math

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.dual_path import Decoder, Encoder
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.separation.brain import (
    SeparationBrain,
    reset_layer_recursively,
)
from speechbrain_mamba.separation.lr_schedule import WarmupCosineScheduler


def _item(i, g, length=1600, rate=8000):
    """A low sine plus a high square wave (random pitch, phase, level)."""
    t = torch.arange(length) / rate
    f1 = 200 + 200 * torch.rand((), generator=g)
    f2 = 1500 + 1000 * torch.rand((), generator=g)
    phase = 6 * torch.rand((), generator=g)
    s1 = torch.sin(2 * math.pi * f1 * t + phase)
    s1 = s1 * (0.5 + torch.rand((), generator=g))
    s2 = torch.sign(torch.sin(2 * math.pi * f2 * t))
    s2 = s2 * 0.3 * (0.5 + torch.rand((), generator=g))
    return {"id": str(i), "mix_sig": s1 + s2, "s1_sig": s1, "s2_sig": s2}


def _brain(hparams=None, lr=3e-3):
    modules = {
        "encoder": Encoder(kernel_size=16, out_channels=64),
        "masknet": MambaTasNetMaskNet(64, out_channels=32, num_layers=1),
        "decoder": Decoder(
            in_channels=64, out_channels=1, kernel_size=16, stride=8, bias=False
        ),
    }
    for module in modules.values():
        reset_layer_recursively(module)
    base = {
        "num_spks": 2,
        "sample_rate": 8000,
        "loss": get_si_snr_with_pitwrapper,
        "clip_grad_norm": 5,
    }
    brain = SeparationBrain(
        modules,
        opt_class=lambda params: torch.optim.Adam(params, lr),
        hparams={**base, **(hparams or {})},
        run_opts={"device": "cpu"},
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0
    return brain


def _si_snr_i(brain, batch):
    brain.modules.eval()
    with torch.no_grad():
        est, targets, mix = brain.compute_forward(batch, sb.Stage.VALID)
        loss = get_si_snr_with_pitwrapper(targets, est)
        base = get_si_snr_with_pitwrapper(
            targets, mix.unsqueeze(-1).expand_as(targets)
        )
    brain.modules.train()
    return float(-(loss - base).mean())


def test_mamba_tasnet_learns_to_separate():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    brain = _brain()
    valid = PaddedBatch([_item(1000 + i, g) for i in range(6)])
    before = _si_snr_i(brain, valid)
    for step in range(60):
        batch = PaddedBatch([_item(4 * step + j, g) for j in range(4)])
        loss = brain.fit_batch(batch)
        assert math.isfinite(float(loss))
    after = _si_snr_i(brain, valid)
    assert brain.optimizer_step == 60
    assert before < 0 and after > 8.0, (before, after)


def test_threshold_and_upper_limit_skip_batches():
    g = torch.Generator().manual_seed(1)
    batch = PaddedBatch([_item(0, g), _item(1, g)])
    # every utterance is "too good" for a threshold of +100 dB loss
    brain = _brain({"threshold_byloss": True, "threshold": 100.0})
    params = [p.detach().clone() for p in brain.modules.parameters()]
    loss = brain.fit_batch(batch)
    assert math.isnan(float(loss)) and brain.optimizer_step == 0
    assert brain.nonfinite_count == 1
    for p, q in zip(params, brain.modules.parameters()):
        assert torch.equal(p, q)
    # losses above the upper limit are skipped too
    brain = _brain({"loss_upper_lim": -100.0})
    assert math.isnan(float(brain.fit_batch(batch)))
    assert brain.optimizer_step == 0
    # a normal batch steps
    brain = _brain({"threshold_byloss": True, "threshold": -40.0})
    assert math.isfinite(float(brain.fit_batch(batch)))
    assert brain.optimizer_step == 1


def test_step_wise_cosine_schedule_is_applied():
    g = torch.Generator().manual_seed(2)
    sched = WarmupCosineScheduler(1e-3, warmup_steps=2, total_steps=4)
    brain = _brain({"lr_scheduler": sched}, lr=1e-3)
    lrs = []
    for i in range(4):
        brain.fit_batch(PaddedBatch([_item(i, g)]))
        lrs.append(brain.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([sched.lr_at(s) for s in (1, 2, 3, 4)])
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] == pytest.approx(1e-5)


def test_time_budget_stops_training(tmp_path):
    g = torch.Generator().manual_seed(3)
    data = [_item(i, g) for i in range(3)]
    counter = sb.utils.epoch_loop.EpochCounter(5)
    brain = _brain({"train_time_budget_s": 0, "epoch_counter": counter})
    brain.fit(
        counter,
        data,
        data,
        train_loader_kwargs={"batch_size": 1, "collate_fn": PaddedBatch},
        valid_loader_kwargs={"batch_size": 1, "collate_fn": PaddedBatch},
    )
    # a zero budget stops before the first batch, after one validation
    assert brain.optimizer_step == 0 and counter.current == 1
    assert math.isfinite(brain.valid_stats["si-snr_i"])
    brain = _brain({"train_time_budget_s": None})
    brain.fit(
        sb.utils.epoch_loop.EpochCounter(2),
        data,
        train_loader_kwargs={"batch_size": 1, "collate_fn": PaddedBatch},
    )
    assert brain.optimizer_step == 6
