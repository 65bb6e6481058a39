"""End-to-end LibriSpeech recipes on the mini corpus (CPU, tiny models):
data preparation, tokenizer training, training, checkpoint averaging, test
WER/CER files, resume, the optional LM, and the hub export loaded back with
SpeechBrain's EncoderDecoderASR / EncoderASR."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.data.mini_corpus import build_librispeech

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "LibriSpeech" / "ASR"

TINY = {
    "train_splits": "[train-clean-100]",
    "dev_splits": "[dev-clean]",
    "test_splits": "[test-clean]",
    "number_of_epochs": 1,
    "batch_size": 8,
    "num_workers": 0,
    "dynamic_batching": False,
    "d_model": 16,
    "nhead": 2,
    "num_encoder_layers": 1,
    "d_ffn": 32,
    "kernel_size": 7,
    "n_warmup_steps": 10,
    "avg_checkpoints": 2,
}
TINY_S2S = {
    **TINY,
    "output_neurons": 60,
    "num_decoder_layers": 1,
    "valid_search_interval": 1,
    "valid_beam_size": 2,
    "test_beam_size": 2,
    "max_decode_ratio": 0.5,
}
TINY_CTC = {**TINY, "grad_accumulation_factor": 1}
TINY_MAMBA = {"d_state": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "asr_mini_librispeech"
    return build_librispeech(root, seed=0, num_utterances=60)


def run_recipe(kind, hparams, corpus, out, **overrides):
    """Runs recipes/LibriSpeech/ASR/{S2S,CTC}/train.py in a subprocess."""
    folder = RECIPES / ("S2S" if kind == "s2s" else "CTC")
    values = {
        **(TINY_S2S if kind == "s2s" else TINY_CTC),
        "data_folder": corpus,
        "output_folder": out,
        "test_csv": f"[{out}/test-clean.csv]",
        **overrides,
    }
    if "mamba" in hparams:
        values = {**TINY_MAMBA, **values}
    cmd = [
        sys.executable,
        str(folder / "train.py"),
        str(folder / "hparams" / f"{hparams}.yaml"),
        "--device=cpu",
    ] + [f"--{k}={v}" for k, v in values.items()]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        OMP_NUM_THREADS="1",
        # tiny models: skip the numba kernel's per-process compilation
        SBMAMBA_NUMBA="0",
    )
    proc = subprocess.run(
        cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return Path(out)


def check_outputs(out):
    wer = (out / "wer_test-clean.txt").read_text()
    assert re.search(r"%WER \d+\.\d+ \[ \d+ / \d+", wer)
    assert "Scored 6 sentences" in wer
    assert "%WER" in (out / "cer_test-clean.txt").read_text()
    assert (out / "save" / "tokenizer.ckpt").is_file()
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1" in log and "test WER" in log


def export_and_load(out, hub_dir, interface, corpus):
    """Exports, loads with SpeechBrain's interface, checks that the hub
    encoder reproduces the averaged training model on a test file."""
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.inference import ASR

    from speechbrain_mamba.asr.export import export_asr

    export_asr(out, hub_dir)
    files = {p.name for p in hub_dir.iterdir()}
    assert {"hyperparams.yaml", "asr.ckpt", "normalizer.ckpt"} <= files
    asr = getattr(ASR, interface).from_hparams(
        source=str(hub_dir), savedir=str(hub_dir.parent / "loaded")
    )
    wav_file = sorted((corpus / "test-clean").rglob("*.flac"))[0]
    text = asr.transcribe_file(str(wav_file))
    assert isinstance(text, str)

    # the training-side model with the same averaged weights
    with open(out / "hyperparams.yaml", encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin)
    hp["model"].load_state_dict(torch.load(hub_dir / "asr.ckpt"))
    hp["normalize"]._load(hub_dir / "normalizer.ckpt")
    for module in (hp["model"], hp["normalize"]):
        module.eval()
    wav = read_audio(str(wav_file)).unsqueeze(0)
    ones = torch.ones(1)
    with torch.no_grad():
        feats = hp["normalize"](hp["compute_features"](wav), ones)
        expected = hp["Transformer"].encode(hp["CNN"](feats), ones)
        if interface == "EncoderASR":
            expected = hp["log_softmax"](hp["ctc_lin"](expected))
        got = asr.encode_batch(wav, ones)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    return asr, text


@pytest.mark.slow
@pytest.mark.parametrize(
    "hparams", ["conformer_small", "conmamba_small", "conmambamamba_small"]
)
def test_s2s_recipe(hparams, corpus, tmp_path):
    out = run_recipe("s2s", hparams, corpus, tmp_path / hparams)
    check_outputs(out)
    assert "valid WER" in (out / "train_log.txt").read_text()
    if hparams == "conmambamamba_small":
        asr, text = export_and_load(
            out, tmp_path / "hub", "EncoderDecoderASR", corpus
        )
        assert type(asr.mods.decoder).__name__ == "S2SMambaBeamSearcher"


@pytest.mark.slow
@pytest.mark.parametrize("hparams", ["conformer_large", "conmamba_large"])
def test_ctc_recipe(hparams, corpus, tmp_path):
    out = run_recipe(
        "ctc",
        hparams,
        corpus,
        tmp_path / hparams,
        test_beam_search="{blank_index: 0, beam_size: 4}",
    )
    check_outputs(out)
    if hparams == "conmamba_large":
        export_and_load(out, tmp_path / "hub", "EncoderASR", corpus)


@pytest.mark.slow
def test_s2s_resume(corpus, tmp_path):
    """A second run with more epochs resumes at epoch 2 (the epoch counter,
    model, optimiser and scheduler come back from the checkpoint)."""
    out = tmp_path / "conmamba"
    run_recipe("s2s", "conmamba_small", corpus, out)
    run_recipe("s2s", "conmamba_small", corpus, out, number_of_epochs=2)
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and log.count("epoch: 2,") == 1
    assert "steps: 12" in log  # 6 steps per epoch, counted across runs


@pytest.mark.slow
def test_s2s_with_pretrained_language_model(corpus, tmp_path):
    """With a (local, tiny) pretrained LM + tokenizer the test beam search
    scores with the LM, and the export carries it."""
    import sentencepiece as spm
    from speechbrain.lobes.models.transformer.TransformerLM import (
        TransformerLM,
    )

    lm_dir = tmp_path / "pretrained"
    lm_dir.mkdir()
    texts = [
        line.split(" ", 1)[1]
        for trans in (corpus / "train-clean-100").rglob("*.trans.txt")
        for line in trans.read_text().splitlines()
    ]
    (lm_dir / "text.txt").write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(lm_dir / "text.txt"),
        model_prefix=str(lm_dir / "spm"),
        vocab_size=60,
        model_type="unigram",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,
    )
    (lm_dir / "spm.model").rename(lm_dir / "tokenizer.ckpt")
    lm = TransformerLM(
        vocab=60, d_model=16, nhead=2, num_encoder_layers=1,
        num_decoder_layers=0, d_ffn=32, dropout=0.0,
        activation=torch.nn.GELU, normalize_before=False,
    )  # fmt: skip
    torch.save(lm.state_dict(), lm_dir / "lm.ckpt")
    out = run_recipe(
        "s2s", "conmambamamba_small", corpus, tmp_path / "with_lm",
        pretrained_lm_tokenizer_path=lm_dir, use_lm=True, lm_d_model=16,
        lm_nhead=2, lm_num_layers=1, lm_d_ffn=32,
    )  # fmt: skip
    check_outputs(out)
    tokenizer = (out / "save" / "tokenizer.ckpt").resolve()
    assert tokenizer == (lm_dir / "tokenizer.ckpt").resolve()
    asr, _ = export_and_load(
        out, tmp_path / "hub_lm", "EncoderDecoderASR", corpus
    )
    assert "transformerlm" in asr.mods.decoder.scorer.full_scorers
    assert (tmp_path / "hub_lm" / "lm.ckpt").is_file()


@pytest.mark.parametrize(
    "kind, name, expected",
    [
        ("S2S", "conformer_small", {"d_model": 144, "nhead": 4}),
        ("S2S", "conmamba_small", {"d_model": 144, "num_decoder_layers": 4}),
        ("S2S", "conmambamamba_small", {"num_encoder_layers": 12}),
        ("S2S", "conformer_large", {"d_model": 512, "nhead": 8}),
        ("S2S", "conmamba_large", {"d_ffn": 2048, "num_decoder_layers": 6}),
        ("S2S", "conmambamamba_large", {"d_model": 512, "d_state": 16}),
        ("CTC", "conformer_large", {"d_model": 256, "num_encoder_layers": 18}),
        ("CTC", "conmamba_large", {"d_model": 256, "expand": 2, "d_conv": 4}),
    ],
)
def test_hparams_paper_configuration_and_tiny_instantiation(
    kind, name, expected, tmp_path
):
    path = RECIPES / kind / "hparams" / f"{name}.yaml"
    text = path.read_text()
    for key, value in expected.items():
        assert re.search(rf"^{key}: {value}\b", text, re.M), key
    assert re.search(r"^n_mels: 80\b", text, re.M)
    if kind == "S2S":
        assert re.search(r"^ctc_weight: 0.3\b", text, re.M)
        assert re.search(r"^output_neurons: 5000\b", text, re.M)
    else:
        assert re.search(r"^token_type: char\b", text, re.M)
    overrides = {
        "data_folder": str(tmp_path),
        "output_folder": str(tmp_path),
        "d_model": 16,
        "nhead": 2,
        "num_encoder_layers": 1,
        "d_ffn": 16,
        "output_neurons": 20,
    }
    if kind == "S2S":
        overrides["num_decoder_layers"] = 1
    with open(path, encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin, overrides)
    model = hp["Transformer"]
    if "conmamba" in name:
        assert model.encoder_module == "conmamba"
        assert model.decoder_module == (
            "mamba" if "mambamamba" in name else "transformer"
        )
        search = type(hp.get("test_search")).__name__
        if kind == "S2S":
            assert search == (
                "S2SMambaBeamSearcher"
                if "mambamamba" in name
                else "S2STransformerBeamSearcher"
            )
    else:
        assert type(model).__name__ == "TransformerASR"


SB_S2S_KEYS = [
    "Adam", "pretrainer", "lm_model", "tokenizer", "valid_search",
    "test_search", "fea_augment", "speed_perturb", "noam_annealing",
    "checkpointer", "acc_computer", "error_rate_computer", "output_wer_folder",
    "dynamic_batch_sampler_valid", "valid_search_interval", "seq_cost",
]  # fmt: skip
SB_CTC_KEYS = [
    "model_opt_class", "wav_augment", "speed_perturb", "test_beam_search",
    "wer_file", "dynamic_batch_sampler_val", "token_type",
    "character_coverage", "cer_computer", "wer_computer",
]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "sb_conmamba_small",
        "sb_conmambamamba_small",
        "sb_conmamba_large",
        "sb_conmambamamba_large",
        "sb_ctc_conmamba_large",
    ],
)
def test_top_level_hparams_fit_speechbrains_own_recipes(name, tmp_path):
    """hparams/asr/sb_*.yaml carry every key SpeechBrain's LibriSpeech
    transformer / CTC train.py reads, with the Mamba model inside."""
    overrides = {
        "data_folder": str(tmp_path),
        "output_folder": str(tmp_path),
        "d_model": 16,
        "nhead": 2,
        "num_encoder_layers": 1,
        "d_ffn": 16,
    }
    ctc = "ctc" in name
    if not ctc:
        overrides.update(
            num_decoder_layers=1,
            output_neurons=20,
            lm_d_model=16,
            lm_nhead=2,
            lm_num_layers=1,
            lm_d_ffn=16,
        )
    with open(REPO / "hparams" / "asr" / f"{name}.yaml", encoding="utf-8") as f:
        hp = load_hyperpyyaml(f, overrides)
    for key in SB_CTC_KEYS if ctc else SB_S2S_KEYS:
        assert key in hp, key
    assert hp["Transformer"].encoder_module == "conmamba"
    if not ctc:
        scorers = hp["test_search"].scorer.full_scorers
        assert set(scorers) == {"ctc", "transformerlm"}
        assert set(hp["pretrainer"].loadables) == {"lm", "tokenizer"}
