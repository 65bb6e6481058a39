"""MambaTransformerASR: SpeechBrain's TransformerASR with ConMamba / Mamba
modules; Mamba init survives _init_params, no positional encoding in front
of a Mamba encoder, stock encoders unchanged."""

import math

import pytest
import torch
from speechbrain.lobes.models.transformer.Transformer import (
    TransformerDecoder,
)
from speechbrain.lobes.models.transformer.TransformerASR import (
    EncoderWrapper,
    TransformerASR,
)

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.lobes.asr import (
    ConMambaEncoder,
    MambaDecoder,
    MambaTransformerASR,
)
from speechbrain_mamba.nnet import Mamba

MAMBA = {"d_state": 8, "d_conv": 4, "expand": 2}


def make(encoder="conmamba", decoder="mamba", **kwargs):
    args = dict(
        tgt_vocab=30, input_size=12, d_model=16, nhead=2,
        num_encoder_layers=2, num_decoder_layers=2, d_ffn=32,
        encoder_module=encoder, decoder_module=decoder,
        attention_type="RelPosMHAXL", normalize_before=True, causal=False,
        mamba_config=MAMBA,
    )  # fmt: skip
    args.update(kwargs)
    return MambaTransformerASR(**args)


def test_is_a_speechbrain_transformer_asr_with_mamba_modules():
    net = make()
    assert isinstance(net, TransformerASR)
    assert isinstance(net.encoder, ConMambaEncoder)
    assert isinstance(net.decoder, MambaDecoder)
    net_t = make(decoder="transformer")
    assert isinstance(net_t.decoder, TransformerDecoder)


def test_mamba_parameters_keep_their_initialisation():
    torch.manual_seed(0)
    net = make()
    mixers = [m for m in net.modules() if isinstance(m, Mamba)]
    # 2 encoder BiMambas + 2 x (self, cross) decoder Mambas
    assert len(mixers) == 6
    expected_a = torch.log(torch.arange(1, 9, dtype=torch.float))
    for mixer in mixers:
        for suffix in mixer.directions:
            a_log = getattr(mixer, "A_log" if not suffix else f"A{suffix}_log")
            torch.testing.assert_close(
                a_log, expected_a.expand(mixer.d_inner, -1)
            )
            d = getattr(mixer, f"D{suffix}")
            assert torch.all(d == 1)
            dt_proj = getattr(mixer, f"dt_proj{suffix}")
            dt = torch.nn.functional.softplus(dt_proj.bias)
            assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
            bound = dt_proj.in_features**-0.5
            assert dt_proj.weight.abs().max() <= bound + 1e-6
    # ... while the rest still gets SpeechBrain's xavier initialisation
    # (a stock init would give a uniform weight within +-1/sqrt(fan_in)).
    w = net.custom_src_module.layers[0].w.weight
    xavier_std = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))
    assert abs(w.std().item() - xavier_std) < 0.3 * xavier_std


def test_stock_xavier_would_destroy_a_log():
    """What _init_params alone does (the bug the override fixes)."""
    torch.manual_seed(0)
    net = make()
    TransformerASR._init_params(net)
    a_log = net.encoder.layers[0].mamba.A_log
    assert not torch.allclose(a_log[0], torch.log(torch.arange(1.0, 9.0)))


@pytest.mark.parametrize("pos", ["fixed_abs_sine", None])
@pytest.mark.parametrize("attention", ["regularMHA", "RelPosMHAXL"])
def test_no_positional_encoding_in_front_of_the_mamba_encoder(pos, attention):
    torch.manual_seed(0)
    net = make(
        decoder="transformer", positional_encoding=pos, attention_type=attention
    ).eval()
    src = torch.randn(2, 9, 12)
    with torch.no_grad():
        expected, _ = net.encoder(net.custom_src_module(src))
        torch.testing.assert_close(net.encode(src), expected)
        enc, _ = net(src, torch.randint(3, 30, (2, 4)))
    torch.testing.assert_close(enc, expected)


def test_stock_encoders_behave_exactly_like_speechbrain():
    """encoder_module conformer: same outputs as SpeechBrain's class with
    the same weights (forward, encode and decode)."""
    args = dict(
        tgt_vocab=30, input_size=12, d_model=16, nhead=2,
        num_encoder_layers=1, num_decoder_layers=1, d_ffn=32,
        encoder_module="conformer", attention_type="RelPosMHAXL",
        normalize_before=True, causal=False,
    )  # fmt: skip
    ours = MambaTransformerASR(**args).eval()
    stock = TransformerASR(**args).eval()
    stock.load_state_dict(ours.state_dict())
    src, tgt = torch.randn(2, 9, 12), torch.randint(3, 30, (2, 4))
    wav_lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        for a, b in zip(ours(src, tgt, wav_lens), stock(src, tgt, wav_lens)):
            torch.testing.assert_close(a, b)
        enc = ours.encode(src, wav_lens)
        torch.testing.assert_close(enc, stock.encode(src, wav_lens))
        enc_len = torch.tensor([9, 5])
        torch.testing.assert_close(
            ours.decode(tgt, enc, enc_len)[0],
            stock.decode(tgt, enc, enc_len)[0],
        )


def test_encoder_only_ctc_model_and_wrapper():
    torch.manual_seed(0)
    net = make(num_decoder_layers=0).eval()
    assert not hasattr(net, "decoder")
    src = torch.randn(2, 9, 12)
    with torch.no_grad():
        enc, attn = net(src, tgt=None, wav_len=torch.tensor([1.0, 0.5]))
        wrapped = EncoderWrapper(net)(src, torch.tensor([1.0, 0.5]))
    assert enc.shape == (2, 9, 16) and len(attn) == 2
    torch.testing.assert_close(enc, wrapped)
    assert enc[1, 5:].abs().sum() == 0  # round(0.5 * 9) = 4.5 -> 4 frames


def test_gradients_equal_finite_differences_and_ignore_padding():
    """Backward through the whole model (ConMamba encoder layer, Mamba
    decoder layer, front ends, a padded item), in float64: every parameter
    gets a finite, non-zero gradient that, along a random direction, equals
    central finite differences of the loss; the padded input frames get
    exactly zero gradient."""
    torch.manual_seed(0)
    net = make(
        dropout=0.0, activation=torch.nn.GELU,  # smooth: no ReLU kinks
        num_encoder_layers=1, num_decoder_layers=1,
    ).double()  # fmt: skip
    src = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    tgt, wav_lens = torch.randint(3, 30, (2, 5)), torch.tensor([1.0, 0.7])
    # random read-outs: the outputs are layer-normalised, so the plain sum
    # of their squares would hardly depend on the weights
    w_enc = torch.randn(2, 9, 16, dtype=torch.float64)
    w_dec = torch.randn(2, 5, 16, dtype=torch.float64)

    def loss():
        enc, dec = net(src, tgt, wav_lens)
        return (enc * w_enc).sum() + (dec * w_dec).sum()

    loss().backward()
    params = dict(net.named_parameters())
    assert len(params) == 77
    # round(0.7 * 9) = 6 valid frames: the rest must not reach the loss
    assert src.grad[1, 6:].abs().sum() == 0
    assert src.grad[1, :6].abs().sum() > 0 and src.grad[0].abs().sum() > 0
    # the scans run in fp32 (as mamba_ssm's): a step large enough for
    # their rounding to stay below the tolerance (3x margin measured)
    eps = 1e-3
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
        step = torch.randn_like(p)
        with torch.no_grad():
            p.add_(eps * step)
            plus = loss()
            p.sub_(2 * eps * step)
            minus = loss()
            p.add_(eps * step)
        numeric = (plus - minus) / (2 * eps)
        analytic = (p.grad * step).sum()
        assert abs(analytic - numeric) <= 1e-2 * abs(numeric) + 1e-4, name


def test_state_dict_round_trips():
    """A fresh model loading the state dict (strict) gives the same
    outputs, Mamba buffers and parameters included."""
    torch.manual_seed(0)
    net = make().eval()
    torch.manual_seed(1)
    other = make().eval()
    src, tgt = torch.randn(2, 9, 12), torch.randint(3, 30, (2, 5))
    wav_lens = torch.tensor([1.0, 0.7])
    with torch.no_grad():
        expected = net(src, tgt, wav_lens)
        assert not torch.allclose(other(src, tgt, wav_lens)[1], expected[1])
        other.load_state_dict(net.state_dict(), strict=True)
        for got, want in zip(other(src, tgt, wav_lens), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_output_hidden_states():
    net = make(output_hidden_states=True).eval()
    src, tgt = torch.randn(1, 9, 12), torch.randint(3, 30, (1, 4))
    with torch.no_grad():
        enc, hidden, dec = net(src, tgt)
        enc2, hidden2 = net.encode(src)
    assert len(hidden) == 3 and dec.shape == (1, 4, 16)
    torch.testing.assert_close(enc, enc2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="encoder_module"):
        make(encoder="mamba2")
    with pytest.raises(ValueError, match="decoder_module"):
        make(decoder="rnn")
    with pytest.raises(ValueError, match="normalize_before"):
        make(normalize_before=False)
    with pytest.raises(ValueError, match="bidirectional"):
        MambaDecoder(1, 16, 32, mamba_config={"bidirectional": True})
    net = make().eval()
    with pytest.raises(NotImplementedError, match="streaming"):
        net.make_streaming_context(None)
    with pytest.raises(NotImplementedError, match="chunk"):
        net.encode(torch.randn(1, 4, 12), dynchunktrain_config=object())


def test_conformer_encoder_with_mamba_decoder():
    """Stock encoder path (RelPosMHAXL embeddings) + Mamba decoder."""
    torch.manual_seed(0)
    net = make(encoder="conformer").eval()
    assert type(net.encoder).__name__ == "ConformerEncoder"
    src, tgt = torch.randn(2, 9, 12), torch.randint(3, 30, (2, 4))
    wav_lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        enc, dec = net(src, tgt, wav_lens)
        torch.testing.assert_close(enc, net.encode(src, wav_lens))
        enc_len = torch.tensor([9, 5])
        prefix, _ = net.decode(tgt, enc, enc_len)
    torch.testing.assert_close(dec, prefix, atol=1e-5, rtol=1e-4)
