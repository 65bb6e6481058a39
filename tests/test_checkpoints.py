"""CompleteCheckpointer (speechbrain_mamba.utils.checkpoints): save/recover
round trip, a save interrupted by a kill, legacy (marker-less) checkpoints,
DDP (only rank 0 writes the markers), and a separation recipe that resumes
from the last complete checkpoint after a kill in the middle of a save."""

import shutil
import socket
import time
from pathlib import Path

# isort: off
import speechbrain_mamba  # noqa: F401  (torchaudio compat, spawned workers)

# isort: on
import pytest
import torch
import yaml
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
from speechbrain_mamba.separation.recipe import train_and_test
from speechbrain_mamba.utils.checkpoints import (
    COMPLETE_MARKER,
    SAVING_MARKER,
    CompleteCheckpointer,
    checkpoint_status,
)

ROOT = Path(__file__).resolve().parents[1]
WSJ0MIX = ROOT / "recipes" / "WSJ0Mix" / "separation" / "hparams"


class _Killed(BaseException):
    """Stands for the signal that stops a process in the middle of a save."""


def _kill_hook(obj, path):
    raise _Killed


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_save_and_recover_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    ckpter = CompleteCheckpointer(tmp_path, {"model": model})
    ckpt = ckpter.save_checkpoint(meta={"epoch": 1})
    files = sorted(p.name for p in ckpt.path.iterdir())
    assert files == ["CKPT.yaml", COMPLETE_MARKER, "model.ckpt"]
    saved = _state(model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    loaded = CompleteCheckpointer(tmp_path, {"model": model})
    found = loaded.recover_if_possible()
    assert found.path == ckpt.path and found.meta["epoch"] == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    # save_and_keep_only keeps the newest complete ones
    for epoch in (2, 3):
        time.sleep(0.01)
        loaded.save_and_keep_only(meta={"epoch": epoch}, num_to_keep=2)
    epochs = sorted(c.meta["epoch"] for c in loaded.list_checkpoints())
    assert epochs == [2, 3]


def test_kill_during_save_resumes_from_last_complete(tmp_path):
    model = torch.nn.Linear(4, 3)
    counter = torch.nn.Linear(1, 1)
    ckpter = CompleteCheckpointer(
        tmp_path, {"model": model, "counter": counter}
    )
    good = ckpter.save_checkpoint(meta={"epoch": 1})
    saved = _state(model)
    time.sleep(0.01)
    with torch.no_grad():
        model.weight.zero_()
    # killed after model.ckpt was written, while saving counter
    ckpter.custom_save_hooks["counter"] = _kill_hook
    with pytest.raises(_Killed):
        ckpter.save_checkpoint(meta={"epoch": 2})
    (killed,) = set(tmp_path.glob("CKPT+*")) - {good.path}
    assert {p.name for p in killed.iterdir()} == {
        SAVING_MARKER,
        "CKPT.yaml",
        "model.ckpt",
    }
    assert checkpoint_status(killed) == "interrupted"
    # plain SpeechBrain would pick the newer, incomplete folder
    plain = Checkpointer(tmp_path, {"model": model, "counter": counter})
    assert plain.find_checkpoint().path == killed

    fresh = CompleteCheckpointer(tmp_path, {"model": model, "counter": counter})
    found = fresh.recover_if_possible()
    assert found.path == good.path and found.meta["epoch"] == 1
    torch.testing.assert_close(model.weight, saved["weight"])
    fresh.save_and_keep_only(meta={"epoch": 2}, num_to_keep=5)
    assert not killed.exists()
    assert sorted(c.meta["epoch"] for c in fresh.list_checkpoints()) == [1, 2]


def test_legacy_checkpoints_without_marker(tmp_path):
    model = torch.nn.Linear(4, 3)
    old = Checkpointer(tmp_path, {"model": model}).save_checkpoint(
        meta={"epoch": 1}
    )
    assert not (old.path / COMPLETE_MARKER).exists()
    saved = _state(model)
    with torch.no_grad():
        model.weight.zero_()
    ckpter = CompleteCheckpointer(tmp_path, {"model": model})
    assert checkpoint_status(old.path, ["model"]) == "legacy"
    assert ckpter.recover_if_possible().path == old.path
    torch.testing.assert_close(model.weight, saved["weight"])

    # a legacy folder cut short by a kill is ignored but kept on disk
    time.sleep(0.01)
    cut = Checkpointer(tmp_path, {"model": model}).save_checkpoint(
        meta={"epoch": 2}
    )
    data = (cut.path / "model.ckpt").read_bytes()
    (cut.path / "model.ckpt").write_bytes(data[: len(data) // 2])
    assert checkpoint_status(cut.path) == "broken"
    assert ckpter.find_checkpoint().path == old.path
    # a recoverable missing from a legacy folder also makes it unusable
    extra = CompleteCheckpointer(
        tmp_path, {"model": model, "optimizer": torch.nn.Linear(1, 1)}
    )
    assert extra.find_checkpoint() is None
    ckpter.save_and_keep_only(meta={"epoch": 3}, num_to_keep=5)
    assert cut.path.is_dir()
    epochs = sorted(c.meta["epoch"] for c in ckpter.list_checkpoints())
    assert epochs == [1, 3]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, folder, port, results):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        ckpter = CompleteCheckpointer(folder, {"model": model})
        ckpt = ckpter.save_checkpoint(meta={"epoch": 1})
        found = ckpter.find_checkpoint()
        results[rank] = (ckpt is None, str(found.path))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_only_rank_zero_marks(tmp_path):
    """Two gloo processes save together; the checkpoint is complete and
    both see it (only rank 0 returns it and writes the markers)."""
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(
        _ddp_worker,
        args=(str(tmp_path), _free_port(), results),
        nprocs=2,
    )
    (folder,) = tmp_path.glob("CKPT+*")
    assert checkpoint_status(folder) == "complete"
    assert not (folder / SAVING_MARKER).exists()
    assert results[0] == (False, str(folder))
    assert results[1] == (True, str(folder))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_wsj0_2mix(
        tmp_path_factory.mktemp("corpus") / "wsj0-2mix", num_utterances=6
    )


def test_separation_recipe_resumes_after_kill_during_save(corpus, tmp_path):
    out = tmp_path / "exp"
    overrides = {
        "data_folder": str(corpus),
        "output_folder": str(out),
        "N_encoder_out": 8,
        "out_channels": 8,
        "num_layers": 1,
        "number_of_epochs": 1,
        "train_limit": 1,
        "valid_limit": 1,
        "test_limit": 1,
        "warmup_steps": 0,
        "n_audio_to_save": 0,
        "compute_pesq": False,
        "compute_stoi": False,
        "train_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        "eval_dataloader_opts": {"batch_size": 1, "num_workers": 0},
    }
    hparams = WSJ0MIX / "mamba_tasnet_XS.yaml"
    train_and_test(hparams, overrides, {"device": "cpu"}, test=False)
    (epoch1,) = (out / "save").glob("CKPT+*")
    assert (epoch1 / COMPLETE_MARKER).is_file()

    # a run killed while saving epoch 2: newer CKPT.yaml and counter,
    # masknet.ckpt cut short, the rest never written
    killed = out / "save" / "CKPT+2099-01-01+00-00-00+00"
    killed.mkdir()
    (killed / SAVING_MARKER).write_text("")
    meta = yaml.safe_load((epoch1 / "CKPT.yaml").read_text())
    meta["unixtime"] = meta["unixtime"] + 3600
    (killed / "CKPT.yaml").write_text(yaml.dump(meta))
    shutil.copy(epoch1 / "encoder.ckpt", killed)
    (killed / "counter.ckpt").write_text("2")
    data = (epoch1 / "masknet.ckpt").read_bytes()
    (killed / "masknet.ckpt").write_bytes(data[: len(data) // 2])

    brain = train_and_test(
        hparams,
        {**overrides, "number_of_epochs": 2},
        {"device": "cpu"},
        test=False,
    )
    assert brain.hparams.epoch_counter.current == 2
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1
    assert not killed.exists()
    kept = brain.checkpointer.list_checkpoints()
    assert all((c.path / COMPLETE_MARKER).is_file() for c in kept)
    newest = max(kept, key=lambda c: c.meta["unixtime"])
    assert (newest.path / "counter.ckpt").read_text().strip() == "2"
