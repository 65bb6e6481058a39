"""CompleteCheckpointer (speechbrain_mamba.utils.checkpoints): save/recover
round trip, a save interrupted by a kill (also before CKPT.yaml is written),
legacy (marker-less) checkpoints, complete checkpoints damaged afterwards,
DDP (only rank 0 writes the markers), and a separation recipe that resumes
from the last complete checkpoint after a kill in the middle of a save."""

import logging
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
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
from speechbrain_mamba.separation.recipe import train_and_test
from speechbrain_mamba.utils.checkpoints import (
    COMPLETE_MARKER,
    SAVING_MARKER,
    CompleteCheckpointer,
    DamagedCheckpointError,
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


def _separation_like(folder, **kwargs):
    """A checkpointer with the recoverables of the separation recipe."""
    masknet = torch.nn.Linear(4, 3)
    recoverables = {
        "masknet": masknet,
        "optimizer": torch.optim.Adam(masknet.parameters()),
        "counter": EpochCounter(10),
    }
    return CompleteCheckpointer(folder, recoverables, **kwargs), masknet


def _truncate_masknet(folder):
    data = (folder / "masknet.ckpt").read_bytes()
    (folder / "masknet.ckpt").write_bytes(data[: len(data) // 2])


def _empty_optimizer(folder):
    (folder / "optimizer.ckpt").write_bytes(b"")


def _delete_masknet(folder):
    (folder / "masknet.ckpt").unlink()


def _truncate_meta(folder):
    # cut after the comment line SpeechBrain writes first: no mapping left
    text = (folder / "CKPT.yaml").read_text()
    (folder / "CKPT.yaml").write_text(text[: text.index("\n") + 1])


DAMAGES = {
    "truncated masknet": (_truncate_masknet, "masknet.ckpt is cut short"),
    "empty optimizer": (_empty_optimizer, "optimizer.ckpt is empty"),
    "missing masknet": (_delete_masknet, "masknet.ckpt is missing"),
    "truncated CKPT.yaml": (_truncate_meta, "CKPT.yaml is empty or cut"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_complete_checkpoint_named_with_recovery(tmp_path, damage):
    """A COMPLETE checkpoint damaged after its save is never skipped
    silently: the error names the folder, the file, the problem and the
    previous checkpoint to resume from; following it resumes there."""
    damage_fn, problem = DAMAGES[damage]
    ckpter, masknet = _separation_like(tmp_path)
    epoch1 = ckpter.save_checkpoint(meta={"epoch": 1})
    saved = _state(masknet)
    time.sleep(0.01)
    with torch.no_grad():
        masknet.weight.fill_(5.0)
    epoch2 = ckpter.save_checkpoint(meta={"epoch": 2})
    damage_fn(epoch2.path)

    fresh, fresh_net = _separation_like(tmp_path)
    with pytest.raises(DamagedCheckpointError) as err:
        fresh.recover_if_possible()
    message = str(err.value)
    assert f"damaged checkpoint {epoch2.path}: {problem}" in message
    assert (
        f"to resume from the previous complete checkpoint {epoch1.path}, "
        f"move or delete {epoch2.path}" in message
    )
    assert err.value.folder == epoch2.path
    assert err.value.previous == epoch1.path
    # listing for a save or an export stops the same way
    with pytest.raises(DamagedCheckpointError):
        fresh.find_checkpoints(min_key="epoch")

    # the recovery the message gives
    shutil.move(epoch2.path, tmp_path.parent / f"{tmp_path.name}-damaged")
    found = fresh.recover_if_possible()
    assert found.path == epoch1.path and found.meta["epoch"] == 1
    for key, value in fresh_net.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_damaged_only_checkpoint_says_start_from_scratch(tmp_path):
    ckpter, _ = _separation_like(tmp_path)
    only = ckpter.save_checkpoint(meta={"epoch": 1})
    _empty_optimizer(only.path)
    with pytest.raises(DamagedCheckpointError) as err:
        _separation_like(tmp_path)[0].recover_if_possible()
    assert err.value.previous is None
    assert (
        f"there is no earlier complete checkpoint: move or delete "
        f"{only.path} to start training from scratch" in str(err.value)
    )


def test_skip_damaged_resumes_from_previous_and_keeps_folder(tmp_path, caplog):
    ckpter, _ = _separation_like(tmp_path)
    epoch1 = ckpter.save_checkpoint(meta={"epoch": 1})
    time.sleep(0.01)
    epoch2 = ckpter.save_checkpoint(meta={"epoch": 2})
    _truncate_masknet(epoch2.path)
    skipping, _ = _separation_like(tmp_path, skip_damaged=True)
    with caplog.at_level(logging.WARNING):
        found = skipping.recover_if_possible()
    assert found.path == epoch1.path
    assert f"skipping the damaged checkpoint {epoch2.path}" in caplog.text
    assert "masknet.ckpt is cut short" in caplog.text
    assert epoch2.path.is_dir()


def _killed_before_meta(self, fpath, *args, **kwargs):
    raise _Killed  # SpeechBrain's CKPT.yaml writer: nothing written yet


def test_save_removes_saves_killed_before_ckpt_yaml(tmp_path, monkeypatch):
    """A kill at 0 ms into a save leaves a folder without CKPT.yaml (only
    SAVING, or nothing); the next save deletes such folders of its own
    directory and nothing else."""
    model = torch.nn.Linear(4, 3)
    ckpter = CompleteCheckpointer(tmp_path, {"model": model})
    good = ckpter.save_checkpoint(meta={"epoch": 1})
    time.sleep(0.01)
    monkeypatch.setattr(
        Checkpointer, "_save_checkpoint_metafile", _killed_before_meta
    )
    with pytest.raises(_Killed):
        ckpter.save_checkpoint(meta={"epoch": 2})
    monkeypatch.undo()
    (killed,) = set(tmp_path.glob("CKPT+*")) - {good.path}
    assert [p.name for p in killed.iterdir()] == [SAVING_MARKER]
    # killed between mkdir and the marker; killed before CKPT.yaml.tmp moved
    empty = tmp_path / "CKPT+2000-01-01+00-00-00+00"
    empty.mkdir()
    with_tmp = tmp_path / "CKPT+2000-01-01+00-00-00+01"
    with_tmp.mkdir()
    (with_tmp / SAVING_MARKER).write_text("")
    (with_tmp / "CKPT.yaml.tmp").write_text("# yamllint disable\n")
    # not this checkpointer's saves in progress: kept
    legacy_cut = Checkpointer(tmp_path, {"model": model}).save_checkpoint(
        meta={"epoch": 0}
    )
    (legacy_cut.path / "model.ckpt").write_bytes(b"")
    not_ckpt = tmp_path / "notes"
    not_ckpt.mkdir()
    (not_ckpt / SAVING_MARKER).write_text("")
    other_dir = tmp_path.parent / f"{tmp_path.name}-other" / "CKPT+x"
    other_dir.mkdir(parents=True)
    (other_dir / SAVING_MARKER).write_text("")

    new = ckpter.save_checkpoint(meta={"epoch": 2})
    assert not killed.exists()
    assert not empty.exists() and not with_tmp.exists()
    assert legacy_cut.path.is_dir() and (not_ckpt / SAVING_MARKER).is_file()
    assert (other_dir / SAVING_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [good.path.name, new.path.name, legacy_cut.path.name, "notes"]
    )


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


def test_separation_recipe_kill_at_save_start_logs_each_epoch_once(
    corpus, tmp_path, monkeypatch
):
    """A kill at the very start of the epoch-1 save: the resumed run
    re-runs epoch 1, logs it once and deletes the left-over folder; a
    COMPLETE checkpoint damaged afterwards stops the next run with the
    folder and file named."""
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
    monkeypatch.setattr(
        Checkpointer, "_save_checkpoint_metafile", _killed_before_meta
    )
    with pytest.raises(_Killed):
        train_and_test(hparams, overrides, {"device": "cpu"}, test=False)
    monkeypatch.undo()
    (stale,) = (out / "save").glob("CKPT+*")
    assert [p.name for p in stale.iterdir()] == [SAVING_MARKER]

    brain = train_and_test(hparams, overrides, {"device": "cpu"}, test=False)
    assert brain.hparams.epoch_counter.current == 1
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1
    assert not stale.exists()
    (ckpt,) = (out / "save").glob("CKPT+*")
    assert (ckpt / COMPLETE_MARKER).is_file()

    _truncate_masknet(ckpt)
    with pytest.raises(DamagedCheckpointError) as err:
        train_and_test(
            hparams,
            {**overrides, "number_of_epochs": 2},
            {"device": "cpu"},
            test=False,
        )
    assert f"{ckpt}: masknet.ckpt is cut short" in str(err.value)
    assert "start training from scratch" in str(err.value)
