"""The one training time budget (speechbrain_mamba.utils.time_budget): every
Brain of the package reads ``train_time_budget_s``; under DDP all processes
stop at the same step, decided by the first process out of time."""

import json
import os
import socket
import time

import pytest
import speechbrain as sb
import torch
import torch.multiprocessing as mp

from speechbrain_mamba.asr.brain import CTCASR, S2SASR
from speechbrain_mamba.separation.brain import SeparationBrain
from speechbrain_mamba.ssl.brain import CTCFinetuneBrain, HuBERTPretrainBrain
from speechbrain_mamba.utils.time_budget import (
    TrainTimeBudget,
    train_time_budget,
)


class _Toy(TrainTimeBudget, sb.Brain):
    def compute_forward(self, batch, stage):
        return self.modules.lin(batch)

    def compute_objectives(self, out, batch, stage):
        return out.pow(2).mean()


@pytest.mark.parametrize(
    "brain",
    [SeparationBrain, S2SASR, CTCASR, HuBERTPretrainBrain, CTCFinetuneBrain],
)
def test_every_brain_has_the_one_budget(brain):
    assert issubclass(brain, TrainTimeBudget)
    # the mixin's check is the one used, not a copy in the Brain
    assert (
        brain._optimizer_step_limit_exceeded
        is TrainTimeBudget._optimizer_step_limit_exceeded
    )


def test_bad_budget_fails_before_training():
    data = torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)
    brain = _Toy(
        {"lin": torch.nn.Linear(1, 1)},
        torch.optim.SGD,
        hparams={"train_time_budget_s": "an hour"},
    )
    with pytest.raises(ValueError, match="train_time_budget_s.*'an hour'"):
        brain.fit(range(1, 2), data, progressbar=False)
    assert brain.optimizer_step == 0


def test_old_asr_name_is_read_with_a_warning():
    with pytest.warns(DeprecationWarning, match="training_budget_s"):
        assert train_time_budget({"training_budget_s": 0}) == 0.0
    # the new name wins
    assert train_time_budget(
        {"train_time_budget_s": 7, "training_budget_s": 1}
    ) == pytest.approx(7.0)


def _rank(rank: int, world: int, port: int, budgets, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data = torch.utils.data.DataLoader(torch.ones(6, 1), batch_size=1)
        brain = _Toy(
            {"lin": torch.nn.Linear(1, 1)},
            torch.optim.SGD,
            hparams={"train_time_budget_s": budgets[rank]},
            run_opts={"device": "cpu"},
        )
        brain.fit(range(1, 4), data, progressbar=False)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fout:
            json.dump({"steps": brain.optimizer_step}, fout)
        torch.distributed.barrier()  # both done before gloo is torn down
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "budgets, steps", [((3600.0, 0.0), 0), ((None, None), 18)]
)
def test_ddp_processes_stop_at_the_same_step(tmp_path, budgets, steps):
    # rank 1 is out of time at once, rank 0 is not: both stop before any
    # step (a process that trained on would wait forever for the other)
    mp.start_processes(
        _rank,
        args=(2, _free_port(), budgets, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    done = [
        json.loads((tmp_path / f"rank{r}.json").read_text())["steps"]
        for r in range(2)
    ]
    assert done == [steps, steps]


class _SlowFirstItem(torch.utils.data.Dataset):
    """Four items; the first takes longer to load than the budget."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 0:
            time.sleep(0.3)
        return torch.ones(1)


def test_budget_spent_before_the_first_batch_still_trains_one_step():
    """A loaded machine: the budget runs out while the first batch loads.
    The fit still trains that batch (validating an untrained model failed,
    e.g. feature normalisation without statistics), then stops."""
    data = torch.utils.data.DataLoader(_SlowFirstItem(), batch_size=1)
    brain = _Toy(
        {"lin": torch.nn.Linear(1, 1)},
        torch.optim.SGD,
        hparams={"train_time_budget_s": 0.1},
    )
    before = brain.modules.lin.weight.detach().clone()
    brain.fit(range(1, 3), data, progressbar=False)
    assert brain.optimizer_step == 1
    assert not torch.equal(brain.modules.lin.weight, before)


class _NeverSteps(_Toy):
    """A Brain whose every batch is skipped (as SeparationBrain skips a
    non-finite loss): no optimizer step ever happens."""

    batches = 0

    def fit_batch(self, batch):
        self.batches += 1
        return torch.tensor(0.0)


def test_budget_stops_a_run_that_never_steps():
    data = torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=1)
    brain = _NeverSteps(
        {"lin": torch.nn.Linear(1, 1)},
        torch.optim.SGD,
        hparams={"train_time_budget_s": 1e-9},
    )
    brain.fit(range(1, 4), data, progressbar=False)
    assert brain.batches == 1  # the first batch only, in 3 epochs of 4
    assert brain.optimizer_step == 0
