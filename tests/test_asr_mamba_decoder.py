"""Mamba decoder: recurrent (cached) decoding equals the full forward, the
memory padding is respected, cache reordering follows hypotheses."""

import pytest
import torch

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.lobes.asr import (
    MambaDecoder,
    MambaDecoderLayer,
    MambaTransformerASR,
)

MAMBA = {"d_state": 8, "d_conv": 4, "expand": 2}


@pytest.fixture
def decoder():
    torch.manual_seed(0)
    return MambaDecoder(3, 16, 32, mamba_config=MAMBA).eval()


def test_layer_layout_pre_norm():
    """x + Mamba(LN x) -> x + CrossMamba(LN x, memory) -> x + FFN(LN x)."""
    torch.manual_seed(0)
    layer = MambaDecoderLayer(16, 32, mamba_config=MAMBA).eval()
    tgt, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        h = tgt + layer.self_mamba(layer.norm1(tgt))
        h = h + layer.cross_mamba(layer.norm2(h), memory)
        expected = h + layer.pos_ffn(layer.norm3(h))
        out, _, _ = layer(tgt, memory)
    torch.testing.assert_close(out, expected)


def test_cached_steps_equal_full_forward_with_padded_memory(decoder):
    gen = torch.Generator().manual_seed(1)
    memory = torch.randn(3, 11, 16, generator=gen)
    memory_lens = [11, 7, 4]
    pad = torch.arange(11)[None, :] >= torch.tensor(memory_lens)[:, None]
    memory = memory.masked_fill(pad[..., None], 50.0)  # garbage padding
    tgt = torch.randn(3, 6, 16, generator=gen)
    with torch.no_grad():
        full, self_attn, cross_attn = decoder(
            tgt, memory, memory_key_padding_mask=pad
        )
        cache = decoder.init_cache(memory, memory_key_padding_mask=pad)
        steps = []
        for t in range(6):
            out, cache = decoder.step(tgt[:, t : t + 1], cache)
            steps.append(out)
        for i, n in enumerate(memory_lens):  # each item alone, no padding
            alone, _, _ = decoder(tgt[i : i + 1], memory[i : i + 1, :n])
            torch.testing.assert_close(full[i], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        full, torch.cat(steps, dim=1), atol=1e-5, rtol=1e-4
    )
    assert cache.position == 6
    assert self_attn == [None] * 3 and cross_attn == [None] * 3


def test_cache_reorder_follows_hypotheses(decoder):
    gen = torch.Generator().manual_seed(2)
    memory = torch.randn(2, 9, 16, generator=gen)
    tgt = torch.randn(2, 4, 16, generator=gen)
    with torch.no_grad():
        cache = decoder.init_cache(memory).repeat_interleave(2)
        assert cache.batch_size == 4
        inflated = tgt.repeat_interleave(2, dim=0)
        for t in range(2):
            decoder.step(inflated[:, t : t + 1], cache)
        # swap the two hypotheses of every utterance, keep going
        order = torch.tensor([1, 0, 3, 2])
        cache = cache.index_select(order)
        out, _ = decoder.step(inflated[order][:, 2:3], cache)
        full, _, _ = decoder(tgt[:, :3], memory)
    torch.testing.assert_close(
        out[:, 0], full[:, 2].repeat_interleave(2, dim=0), atol=1e-5, rtol=1e-4
    )


def test_model_decode_step_equals_full_prefix_decode():
    torch.manual_seed(0)
    net = MambaTransformerASR(
        tgt_vocab=25, input_size=12, d_model=16, nhead=2,
        num_encoder_layers=1, num_decoder_layers=2, d_ffn=32,
        encoder_module="conmamba", decoder_module="mamba",
        attention_type="RelPosMHAXL", normalize_before=True, causal=False,
        mamba_config=MAMBA,
    ).eval()  # fmt: skip
    src = torch.randn(2, 10, 12)
    tokens = torch.randint(3, 25, (2, 7))
    with torch.no_grad():
        enc = net.encode(src, torch.tensor([1.0, 0.6]))
        enc_len = torch.tensor([10, 6])
        cache = net.init_decoding_cache(enc, enc_len)
        for t in range(7):
            step, cache = net.decode_step(tokens[:, t], cache)
            prefix, attn = net.decode(tokens[:, : t + 1], enc, enc_len)
            torch.testing.assert_close(
                step[:, 0], prefix[:, -1], atol=1e-5, rtol=1e-4
            )
        assert attn is None
        # teacher forcing (forward) sees the same decoder
        _, dec = net(src, tokens, torch.tensor([1.0, 0.6]))
    torch.testing.assert_close(dec, prefix, atol=1e-5, rtol=1e-4)


def test_errors(decoder):
    cache = decoder.init_cache(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="batch, 1, d_model"):
        decoder.step(torch.randn(2, 3, 16), cache)
    with pytest.raises(ValueError, match="hypotheses"):
        decoder.step(torch.randn(3, 1, 16), cache)
    with pytest.raises(ValueError, match="memory_mask"):
        decoder(torch.randn(1, 2, 16), torch.randn(1, 3, 16), memory_mask=1)
    net = MambaTransformerASR(
        10, 8, d_model=16, nhead=2, num_encoder_layers=1,
        num_decoder_layers=1, d_ffn=16, encoder_module="conmamba",
        normalize_before=True, causal=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="decoder_module='mamba'"):
        net.init_decoding_cache(torch.randn(1, 3, 16))
