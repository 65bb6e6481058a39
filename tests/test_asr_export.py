"""The ASR hub export (speechbrain_mamba.asr.export) and its target folder:
a non-empty folder is refused with its content named and left as it was;
``--force`` / ``force=True`` replaces its whole content (no file of the old
content survives, nothing is left next to it)."""

from pathlib import Path

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

import speechbrain_mamba  # noqa: F401  (before speechbrain's audio I/O)
from speechbrain_mamba.asr.export import export_asr, main
from speechbrain_mamba.utils.atomic import NonEmptyFolderError

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "LibriSpeech"
CTC_HPARAMS = RECIPE / "ASR" / "CTC" / "hparams" / "conmamba_large.yaml"
HUB_FILES = [
    "asr.ckpt",
    "hyperparams.yaml",
    "normalizer.ckpt",
    "tokenizer.ckpt",
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """What the CTC recipe leaves behind (tiny model): saved hparams, the
    tokenizer and a checkpoint with a WER."""
    tmp = tmp_path_factory.mktemp("asr_export")
    overrides = {
        "data_folder": str(tmp / "data"),
        "output_folder": str(tmp / "exp"),
        "d_model": 16,
        "nhead": 2,
        "num_encoder_layers": 1,
        "d_ffn": 32,
        "kernel_size": 7,
        "d_state": 4,
    }
    sb.create_experiment_directory(
        experiment_directory=overrides["output_folder"],
        hyperparams_to_save=str(CTC_HPARAMS),
        overrides=overrides,
    )
    exp = Path(overrides["output_folder"])
    with open(exp / "hyperparams.yaml", encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin)
    Path(hp["save_folder"]).mkdir(parents=True, exist_ok=True)
    (Path(hp["save_folder"]) / "tokenizer.ckpt").write_bytes(b"spm model")
    hp["checkpointer"].save_checkpoint(meta={"WER": 50.0})
    return exp, hp["model"].state_dict()


def _hand_edited_hub(folder):
    """A hub folder of another model, with a hand-edited YAML."""
    folder.mkdir(parents=True)
    (folder / "hyperparams.yaml").write_bytes(b"# my edits\nsample_rate: 1\n")
    (folder / "ar.ckpt").write_bytes(b"a TTS model")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_export_refuses_non_empty_folder(experiment, tmp_path):
    exp, _ = experiment
    hub = tmp_path / "hub"
    before = _hand_edited_hub(hub)
    with pytest.raises(NonEmptyFolderError) as err:
        export_asr(exp, hub)
    assert str(err.value).startswith(
        f"{hub} is not empty (it holds ar.ckpt, hyperparams.yaml): "
    )
    assert "--force" in str(err.value)
    with pytest.raises(NonEmptyFolderError):
        main([str(exp), str(hub)])
    assert {p.name: p.read_bytes() for p in hub.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


def test_force_replaces_folder_content(experiment, tmp_path):
    exp, state = experiment
    hub = tmp_path / "hub"
    _hand_edited_hub(hub)
    main([str(exp), str(hub), "--force"])
    assert sorted(p.name for p in hub.iterdir()) == HUB_FILES
    assert b"# my edits" not in (hub / "hyperparams.yaml").read_bytes()
    exported = torch.load(hub / "asr.ckpt")
    for key, value in state.items():
        torch.testing.assert_close(exported[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]
    # an empty folder needs no --force
    empty = tmp_path / "empty"
    empty.mkdir()
    export_asr(exp, empty)
    assert sorted(p.name for p in empty.iterdir()) == HUB_FILES


def test_force_never_replaces_the_experiment(experiment):
    exp, _ = experiment
    with pytest.raises(ValueError, match="which the export reads"):
        export_asr(exp, exp, force=True)
    assert (exp / "save").is_dir()
