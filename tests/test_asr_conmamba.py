"""ConMamba encoder: padding is respected (a padded batch gives every
utterance the output it gets alone), layer layout, causal variant."""

import pytest
import torch
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.lobes.asr import (
    ConMambaEncoder,
    ConMambaEncoderLayer,
    MambaTransformerASR,
    MaskedConvolutionModule,
)
from speechbrain_mamba.nnet import BiMamba, Mamba

MAMBA = {"d_state": 4, "d_conv": 4, "expand": 2}


def padded_batch(lengths, dim, seed=0):
    """Random items of the given lengths, zero-padded, plus the padding
    mask (True on padding)."""
    gen = torch.Generator().manual_seed(seed)
    time = max(lengths)
    items = [torch.randn(n, dim, generator=gen) for n in lengths]
    batch = torch.zeros(len(lengths), time, dim)
    mask = torch.ones(len(lengths), time, dtype=torch.bool)
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
        mask[i, : len(item)] = False
    # Garbage in the padding must not matter either.
    batch = batch + 100.0 * mask[..., None]
    return items, batch, mask


def test_masked_conv_module_matches_single_items_unlike_stock():
    torch.manual_seed(0)
    conv = MaskedConvolutionModule(8, kernel_size=5).eval()
    stock = ConvolutionModule(8, kernel_size=5).eval()
    stock.load_state_dict(conv.state_dict())  # same parameter names
    items, batch, mask = padded_batch([9, 4], 8)
    out = conv(batch, mask.unsqueeze(-1))
    out_stock = stock(batch, mask.unsqueeze(-1))
    alone = conv(items[1][None])[0]
    torch.testing.assert_close(out[1, :4], alone, atol=1e-5, rtol=1e-5)
    assert out[1, 4:].abs().max() == 0
    # SpeechBrain's module lets padded frames leak into the last real ones
    # (its output mask only zeroes the padded frames themselves).
    assert not torch.allclose(out_stock[1, :4], alone, atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_encoder_padded_batch_equals_each_utterance_alone(causal):
    torch.manual_seed(0)
    enc = ConMambaEncoder(
        2, 16, 32, kernel_size=7, causal=causal, mamba_config=MAMBA
    ).eval()
    lengths = [13, 8, 3]
    items, batch, mask = padded_batch(lengths, 16)
    with torch.no_grad():
        out, attn = enc(batch, src_key_padding_mask=mask)
        for i, item in enumerate(items):
            alone, _ = enc(item[None])
            torch.testing.assert_close(
                out[i, : lengths[i]], alone[0], atol=2e-5, rtol=1e-4
            )
            assert out[i, lengths[i] :].abs().sum() == 0
    assert attn == [None, None]


def test_model_encode_padded_batch_equals_each_utterance_alone():
    """Same property through TransformerASR.encode with relative lengths
    (the path used by recipes and EncoderDecoderASR)."""
    torch.manual_seed(0)
    net = MambaTransformerASR(
        tgt_vocab=10, input_size=12, d_model=16, nhead=2,
        num_encoder_layers=2, num_decoder_layers=0, d_ffn=32,
        encoder_module="conmamba", normalize_before=True, causal=False,
        kernel_size=7, mamba_config=MAMBA,
    ).eval()  # fmt: skip
    lengths = [20, 11, 6]
    items, batch, _ = padded_batch(lengths, 12, seed=1)
    wav_lens = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    with torch.no_grad():
        out = net.encode(batch, wav_lens)
        for i, item in enumerate(items):
            alone = net.encode(item[None], torch.ones(1))
            torch.testing.assert_close(
                out[i, : lengths[i]], alone[0], atol=2e-5, rtol=1e-4
            )


def test_layer_uses_bimamba_and_unidirectional_when_causal():
    layer = ConMambaEncoderLayer(16, 32, kernel_size=3, mamba_config=MAMBA)
    assert type(layer.mamba) is BiMamba
    causal = ConMambaEncoderLayer(
        16, 32, kernel_size=3, causal=True, mamba_config=MAMBA
    )
    assert type(causal.mamba) is Mamba
    one_way = ConMambaEncoderLayer(
        16, 32, kernel_size=3, mamba_config={**MAMBA, "bidirectional": False}
    )
    assert type(one_way.mamba) is Mamba
    assert layer.mamba.d_state == 4 and layer.mamba.expand == 2


def test_causal_encoder_does_not_look_ahead():
    torch.manual_seed(0)
    enc = ConMambaEncoder(
        1, 16, 32, kernel_size=5, causal=True, mamba_config=MAMBA
    ).eval()
    x = torch.randn(1, 10, 16)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 16)
    with torch.no_grad():
        out_x, _ = enc(x)
        out_y, _ = enc(y)
    torch.testing.assert_close(out_x[:, :6], out_y[:, :6])
    assert not torch.allclose(out_x[:, 6:], out_y[:, 6:])


def test_layer_layout_macaron_half_steps():
    """x + 1/2 FFN -> x + BiMamba(LN) -> x + Conv -> LN(x + 1/2 FFN)."""
    torch.manual_seed(0)
    layer = ConMambaEncoderLayer(
        8, 16, kernel_size=3, mamba_config=MAMBA
    ).eval()
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        h = x + 0.5 * layer.ffn_module1(x)
        h = h + layer.mamba(layer.norm1(h))
        h = h + layer.convolution_module(h)
        expected = layer.norm2(h + 0.5 * layer.ffn_module2(h))
        out, _ = layer(x)
    torch.testing.assert_close(out, expected)


def test_hidden_states_and_bad_inputs():
    enc = ConMambaEncoder(
        3, 8, 16, kernel_size=3, mamba_config=MAMBA, output_hidden_states=True
    ).eval()
    out, attn, hidden = enc(torch.randn(2, 5, 8))
    assert len(hidden) == 4 and hidden[-1].shape == (2, 5, 8)
    with pytest.raises(ValueError, match="batch, time, d_model"):
        enc(torch.randn(5, 8))
    with pytest.raises(NotImplementedError, match="chunk"):
        enc(torch.randn(1, 5, 8), dynchunktrain_config=object())
    with pytest.raises(ValueError, match="num_layers"):
        ConMambaEncoder(0, 8, 16)
