"""Bad input to the layers and models is refused with a ValueError that says
what is wrong, before any torch kernel fails on it: NaN / infinite relative
lengths, an input of the wrong feature size or dtype, zero time frames. The
inputs a layer does support (its own dtype, float32 under autocast, an empty
time axis for the plain layers) keep working and give the right values."""

import pytest
import torch

from speechbrain_mamba.lobes.asr import MambaTransformerASR
from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder
from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.nnet import BiMamba, Mamba, MambaStack

D_MODEL = 8


def sequence_models():
    """Each model with relative lengths, and an input [B, ..] for it."""
    torch.manual_seed(0)
    return {
        "Mamba": (Mamba(D_MODEL), torch.randn(2, 6, D_MODEL)),
        "BiMamba": (BiMamba(D_MODEL), torch.randn(2, 6, D_MODEL)),
        "MambaStack": (MambaStack(D_MODEL, 2), torch.randn(2, 6, D_MODEL)),
        "MambaTasNetMaskNet": (
            MambaTasNetMaskNet(D_MODEL, num_layers=1),
            torch.rand(2, D_MODEL, 6),
        ),
    }


@pytest.mark.parametrize("name", list(sequence_models()))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_relative_lengths_are_refused(name, bad):
    model, x = sequence_models()[name]
    lengths = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match="finite relative lengths") as err:
        model(x, lengths)
    assert "nan" in str(err.value) or "inf" in str(err.value)


@pytest.mark.parametrize("name", list(sequence_models()))
def test_valid_relative_lengths_still_pad_like_a_shorter_input(name):
    # The stricter check must not refuse what is valid: item 1 with half
    # of the frames equals that item run alone on its 3 frames.
    model, x = sequence_models()[name]
    model.eval()
    time_axis = 2 if name == "MambaTasNetMaskNet" else 1
    with torch.no_grad():
        padded = model(x, torch.tensor([1.0, 0.5]))
        alone = model(x[1:].narrow(time_axis, 0, 3))
    if name == "MambaTasNetMaskNet":
        torch.testing.assert_close(padded[:, 1:, :, :3], alone)
    else:
        torch.testing.assert_close(padded[1:, :3], alone)


def test_conmamba_rejects_a_wrong_feature_size_naming_both_sizes():
    encoder = ConMambaEncoder(1, 16, 32, kernel_size=3)
    with pytest.raises(ValueError) as err:
        encoder(torch.rand(2, 5, 12))
    message = str(err.value)
    assert "feature size 12" in message and "d_model=16" in message


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("layer_class", [Mamba, BiMamba])
def test_layers_reject_an_input_dtype_other_than_their_own(layer_class, dtype):
    layer = layer_class(D_MODEL)
    with pytest.raises(ValueError) as err:
        layer(torch.randn(1, 4, D_MODEL, dtype=dtype))
    message = str(err.value)
    assert str(dtype) in message and "torch.float32" in message


@pytest.mark.parametrize(
    "model, x",
    [
        (ConMambaEncoder(1, 16, 32, kernel_size=3), torch.rand(1, 4, 16)),
        (MambaTasNetMaskNet(16, num_layers=1), torch.rand(1, 16, 4)),
    ],
    ids=["ConMambaEncoder", "MambaTasNetMaskNet"],
)
def test_models_reject_float64_input_into_a_float32_model(model, x):
    with pytest.raises(ValueError, match="torch.float64"):
        model(x.double())


@pytest.mark.parametrize("layer_class", [Mamba, BiMamba])
def test_float64_works_in_a_float64_layer_and_matches_float32(layer_class):
    torch.manual_seed(0)
    layer = layer_class(D_MODEL).eval()
    x = torch.randn(2, 5, D_MODEL)
    with torch.no_grad():
        y32 = layer(x)
        y64 = layer.double()(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer_class", [Mamba, BiMamba])
def test_float32_layer_under_cpu_autocast_takes_float16_input(layer_class):
    torch.manual_seed(0)
    layer = layer_class(D_MODEL).eval()
    x = torch.randn(1, 5, D_MODEL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        from_half = layer(x.half())
        from_float = layer(x)
    assert from_half.dtype == torch.bfloat16
    torch.testing.assert_close(from_half, from_float, rtol=0.05, atol=0.05)


def test_zero_time_frames():
    # The plain layers give the (natural) empty output ...
    for layer in (Mamba(D_MODEL), BiMamba(D_MODEL), MambaStack(D_MODEL, 1)):
        assert layer(torch.randn(2, 0, D_MODEL)).shape == (2, 0, D_MODEL)
    # ... the models, whose convolutions need frames, say so.
    with pytest.raises(ValueError, match="0 time frames"):
        ConMambaEncoder(1, 16, 32, kernel_size=3)(torch.rand(2, 0, 16))
    with pytest.raises(ValueError, match="0 frames"):
        MambaTasNetMaskNet(16, num_layers=1)(torch.rand(2, 16, 0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_conmamba_asr_refuses_non_finite_wav_lens(bad):
    # ConMamba sees a padding mask made from wav_len; a NaN length used to
    # become an all-padding item and an infinite one a full-length item.
    model = MambaTransformerASR(
        input_size=8,
        tgt_vocab=10,
        d_model=16,
        nhead=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ffn=32,
        encoder_module="conmamba",
        attention_type="RelPosMHAXL",
        normalize_before=True,
    ).eval()
    src = torch.randn(2, 10, 8)
    wav_len = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match="finite relative lengths"):
        model.encode(src, wav_len)
    with pytest.raises(ValueError, match="finite relative lengths"):
        model(src, torch.randint(1, 10, (2, 4)), wav_len.clone())
