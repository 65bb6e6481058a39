"""Atomic writes: a failed write leaves the previous file and no temporary
file behind; a successful one replaces the file whole."""

import pytest
import torch

from speechbrain_mamba.utils.atomic import (
    atomic_write_csv,
    atomic_write_text,
    atomic_write_wav,
)
from speechbrain_mamba.utils.io import read_audio


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


def test_atomic_folder_keeps_old_content_on_error_and_refuses_sources(
    tmp_path,
):
    from speechbrain_mamba.utils.atomic import (
        NonEmptyFolderError,
        atomic_folder,
    )

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "old.txt").write_text("old")
    with pytest.raises(NonEmptyFolderError, match="it holds old.txt"):
        with atomic_folder(hub):
            pass
    with pytest.raises(RuntimeError, match="failed"):
        with atomic_folder(hub, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("export failed")
    assert [p.name for p in hub.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]
    with pytest.raises(ValueError, match="which the export reads"):
        with atomic_folder(tmp_path, force=True, sources=[hub / "old.txt"]):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass
