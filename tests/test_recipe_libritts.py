"""End-to-end LibriTTS recipe on a mini LibriTTS-format corpus (espeak-ng)
with a small random EnCodec: data preparation, token extraction, AR + NAR
training, resume, test synthesis, export and inference."""

import json
import re
from pathlib import Path

import pytest
import soundfile as sf

from speechbrain_mamba.data.mini_corpus import build_libritts
from speechbrain_mamba.tts.audio import load_audio
from speechbrain_mamba.tts.codec import build_random_codec
from speechbrain_mamba.tts.export import export_tts
from speechbrain_mamba.tts.recipe import run_recipe

RECIPE = Path(__file__).parents[1] / "recipes" / "LibriTTS" / "TTS"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    espeak = pytest.importorskip("speechbrain_mamba.data.espeak")
    if not espeak.espeak_available():
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("libritts")
    data = build_libritts(root / "LibriTTS", seed=0, num_utterances=12)
    wavs = sorted((data / "train-clean-100").glob("*/*/*.wav"))[:4]
    codec = build_random_codec(
        root / "codec",
        num_filters=2,
        hidden_size=8,
        calibration=[load_audio(w, 24000) for w in wavs],
    )
    return data, codec, root


def argv(hparams, corpus, out, epochs, **extra):
    data, codec, root = corpus
    options = {
        "data_folder": data,
        "train_splits": "[train-clean-100]",
        "output_folder": out,
        "tokens_folder": root / "tokens",
        "codec_source": codec,
        "d_model": 32,
        "num_layers": 2,
        "nhead": 2,
        "d_ffn": 64,
        "d_state": 8,
        "number_of_epochs": epochs,
        "dynamic_batching": False,
        "batch_size": 4,
        "num_workers": 0,
        "lr": 0.002,
        "n_warmup_steps": 10,
        "frames_per_phoneme": 3.0,
        "test_max_utterances": 1,
        "device": "cpu",
        "precision": "fp32",
    }
    options.update(extra)
    args = [str(RECIPE / "hparams" / hparams)]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def epochs_logged(out):
    log = (Path(out) / "train_log.txt").read_text()
    return [int(m) for m in re.findall(r"^epoch: (\d+)", log, re.M)]


def test_vallm_recipe_end_to_end_resume_export(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")  # tiny model: skip the JIT
    out = tmp_path / "vallm"
    result = run_recipe(
        argv("vallm.yaml", corpus, out, 1, text_encoder_layers=1)
    )
    tokens = corpus[2] / "tokens"
    assert len(list(tokens.glob("*.npy"))) == 12
    assert json.loads((tokens / "codec.json").read_text())["num_codebooks"] == 8
    stats = result["test_stats"]
    for key in ("ar_acc", "ar_nll", "nar_acc", "nar_nll"):
        assert stats[key] == stats[key]  # not NaN: both stages ran
    assert epochs_logged(out) == [1]
    wavs = list((out / "synthesis").glob("*.wav"))
    assert len(wavs) == 1 and sf.info(str(wavs[0])).samplerate == 24000
    assert result["synthesis"]["utterances"] == 1

    # rerun with more epochs: resumes after epoch 1, tokens are not redone
    stamp = sorted(tokens.glob("*.npy"))[0].stat().st_mtime_ns
    run_recipe(
        argv(
            "vallm.yaml",
            corpus,
            out,
            2,
            text_encoder_layers=1,
            test_synthesis=False,
        )
    )
    assert epochs_logged(out) == [1, 2]
    assert sorted(tokens.glob("*.npy"))[0].stat().st_mtime_ns == stamp

    hub = export_tts(out, tmp_path / "hub")
    from speechbrain_mamba.tts.inference import ZeroShotTTS

    tts = ZeroShotTTS.from_hparams(
        source=str(hub), savedir=str(tmp_path / "collected")
    )
    manifest = json.loads((out / "save" / "train.json").read_text())
    prompt = manifest[sorted(manifest)[0]]
    written = tts.tts_to_file(
        tmp_path / "said.wav",
        "Where is the house?",
        prompt["wav"],
        prompt["text"],
        seed=0,
    )
    assert sf.info(str(written)).frames > 0

    # the GPU comparison script runs on the same prepared data
    import tts_train_compare  # experiments/ (pytest pythonpath)

    tts_train_compare.main(
        [
            "--stage",
            "train",
            "--prepared",
            str(out / "save"),
            "--tokens",
            str(tokens),
            "--out",
            str(tmp_path / "compare"),
            "--size",
            "tiny",
            "--budget_s",
            "1",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--batch_frames",
            "1000",
            "--eval_points",
            "1",
        ]
    )
    summary = json.loads((tmp_path / "compare" / "summary.json").read_text())
    assert [r["kind"] for r in summary["runs"]] == ["vallm", "valle"]
    for run in summary["runs"]:
        assert len(run["curve"]) == 1 and run["steps"] >= 1
        assert 0.0 <= run["final"]["ar_acc"] <= 1.0
    assert summary["baselines"]["chance_acc"] == 1 / 1024


def test_valle_recipe_trains_both_stages(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")
    out = tmp_path / "valle"
    result = run_recipe(argv("valle.yaml", corpus, out, 1))
    assert set(result["test_stats"]) >= {"ar_acc", "nar_acc", "loss"}
    assert len(list((out / "synthesis").glob("*.wav"))) == 1


def test_recipe_refuses_a_missing_codec(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run_recipe(
            argv(
                "valle.yaml",
                corpus,
                tmp_path / "x",
                1,
                codec_source=tmp_path / "no_codec",
            )
        )
