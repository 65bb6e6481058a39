"""The shipped Mamba-TasNet S: loads with SpeechBrain's own inference class
and still measures what its model card says."""

import re

import pytest
import soundfile as sf
import torch

from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
from speechbrain_mamba.separation.pretrained import (
    MINI_WSJ0MIX_MODEL,
    REFERENCE_HEADING,
    load_separator,
    read_reference_rows,
    score_separator,
    split_mixtures,
)

CARD = (MINI_WSJ0MIX_MODEL / "README.md").read_text(encoding="utf-8")


def card_reference():
    section = CARD[CARD.index(REFERENCE_HEADING) :]
    corpus = re.search(
        r"build_wsj0_2mix\(seed=(\d+), num_utterances=(\d+)\)", section
    )
    return int(corpus.group(1)), int(corpus.group(2)), section


def test_hub_folder_is_complete_and_small():
    names = sorted(p.name for p in MINI_WSJ0MIX_MODEL.iterdir())
    assert names == [
        "README.md",
        "decoder.ckpt",
        "encoder.ckpt",
        "example_mixture.wav",
        "hyperparams.yaml",
        "masknet.ckpt",
    ]
    size = sum(p.stat().st_size for p in MINI_WSJ0MIX_MODEL.iterdir())
    assert size < 20e6  # float16 weights
    masknet = torch.load(MINI_WSJ0MIX_MODEL / "masknet.ckpt", "cpu")
    assert sum(v.numel() for v in masknet.values()) == 7_918_336


def test_card_metrics_are_measured_again(tmp_path):
    """Rebuilds the card's held-out corpus and scores the mixtures the card
    lists one by one with SpeechBrain's SepformerSeparation on CPU."""
    seed, num, section = card_reference()
    expected = read_reference_rows(section)
    assert len(expected) == 3
    root = build_wsj0_2mix(
        tmp_path / "wsj0-2mix", seed=seed, num_utterances=num
    )
    by_name = {p.stem: p for p in split_mixtures(root, "tt")}
    assert len(by_name) == num // 7
    separator = load_separator(savedir=tmp_path / "model")
    rows = score_separator(
        separator,
        [by_name[name] for name in expected],
        compute_pesq=False,
        compute_stoi=False,
    )
    for row in rows:
        si_snri, sdri = expected[row["snt_id"]]
        assert row["si-snr_i"] == pytest.approx(si_snri, abs=0.05)
        assert row["sdr_i"] == pytest.approx(sdri, abs=0.05)
    mean = float(re.search(r"\| mean of 24 mixtures \| ([0-9.]+)", CARD)[1])
    assert mean >= 8.0  # the target for the demo


def _separate_example(device, savedir):
    from speechbrain.inference.separation import SepformerSeparation

    model = SepformerSeparation.from_hparams(
        source=str(MINI_WSJ0MIX_MODEL),
        savedir=str(savedir),
        run_opts={"device": device},
    )
    example = MINI_WSJ0MIX_MODEL / "example_mixture.wav"
    mix, rate = sf.read(str(example), dtype="float32")
    with torch.no_grad():
        est = model.separate_file(str(example))
    return torch.from_numpy(mix), est.float().cpu(), rate


def test_speechbrain_loads_it_on_cpu_and_the_estimates_explain_the_mix(
    tmp_path,
):
    mix, est, rate = _separate_example("cpu", tmp_path)
    assert rate == 8000 and est.shape == (1, len(mix), 2)
    # a mask network splits the mixture: the estimates add up to it
    total = est[0].sum(1)
    scale = (total @ mix) / (total @ total)
    residual = (mix - scale * total).pow(2).sum() / mix.pow(2).sum()
    assert residual < 0.1  # the sum explains over 90 % of its energy
    # and they are two different speakers, not two copies
    a, b = est[0, :, 0], est[0, :, 1]
    assert abs(float(a @ b) / float(a.norm() * b.norm())) < 0.3


@pytest.mark.gpu
def test_speechbrain_loads_it_on_gpu_with_the_cpu_output(tmp_path, true_fp32):
    _, cpu, _ = _separate_example("cpu", tmp_path / "cpu")
    _, gpu, _ = _separate_example("cuda", tmp_path / "gpu")
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=2e-3)
