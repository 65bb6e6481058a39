"""Atomic writes: a failed write leaves the previous file and no temporary
file behind; a successful one replaces the file whole."""

import pytest
import torch

from speechbrain_mamba.separation.io import (
    atomic_write_csv,
    atomic_write_text,
    atomic_write_wav,
    read_audio,
)


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_csv(target, ["ID", "x"], [{"ID": "a", "x": 1}])
    before = target.read_text()
    with pytest.raises(ValueError):  # a field the header does not have
        atomic_write_csv(target, ["ID", "x"], [{"ID": "b", "y": 2}])
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_writes_replace_whole_files_and_create_folders(tmp_path):
    text = atomic_write_text(tmp_path / "new" / "note.txt", "first")
    atomic_write_text(text, "second")
    assert text.read_text() == "second"
    wav = atomic_write_wav(tmp_path / "a" / "x.wav", torch.zeros(800), 8000)
    assert read_audio(wav, 8000).shape == (800,)
    leftovers = [p.name for p in tmp_path.rglob(".*.tmp")]
    assert leftovers == []
