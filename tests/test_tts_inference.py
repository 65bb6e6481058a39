"""Export of a (tiny, untrained) recipe experiment to a hub folder, loading
it with ZeroShotTTS.from_hparams(source=folder) and synthesising."""

from pathlib import Path

import pytest
import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_mamba.tts.audio import write_audio
from speechbrain_mamba.tts.codec import EncodecCodec, build_random_codec
from speechbrain_mamba.tts.export import export_tts
from speechbrain_mamba.tts.inference import ZeroShotTTS
from speechbrain_mamba.tts.text import TextFrontEnd

RECIPE = Path(__file__).parents[1] / "recipes" / "LibriTTS" / "TTS"


@pytest.fixture(autouse=True)
def _no_numba_compile(monkeypatch):
    # tiny models: the numba scan kernel would spend more time compiling
    # than it saves (the scan itself is tested in test_mamba_layers.py)
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")


def tiny_overrides(tmp, codec_folder, hparams_name):
    return {
        "data_folder": str(tmp / "data"),
        "output_folder": str(tmp / "exp"),
        "codec_source": str(codec_folder),
        "d_model": 32,
        "num_layers": 1,
        "nhead": 2,
        "d_ffn": 64,
        "d_state": 4,
        "num_symbols": 40,
        "frames_per_phoneme": 3.0,
        "text_encoder_layers": 1 if hparams_name == "vallm.yaml" else 0,
    }


@pytest.fixture(scope="module")
def codec_folder(tmp_path_factory):
    return build_random_codec(
        tmp_path_factory.mktemp("codec") / "encodec",
        num_filters=2,
        hidden_size=8,
    )


def fake_experiment(tmp, codec_folder, hparams_name):
    """What the recipe leaves behind: saved hparams, the symbol table and a
    checkpoint with a validation loss."""
    overrides = tiny_overrides(tmp, codec_folder, hparams_name)
    sb.create_experiment_directory(
        experiment_directory=overrides["output_folder"],
        hyperparams_to_save=str(RECIPE / "hparams" / hparams_name),
        overrides=overrides,
    )
    exp = Path(overrides["output_folder"])
    with open(exp / "hyperparams.yaml") as fin:
        hp = load_hyperpyyaml(fin)
    Path(hp["save_folder"]).mkdir(parents=True, exist_ok=True)
    TextFrontEnd("characters").fit(["hello world", "a prompt text"]).save(
        hp["frontend_file"]
    )
    hp["checkpointer"].save_checkpoint(meta={"loss": 1.0})
    return exp, hp


@pytest.mark.parametrize("hparams_name", ["vallm.yaml", "valle.yaml"])
def test_export_then_from_hparams_synthesises(
    tmp_path, codec_folder, hparams_name
):
    exp, hp = fake_experiment(tmp_path, codec_folder, hparams_name)
    hub = export_tts(exp, tmp_path / "hub")
    assert sorted(p.name for p in hub.iterdir()) == [
        "ar.ckpt",
        "codec.ckpt",
        "hyperparams.yaml",
        "nar.ckpt",
        "text_frontend.ckpt",
    ]
    tts = ZeroShotTTS.from_hparams(  # on the CPU, also on a GPU machine
        source=str(hub),
        savedir=str(tmp_path / "collected"),
        run_opts={"device": "cpu"},
    )
    # the trained weights, symbol table and codec are the experiment's
    for name in ("ar", "nar"):
        for key, value in hp[name].state_dict().items():
            assert torch.equal(tts.mods[name].state_dict()[key], value), key
    assert (
        tts.hparams.text_frontend.symbols.symbols
        == TextFrontEnd.from_file(hp["frontend_file"]).symbols.symbols
    )
    probe = 0.1 * torch.randn(1, 4800)
    original = EncodecCodec.from_pretrained(codec_folder)
    assert torch.equal(
        tts.mods.codec.encode(probe)[0], original.encode(probe)[0]
    )

    prompt = tmp_path / "prompt.wav"
    write_audio(prompt, 0.1 * torch.randn(16000), 16000)  # resampled
    wav, rate = tts.tts("hello world", prompt, "a prompt", seed=3)
    again, _ = tts.tts("hello world", prompt, "a prompt", seed=3)
    assert rate == 24000 and wav.dim() == 1
    assert 0 < wav.shape[0] <= 3 * 12 * 320 and wav.shape[0] % 320 == 0
    assert torch.equal(wav, again)
    out = tts.tts_to_file(
        tmp_path / "out.wav",
        "hello",
        0.1 * torch.randn(1, 8000),
        "a",
        prompt_sample_rate=8000,
        temperature=0.0,
    )
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.frames > 0
    with pytest.raises(ValueError, match="prompt_sample_rate is needed"):
        tts.tts("hello", torch.randn(100), "a")
    with pytest.raises(ValueError, match="mono"):
        tts.tts("hello", torch.randn(2, 100), "a", prompt_sample_rate=24000)
    with pytest.raises(FileNotFoundError, match="audio file"):
        tts.tts("hello", tmp_path / "missing.wav", "a")


def test_export_by_codec_reference_and_errors(tmp_path, codec_folder):
    exp, _ = fake_experiment(tmp_path, codec_folder, "vallm.yaml")
    hub = export_tts(exp, tmp_path / "hub", codec="reference")
    assert not (hub / "codec.ckpt").exists()
    assert str(codec_folder) in (hub / "hyperparams.yaml").read_text()
    tts = ZeroShotTTS.from_hparams(
        source=str(hub), savedir=str(tmp_path / "collected")
    )
    assert tts.sample_rate == 24000
    with pytest.raises(FileNotFoundError, match="output_folder"):
        export_tts(tmp_path / "nothing", tmp_path / "hub2")
    with pytest.raises(ValueError, match="codec must be one of"):
        export_tts(exp, tmp_path / "hub3", codec="copy")


def test_export_refuses_non_empty_folder_unless_forced(tmp_path, codec_folder):
    """A hub folder holding another model (hand-edited YAML, ASR files) is
    left byte for byte as it was; --force replaces its whole content."""
    from speechbrain_mamba.tts.export import main
    from speechbrain_mamba.utils.atomic import NonEmptyFolderError

    exp, _ = fake_experiment(tmp_path, codec_folder, "vallm.yaml")
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hyperparams.yaml").write_bytes(b"# hand edited\nlm_weight: 0.5\n")
    (hub / "asr.ckpt").write_bytes(b"an ASR model")
    before = {p.name: p.read_bytes() for p in hub.iterdir()}
    with pytest.raises(NonEmptyFolderError) as err:
        export_tts(exp, hub)
    assert str(err.value).startswith(
        f"{hub} is not empty (it holds asr.ckpt, hyperparams.yaml): "
    )
    with pytest.raises(NonEmptyFolderError, match="--force"):
        main([str(exp), str(hub)])
    assert {p.name: p.read_bytes() for p in hub.iterdir()} == before

    main([str(exp), str(hub), "--force"])
    assert sorted(p.name for p in hub.iterdir()) == [
        "ar.ckpt",
        "codec.ckpt",
        "hyperparams.yaml",
        "nar.ckpt",
        "text_frontend.ckpt",
    ]
    assert b"hand edited" not in (hub / "hyperparams.yaml").read_bytes()
    # by reference: the embedded codec of the previous export goes too
    export_tts(exp, hub, codec="reference", force=True)
    assert not (hub / "codec.ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub")]
