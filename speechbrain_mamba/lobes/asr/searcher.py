"""Beam search with the Mamba decoder's recurrent cache.

SpeechBrain's ``S2STransformerBeamSearcher`` keeps the token prefix of every
hypothesis as its memory and calls ``model.decode(prefix, ...)`` at every
step, so step ``t`` costs O(t). :class:`S2SMambaBeamSearcher` keeps instead
the recurrent state of every hypothesis (a
:class:`~speechbrain_mamba.lobes.asr.mamba_decoder.MambaDecoderCache`),
feeds only the newest token to ``model.decode_step`` and reorders the state
with the beam's predecessor indices, so every step costs O(1) in the prefix
length. Scores, scorers (CTC, LMs), eos handling and length normalisation are
SpeechBrain's, untouched. For models without a Mamba decoder it behaves
exactly like its parent.

Author
------
speechbrain-mamba developers
"""

from typing import Any

from speechbrain.decoders.seq2seq import S2STransformerBeamSearcher

from speechbrain_mamba.lobes.asr.mamba_decoder import MambaDecoderCache


class S2SMambaBeamSearcher(S2STransformerBeamSearcher):
    """``S2STransformerBeamSearcher`` that decodes a Mamba decoder
    recurrently.

    Arguments
    ---------
    modules : list
        ``[model, seq_lin]``: a model with ``decode`` (and, for the cached
        path, ``has_mamba_decoder``, ``init_decoding_cache`` and
        ``decode_step``, as
        :class:`~speechbrain_mamba.lobes.asr.transformer_asr.MambaTransformerASR`)
        and the output layer.
    temperature : float
        Softmax temperature.
    use_cache : bool
        Use the recurrent path when the model supports it (False: always the
        full-prefix path, for comparisons).
    **kwargs
        ``S2SBeamSearcher`` arguments (bos/eos indices, beam size, scorer,
        ...).

    Example
    -------
    >>> import torch
    >>> from speechbrain.nnet.linear import Linear
    >>> from speechbrain_mamba.lobes.asr import MambaTransformerASR
    >>> net = MambaTransformerASR(
    ...     10, 8, d_model=16, nhead=2, num_encoder_layers=1,
    ...     num_decoder_layers=1, d_ffn=16, encoder_module="conmamba",
    ...     decoder_module="mamba", normalize_before=True, causal=False,
    ...     mamba_config={"d_state": 4}).eval()
    >>> lin = Linear(input_size=16, n_neurons=10)
    >>> searcher = S2SMambaBeamSearcher([net, lin], bos_index=1, eos_index=2,
    ...     min_decode_ratio=0.0, max_decode_ratio=1.0, beam_size=3)
    >>> enc = net.encode(torch.rand(2, 6, 8))
    >>> hyps, _, _, _ = searcher(enc, torch.ones(2))
    >>> len(hyps)
    2
    """

    def __init__(
        self,
        modules: list,
        temperature: float = 1.0,
        use_cache: bool = True,
        **kwargs: Any,
    ):
        super().__init__(modules, temperature=temperature, **kwargs)
        self.use_cache = use_cache
        if self._cached() and self.using_max_attn_shift:
            raise ValueError(
                "using_max_attn_shift needs attention weights, which a Mamba "
                "decoder does not have"
            )

    def _cached(self) -> bool:
        return self.use_cache and bool(
            getattr(self.model, "has_mamba_decoder", False)
        )

    def reset_mem(self, batch_size, device):
        """No state before the first step (it is built from the encoder
        output at the first step)."""
        return None

    def permute_mem(self, memory, index):
        """Reorders the per-hypothesis state (or the prefixes) along the
        surviving beams."""
        if isinstance(memory, MambaDecoderCache):
            return memory.index_select(index)
        return super().permute_mem(memory, index)

    def forward_step(self, inp_tokens, memory, enc_states, enc_lens):
        """One beam step: feeds the newest token of every hypothesis.

        Arguments
        ---------
        inp_tokens : torch.Tensor
            Newest token of each hypothesis, [batch * beam].
        memory : MambaDecoderCache or torch.Tensor or None
            Recurrent state (cached path) or prefixes (full-prefix path).
        enc_states : torch.Tensor
            Encoder output repeated per beam, [batch * beam, time, d_model].
        enc_lens : torch.Tensor
            Absolute encoder lengths, [batch * beam].

        Returns
        -------
        log_probs : torch.Tensor
            [batch * beam, vocab].
        memory : MambaDecoderCache or torch.Tensor
            Updated state.
        attn : None
            No attention weights on the cached path.
        """
        if not self._cached():
            return super().forward_step(
                inp_tokens, memory, enc_states, enc_lens
            )
        if memory is None:
            # The encoder output was repeated beam_size times per utterance:
            # run the cross mixers once per utterance and repeat the state.
            beam = self.beam_size
            memory = self.model.init_decoding_cache(
                enc_states[::beam], enc_lens[::beam]
            ).repeat_interleave(beam)
        pred, memory = self.model.decode_step(inp_tokens, memory)
        log_probs = self.softmax(self.fc(pred) / self.temperature)
        return log_probs[:, -1, :], memory, None
