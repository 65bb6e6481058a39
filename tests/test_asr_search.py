"""Beam search: SpeechBrain's own S2STransformerBeamSearcher (full prefix
at every step) and the cached S2SMambaBeamSearcher give identical
hypotheses and scores, with SpeechBrain's CTC and LM scorers."""

import pytest
import torch
from speechbrain.decoders import (
    S2STransformerBeamSearcher,
    S2STransformerGreedySearcher,
)
from speechbrain.decoders.scorer import (
    CTCScorer,
    ScorerBuilder,
    TransformerLMScorer,
)
from speechbrain.lobes.models.transformer.TransformerLM import TransformerLM
from speechbrain.nnet.linear import Linear

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.lobes.asr import (
    MambaDecoderCache,
    MambaTransformerASR,
    S2SMambaBeamSearcher,
)

VOCAB, D = 24, 16


@pytest.fixture(scope="module")
def system():
    torch.manual_seed(3)
    net = MambaTransformerASR(
        tgt_vocab=VOCAB, input_size=12, d_model=D, nhead=2,
        num_encoder_layers=1, num_decoder_layers=2, d_ffn=32,
        encoder_module="conmamba", decoder_module="mamba",
        attention_type="RelPosMHAXL", normalize_before=True, causal=False,
        mamba_config={"d_state": 4},
    ).eval()  # fmt: skip
    seq_lin = Linear(input_size=D, n_neurons=VOCAB)
    ctc_lin = Linear(input_size=D, n_neurons=VOCAB)
    # Bias the output layer so that hypotheses end before max length.
    with torch.no_grad():
        seq_lin.w.bias[2] += 0.2
    src = torch.randn(3, 14, 12)
    wav_lens = torch.tensor([1.0, 0.8, 0.5])
    with torch.no_grad():
        enc = net.encode(src, wav_lens)
    return net, seq_lin, ctc_lin, enc, wav_lens


def searcher(cls, net, seq_lin, scorer=None, **kwargs):
    return cls(
        modules=[net, seq_lin],
        bos_index=1,
        eos_index=2,
        min_decode_ratio=0.0,
        max_decode_ratio=1.0,
        beam_size=4,
        using_eos_threshold=False,
        length_normalization=True,
        scorer=scorer,
        **kwargs,
    )


def ctc_scorer(ctc_lin):
    return ScorerBuilder(
        full_scorers=[CTCScorer(ctc_fc=ctc_lin, blank_index=0, eos_index=2)],
        weights={"ctc": 0.4},
    )


def run(search, enc, wav_lens):
    with torch.no_grad():
        hyps, lens, scores, log_probs = search(enc, wav_lens)
    return hyps, scores


@pytest.mark.parametrize("with_ctc", [False, True])
def test_cached_search_equals_stock_searcher(system, with_ctc):
    net, seq_lin, ctc_lin, enc, wav_lens = system
    scorer = ctc_scorer(ctc_lin) if with_ctc else None
    stock = searcher(S2STransformerBeamSearcher, net, seq_lin, scorer)
    scorer = ctc_scorer(ctc_lin) if with_ctc else None
    cached = searcher(S2SMambaBeamSearcher, net, seq_lin, scorer)
    hyps_stock, scores_stock = run(stock, enc, wav_lens)
    hyps_cached, scores_cached = run(cached, enc, wav_lens)
    assert hyps_cached == hyps_stock
    assert any(len(h) > 1 for h in hyps_stock)
    torch.testing.assert_close(
        scores_cached, scores_stock, atol=1e-4, rtol=1e-4
    )


def test_cached_search_with_transformer_lm(system):
    net, seq_lin, ctc_lin, enc, wav_lens = system
    torch.manual_seed(4)
    lm = TransformerLM(
        vocab=VOCAB, d_model=16, nhead=2, num_encoder_layers=1,
        num_decoder_layers=0, d_ffn=32, dropout=0.0,
    ).eval()  # fmt: skip

    def scorer():
        return ScorerBuilder(
            full_scorers=[
                TransformerLMScorer(language_model=lm, temperature=1.15),
                CTCScorer(ctc_fc=ctc_lin, blank_index=0, eos_index=2),
            ],
            weights={"ctc": 0.4, "transformerlm": 0.6},
        )

    stock = searcher(S2STransformerBeamSearcher, net, seq_lin, scorer())
    cached = searcher(S2SMambaBeamSearcher, net, seq_lin, scorer())
    assert run(cached, enc, wav_lens)[0] == run(stock, enc, wav_lens)[0]


def test_cached_search_keeps_per_hypothesis_state(system, monkeypatch):
    """The memory is a decoder cache of batch * beam hypotheses, and the
    model sees one token per step (never the prefix)."""
    net, seq_lin, _, enc, wav_lens = system
    seen = []
    original = net.decode_step

    def spy(tokens, cache):
        seen.append((tuple(tokens.shape), cache))
        return original(tokens, cache)

    monkeypatch.setattr(net, "decode_step", spy)
    monkeypatch.setattr(
        net, "decode", lambda *a: pytest.fail("full-prefix decode called")
    )
    run(searcher(S2SMambaBeamSearcher, net, seq_lin), enc, wav_lens)
    assert len(seen) > 2
    assert all(shape == (12,) for shape, _ in seen)
    assert all(isinstance(c, MambaDecoderCache) for _, c in seen)
    assert [c.position for _, c in seen] == list(range(1, len(seen) + 1))


def test_use_cache_false_and_transformer_decoder_fall_back(system):
    net, seq_lin, _, enc, wav_lens = system
    uncached = searcher(S2SMambaBeamSearcher, net, seq_lin, use_cache=False)
    stock = searcher(S2STransformerBeamSearcher, net, seq_lin)
    assert run(uncached, enc, wav_lens)[0] == run(stock, enc, wav_lens)[0]

    torch.manual_seed(0)
    net_t = MambaTransformerASR(
        tgt_vocab=VOCAB, input_size=12, d_model=D, nhead=2,
        num_encoder_layers=1, num_decoder_layers=1, d_ffn=32,
        encoder_module="conmamba", decoder_module="transformer",
        attention_type="RelPosMHAXL", normalize_before=True, causal=False,
        mamba_config={"d_state": 4},
    ).eval()  # fmt: skip
    with torch.no_grad():
        enc_t = net_t.encode(torch.randn(2, 10, 12))
    ours = searcher(S2SMambaBeamSearcher, net_t, seq_lin)
    stock = searcher(S2STransformerBeamSearcher, net_t, seq_lin)
    ones = torch.ones(2)
    assert run(ours, enc_t, ones)[0] == run(stock, enc_t, ones)[0]


def test_stock_greedy_searcher_works_with_mamba_decoder(system):
    """SpeechBrain's greedy searcher (full prefix) gives the argmax path of
    the cached decoder."""
    net, seq_lin, _, enc, wav_lens = system
    greedy = S2STransformerGreedySearcher(
        modules=[net, seq_lin],
        bos_index=1,
        eos_index=2,
        min_decode_ratio=0.0,
        max_decode_ratio=1.0,
    )
    with torch.no_grad():
        hyps, _, _, _ = greedy(enc, wav_lens)
        enc_len = torch.round(wav_lens * enc.shape[1]).int()
        cache = net.init_decoding_cache(enc, enc_len)
        token = torch.ones(enc.shape[0], dtype=torch.long)
        paths = [[] for _ in hyps]
        done = [False] * len(hyps)
        for _ in range(enc.shape[1]):
            pred, cache = net.decode_step(token, cache)
            token = seq_lin(pred[:, 0]).argmax(-1)
            for i, tok in enumerate(token.tolist()):
                done[i] = done[i] or tok == 2
                if not done[i]:
                    paths[i].append(tok)
    assert hyps == paths


def test_attention_shift_is_refused(system):
    net, seq_lin, _, _, _ = system
    with pytest.raises(ValueError, match="attention"):
        searcher(S2SMambaBeamSearcher, net, seq_lin, using_max_attn_shift=True)
