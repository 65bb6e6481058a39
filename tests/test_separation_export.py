"""Tests of the hub export: a trained experiment folder becomes a folder
that SpeechBrain's SepformerSeparation loads offline and uses through
separate_file / separate_batch."""

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from speechbrain.inference.separation import SepformerSeparation

from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
from speechbrain_mamba.separation.export import (
    export_experiment,
    main,
    upload_to_hub,
)
from speechbrain_mamba.separation.recipe import train_and_test
from speechbrain_mamba.utils.io import read_audio

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "recipes" / "WSJ0Mix" / "separation" / "hparams"


def _train(corpus, out, hparams, model):
    overrides = {
        "data_folder": str(corpus),
        "output_folder": str(out),
        "N_encoder_out": 16,
        "out_channels": 16,
        "number_of_epochs": 1,
        "train_limit": 1,
        "valid_limit": 1,
        "test_limit": 1,
        "warmup_steps": 0,
        "compute_pesq": False,
        "save_audio": False,
        "train_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        "eval_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        **model,
    }
    return train_and_test(HPARAMS / hparams, overrides, {"device": "cpu"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_wsj0_2mix(
        tmp_path_factory.mktemp("corpus") / "wsj0-2mix", num_utterances=7
    )


@pytest.fixture(scope="module")
def experiment(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "mamba_tasnet"
    brain = _train(corpus, out, "mamba_tasnet_S.yaml", {"num_layers": 2})
    return out, brain


def test_export_loads_with_sepformer_separation(experiment, tmp_path):
    exp, brain = experiment
    hub = tmp_path / "hub"
    assert main(["--exp-dir", str(exp), "--out", str(hub)]) == 0
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "example_mixture.wav",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    card = (hub / "README.md").read_text("utf-8")
    assert "| SI-SNRi (dB) |" in card and "| SDRi (dB) |" in card
    assert "Averages over 1 test mixtures." in card

    model = SepformerSeparation.from_hparams(
        source=str(hub), savedir=str(tmp_path / "pretrained")
    )
    example = hub / "example_mixture.wav"
    est = model.separate_file(str(example))
    mix = read_audio(example, 8000)
    assert est.shape == (1, mix.shape[0], 2)

    # Equals the trained modules run directly (separate_file peak-normalises)
    brain.modules.eval()
    with torch.no_grad():
        mix_w = brain.modules.encoder(mix[None])
        masks = brain.modules.masknet(mix_w)
        ref = torch.stack(
            [brain.modules.decoder(mix_w * masks[k]) for k in range(2)], -1
        )
    ref = F.pad(ref, (0, 0, 0, mix.shape[0] - ref.shape[1]))
    ref = ref / ref.abs().max(dim=1, keepdim=True)[0]
    torch.testing.assert_close(est, ref, rtol=1e-4, atol=1e-5)

    batch = torch.randn(3, 1000)
    out = model.separate_batch(batch)
    assert out.shape == (3, 1000, 2)
    torch.testing.assert_close(model(batch), out)


def test_export_dpmamba_yaml_with_nested_blocks(corpus, tmp_path):
    exp = tmp_path / "dpmamba"
    _train(
        corpus, exp, "dpmamba_XS.yaml", {"num_dp_layers": 1, "chunk_size": 40}
    )
    hub = export_experiment(exp, tmp_path / "hub", verify=True)
    text = (hub / "hyperparams.yaml").read_text("utf-8")
    assert text.count("!new:speechbrain_mamba.lobes.dpmamba.DPMambaBlock") == 2
    model = SepformerSeparation.from_hparams(
        source=str(hub), savedir=str(tmp_path / "pretrained")
    )
    assert model.separate_batch(torch.randn(1, 900)).shape == (1, 900, 2)


def test_export_errors(experiment, tmp_path):
    exp, _ = experiment
    with pytest.raises(FileNotFoundError, match="output_folder of a training"):
        export_experiment(tmp_path / "nothing", tmp_path / "hub")
    hub = export_experiment(exp, tmp_path / "hub", verify=False)
    with pytest.raises(FileExistsError, match="--force"):
        export_experiment(exp, hub, verify=False)
    export_experiment(exp, hub, verify=False, force=True)
    with pytest.raises(FileNotFoundError, match="example mixture"):
        export_experiment(
            exp, tmp_path / "h2", example=tmp_path / "x.wav", verify=False
        )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub")]


def test_upload_uses_huggingface_hub(experiment, tmp_path, monkeypatch):
    exp, _ = experiment
    hub = export_experiment(exp, tmp_path / "hub", verify=False)
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeApi)
    )
    url = upload_to_hub(hub, "me/tiny-mamba-tasnet", private=True)
    assert url == "https://huggingface.co/me/tiny-mamba-tasnet"
    assert calls == [
        ("create", "me/tiny-mamba-tasnet", True, True),
        ("upload", str(hub), "me/tiny-mamba-tasnet"),
    ]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        upload_to_hub(hub, "me/x")


@pytest.mark.gpu
def test_export_separates_on_gpu(experiment, tmp_path):
    exp, _ = experiment
    hub = export_experiment(exp, tmp_path / "hub", verify=False)
    model = SepformerSeparation.from_hparams(
        source=str(hub),
        savedir=str(tmp_path / "p"),
        run_opts={"device": "cuda"},
    )
    est = model.separate_file(str(hub / "example_mixture.wav"))
    assert est.is_cuda and torch.isfinite(est).all()


def test_export_refuses_non_empty_folder_unless_forced(experiment, tmp_path):
    """A hub folder holding another model (hand-edited YAML, ASR files) is
    left byte for byte as it was; --force replaces its whole content; an
    empty folder needs no --force."""
    from speechbrain_mamba.utils.atomic import NonEmptyFolderError

    exp, _ = experiment
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hyperparams.yaml").write_bytes(b"# hand edited\nlm_weight: 0.5\n")
    (hub / "asr.ckpt").write_bytes(b"an ASR model")
    before = {p.name: p.read_bytes() for p in hub.iterdir()}
    with pytest.raises(NonEmptyFolderError) as err:
        export_experiment(exp, hub, verify=False)
    assert str(err.value).startswith(
        f"{hub} is not empty (it holds asr.ckpt, hyperparams.yaml): "
    )
    with pytest.raises(NonEmptyFolderError, match="--force"):
        main(["--exp-dir", str(exp), "--out", str(hub), "--no-verify"])
    assert {p.name: p.read_bytes() for p in hub.iterdir()} == before

    args = ["--exp-dir", str(exp), "--out", str(hub), "--no-verify"]
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "example_mixture.wav",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    assert b"hand edited" not in (hub / "hyperparams.yaml").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_experiment(exp, empty, verify=False)
    assert (empty / "masknet.ckpt").is_file()
