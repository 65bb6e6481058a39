"""CompleteCheckpointer: a checkpoint left half-written by a kill is
skipped on resume and cleaned up at the next save."""

import time

import torch

from speechbrain_mamba.ssl.checkpoints import (
    COMPLETE_MARKER,
    SAVING_MARKER,
    CompleteCheckpointer,
)


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 3)
    ckpter = CompleteCheckpointer(tmp_path, {"model": model})
    good = ckpter.save_checkpoint(meta={"step": 1})
    assert (good.path / COMPLETE_MARKER).is_file()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    time.sleep(0.01)
    # a newer checkpoint whose model file was cut short by a kill
    broken = ckpter.save_checkpoint(meta={"step": 2})
    (broken.path / COMPLETE_MARKER).unlink()
    (broken.path / SAVING_MARKER).write_text("")  # the save never finished
    data = (broken.path / "model.ckpt").read_bytes()
    (broken.path / "model.ckpt").write_bytes(data[: len(data) // 3])
    with torch.no_grad():
        model.weight.zero_()
    fresh = CompleteCheckpointer(tmp_path, {"model": model})
    loaded = fresh.recover_if_possible()
    assert loaded.path == good.path and loaded.meta["step"] == 1
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    # the next successful save removes the leftover
    fresh.save_and_keep_only(meta={"step": 3}, num_to_keep=5)
    assert not broken.path.exists()
    assert len(fresh.list_checkpoints()) == 2
