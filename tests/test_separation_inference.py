"""Separating a file: a file that is not a usable mono mixture (a few
samples, stereo, NaN, unreadable) is refused with an error naming it, before
the model runs; a silent file gives finite (zero) estimates; a good file is
separated exactly as SpeechBrain's SepformerSeparation separates it."""

import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.inference.separation import SepformerSeparation
from speechbrain.lobes.models.dual_path import Decoder, Encoder

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.separation.inference import MambaSeparation

RATE = 8000


def modules():
    torch.manual_seed(0)
    return {
        "encoder": Encoder(kernel_size=16, out_channels=8),
        "masknet": MambaTasNetMaskNet(8, num_layers=1),
        "decoder": Decoder(
            in_channels=8, out_channels=1, kernel_size=16, stride=8, bias=False
        ),
    }


@pytest.fixture(scope="module")
def model():
    return MambaSeparation(
        modules(),
        hparams={"sample_rate": RATE, "num_spks": 2},
        run_opts={"device": "cpu"},
    )


def write(path, data, rate=RATE):
    sf.write(str(path), np.asarray(data, dtype="float32"), rate, "FLOAT")
    return path


@pytest.mark.parametrize(
    "data, expected",
    [
        (np.full(3, 0.1), "has 3 samples; the model needs at least 16"),
        (np.full((800, 2), 0.1), "has 2 channels"),
        (np.r_[np.full(400, 0.1), np.nan, np.full(399, 0.1)], "1 NaN"),
        (np.zeros(0), "is empty"),
    ],
    ids=["5-samples", "stereo", "nan", "empty"],
)
def test_bad_files_are_refused_naming_the_file(model, tmp_path, data, expected):
    path = write(tmp_path / "mixture.wav", data)
    with pytest.raises(ValueError, match=expected) as err:
        model.separate_file(str(path))
    assert str(path) in str(err.value)


def test_unreadable_file_is_named(model, tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(ValueError, match="cannot read audio file") as err:
        model.separate_file(str(path))
    assert str(path) in str(err.value)


def test_separate_batch_checks_its_tensor(model):
    with pytest.raises(ValueError, match="NaN"):
        model.separate_batch(torch.tensor([[0.1] * 99 + [float("nan")]]))
    with pytest.raises(ValueError, match="at least 16"):
        model.separate_batch(torch.zeros(1, 4))


def test_silent_file_gives_finite_zero_estimates(model, tmp_path):
    est = model.separate_file(str(write(tmp_path / "s.wav", np.zeros(800))))
    assert est.shape == (1, 800, 2)
    assert bool(torch.isfinite(est).all())


def test_good_file_matches_speechbrains_interface(model, tmp_path):
    rng = np.random.default_rng(0)
    path = write(tmp_path / "mix.wav", 0.1 * rng.standard_normal(1200))
    reference = SepformerSeparation(
        model.mods, hparams={"sample_rate": RATE, "num_spks": 2}
    )
    expected = reference.separate_file(str(path))
    est = model.separate_file(str(path))
    assert est.shape == (1, 1200, 2)
    torch.testing.assert_close(est, expected)
