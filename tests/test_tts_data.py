"""LibriTTS preparation (layout, phonemisation, symbol table, clear errors),
prompt choice, NAR training targets, token metrics and synthesis metrics."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_mamba.tts.brain import nar_targets, sample_prompt_frames
from speechbrain_mamba.tts.evaluation import SynthesisEvaluator
from speechbrain_mamba.tts.libritts_prepare import prepare_libritts
from speechbrain_mamba.tts.metrics import TokenStats
from speechbrain_mamba.tts.recipe import choose_prompts
from speechbrain_mamba.tts.text import TextFrontEnd


def make_libritts(root, layout):
    """layout: {split: [(spk, text, seconds), ...]}"""
    for split, utts in layout.items():
        for index, (spk, text, seconds) in enumerate(utts):
            folder = root / split / spk / "100"
            folder.mkdir(parents=True, exist_ok=True)
            utt = f"{spk}_100_000000_{index:06d}"
            sf.write(
                str(folder / f"{utt}.wav"),
                0.01 * np.ones(int(24000 * seconds)),
                24000,
            )
            (folder / f"{utt}.normalized.txt").write_text(text)
    return root


LAYOUT = {
    "train-clean-100": [
        ("11", "Hello there.", 1.0),
        ("12", "Big cat", 0.5),
        ("12", "A very long one", 3.0),
    ],
    "dev-clean": [("21", "Good day", 0.5)],
    "test-clean": [("31", "Zebra", 0.5), ("31", "Hello", 4.0)],
}


def test_prepare_writes_manifests_and_symbol_table(tmp_path):
    data = make_libritts(tmp_path / "LibriTTS", LAYOUT)
    out = prepare_libritts(
        data, tmp_path / "save", text_backend="characters", max_duration=2.0
    )
    train = json.loads(out["train"].read_text())
    assert sorted(train) == ["11_100_000000_000000", "12_100_000000_000001"]
    entry = train["11_100_000000_000000"]
    assert entry["spk_id"] == "11" and entry["duration"] == 1.0
    assert entry["text"] == "Hello there."
    assert entry["phonemes"] == "h e l l o _ t h e r e ."
    # the test set is not filtered by duration
    assert len(json.loads(out["test"].read_text())) == 2
    front = TextFrontEnd.from_file(out["frontend"])
    assert front.backend == "characters" and "h" in front.symbols
    # 'z' only occurs in the test set: not in the training symbol table
    assert "z" not in front.symbols
    # same options: nothing is redone
    stamp = out["train"].stat().st_mtime_ns
    again = prepare_libritts(
        data, tmp_path / "save", text_backend="characters", max_duration=2.0
    )
    assert again["train"].stat().st_mtime_ns == stamp
    assert prepare_libritts(data, tmp_path / "save", skip_prep=True) == out


def test_prepare_phonemes(tmp_path):
    pytest.importorskip("phonemizer")
    data = make_libritts(tmp_path / "LibriTTS", LAYOUT)
    out = prepare_libritts(data, tmp_path / "save", text_backend="auto")
    train = json.loads(out["train"].read_text())
    symbols = train["11_100_000000_000000"]["phonemes"].split()
    assert "_" in symbols and "." in symbols and "ð" in symbols


@pytest.mark.parametrize(
    "damage, error, match",
    [
        ("no_root", FileNotFoundError, "data_folder .* not found"),
        ("no_split", FileNotFoundError, "split 'dev-clean' not found"),
        ("no_text", FileNotFoundError, "transcript .* missing"),
        ("bad_wav", ValueError, "cannot read audio file"),
        ("empty_wav", ValueError, "is empty"),
        ("skip_prep", FileNotFoundError, "lacks the prepared manifests"),
    ],
)
def test_prepare_errors_name_the_problem(tmp_path, damage, error, match):
    data = make_libritts(tmp_path / "LibriTTS", LAYOUT)
    kwargs = {"text_backend": "characters"}
    wav = next((data / "train-clean-100").glob("*/*/*.wav"))
    if damage == "no_root":
        data = tmp_path / "nowhere"
    elif damage == "no_split":
        for f in sorted((data / "dev-clean").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (data / "dev-clean").rmdir()
    elif damage == "no_text":
        wav.with_name(wav.stem + ".normalized.txt").unlink()
    elif damage == "bad_wav":
        wav.write_bytes(b"not audio at all")
    elif damage == "empty_wav":
        sf.write(str(wav), np.zeros(0), 24000)
    elif damage == "skip_prep":
        kwargs["skip_prep"] = True
    with pytest.raises(error, match=match):
        prepare_libritts(data, tmp_path / "save", **kwargs)


def wav_cut_to_half(wav):
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, match",
    [
        ("rate_16k", "has sample rate 16000 Hz; expected 24000 Hz"),
        ("stereo", "has 2 channels; the recipe expects mono"),
        ("truncated", "is truncated"),
        ("nan", "holds NaN or infinite samples"),
    ],
)
def test_prepare_refuses_audio_it_would_resample_downmix_or_cut(
    tmp_path, damage, match
):
    """No silent resampling, downmixing or training on a cut file: the
    preparation stops and names the file."""
    data = make_libritts(tmp_path / "LibriTTS", LAYOUT)
    wav = sorted((data / "dev-clean").glob("*/*/*.wav"))[0]
    audio = 0.01 * np.ones(12000)
    if damage == "rate_16k":
        sf.write(str(wav), audio, 16000)
    elif damage == "stereo":
        sf.write(str(wav), np.stack([audio, audio], axis=1), 24000)
    elif damage == "truncated":
        wav_cut_to_half(wav)
        assert sf.info(str(wav)).frames > 0  # libsndfile reads the rest
    elif damage == "nan":
        audio[5000] = np.nan
        sf.write(str(wav), audio, 24000, subtype="FLOAT")
    with pytest.raises(ValueError, match=f"{wav.name} {match}"):
        prepare_libritts(data, tmp_path / "save", text_backend="characters")
    assert not (tmp_path / "save" / "valid.json").exists()


def test_prepared_manifests_notice_a_file_changed_since(tmp_path):
    data = make_libritts(tmp_path / "LibriTTS", LAYOUT)
    out = prepare_libritts(data, tmp_path / "save", text_backend="characters")
    wav = sorted((data / "test-clean").glob("*/*/*.wav"))[-1]
    wav_cut_to_half(wav)
    with pytest.raises(ValueError, match=f"{wav.name} is truncated"):
        prepare_libritts(data, tmp_path / "save", text_backend="characters")
    sf.write(str(wav), 0.01 * np.ones(24000 * 2), 24000)
    prepare_libritts(data, tmp_path / "save", text_backend="characters")
    test = json.loads(out["test"].read_text())
    assert test[wav.name[: -len(".wav")]]["duration"] == 2.0


def test_prompts_come_from_other_utterances_of_the_speaker():
    entries = {
        "a1": {"spk_id": "a", "duration": 6.0},
        "a2": {"spk_id": "a", "duration": 2.9},
        "a3": {"spk_id": "a", "duration": 3.2},
        "b1": {"spk_id": "b", "duration": 3.0},
    }
    prompts = choose_prompts(entries, prompt_seconds=3.0)
    assert prompts == {
        "a1": ("a2", True),
        "a2": ("a3", True),
        "a3": ("a2", True),
        "b1": ("b1", False),
    }


def test_nar_prompt_sampling_and_targets():
    g = torch.Generator().manual_seed(0)
    frames = torch.tensor([400, 40, 2, 1])
    for _ in range(20):
        p = sample_prompt_frames(frames, 0.25, 0.5, max_frames=150, generator=g)
        assert 100 <= p[0] <= 150 and 10 <= p[1] <= 20
        assert p[2] == 1 and p[3] == 0  # a target frame is always left
    codes = torch.arange(24).view(1, 3, 8)
    targets = nar_targets(
        codes, torch.tensor([3]), torch.tensor([6]), torch.tensor([2])
    )
    assert targets.tolist() == [[-100, -100, -100, 19, 20, 21, -100, -100]]


def test_token_stats_accumulate_over_batches():
    stats = TokenStats()
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]])
    stats.append(logits, torch.tensor([[0, 0, -100]]))
    stats.append(logits[:, :1], torch.tensor([[1]]))
    summary = stats.summarize()
    assert summary["tokens"] == 3 and summary["acc"] == pytest.approx(1 / 3)
    nll = torch.nn.functional.cross_entropy(
        torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
        torch.tensor([0, 0, 1]),
    )
    assert summary["nll"] == pytest.approx(float(nll), rel=1e-5)


def test_synthesis_evaluator(tmp_path):
    heard = {"u1": "HELLO WORLD", "u2": "GOOD DAY TO YOU"}
    order = iter(["u1", "u2"])
    evaluator = SynthesisEvaluator(
        transcribe=lambda wav, rate: heard[next(order)],
        embed=lambda wav, rate: wav[:2],
    )
    wav = torch.tensor([1.0, 1.0, 0.0])
    evaluator.add(
        "u1",
        wav,
        24000,
        "Hello, world!",
        prompt=wav,
        reference=torch.tensor([1.0, -1.0]),
    )
    evaluator.add("u2", wav, 24000, "good night", prompt=-wav)
    summary = evaluator.summarize()
    # u1: 0 errors / 2 words; u2: 1 sub + 2 ins / 2 words
    assert summary["wer"] == pytest.approx(75.0)
    assert summary["sim_prompt"] == pytest.approx(0.0)
    assert summary["sim_reference"] == pytest.approx(0.0, abs=1e-6)
    rows = list(csv.DictReader(open(evaluator.write(tmp_path / "m.csv"))))
    assert [r["word_errors"] for r in rows] == ["0", "3"]
    assert not SynthesisEvaluator().enabled
