"""SpeechBrain's ``TransformerASR`` with Mamba encoder/decoder choices.

:class:`MambaTransformerASR` extends (does not fork) SpeechBrain's
``TransformerASR``: ``encoder_module`` additionally accepts ``"conmamba"``
and the new ``decoder_module`` argument accepts ``"mamba"``. Everything else
(the stock encoders and decoder, masks, ``forward`` / ``encode`` /
``decode`` signatures) is SpeechBrain's, so SpeechBrain's beam searchers,
scorers, ``EncoderDecoderASR`` and ``EncoderASR`` work unchanged.

Differences from the parent class, all specific to Mamba modules:

- no absolute positional encoding is added in front of a Mamba encoder
  (Mamba is order-aware by construction);
- ``_init_params`` (xavier on every 2-D+ parameter) is followed by
  :func:`speechbrain_mamba.nnet.reset_mamba_parameters`, so ``A_log``,
  ``D`` and the ``dt`` projection keep Mamba's initialisation;
- a Mamba decoder supports recurrent decoding: :meth:`init_decoding_cache`
  runs the encoder output through the cross mixers once and
  :meth:`decode_step` costs O(1) in the prefix length (used by
  :class:`speechbrain_mamba.lobes.asr.searcher.S2SMambaBeamSearcher`);
  :meth:`decode` keeps SpeechBrain's full-prefix contract.

Author
------
speechbrain-mamba developers
"""

from typing import Any, Dict, Optional, Tuple

import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.lobes.models.transformer.Transformer import (
    NormalizedEmbedding,
)
from speechbrain.lobes.models.transformer.TransformerASR import (
    TransformerASR,
    make_transformer_src_tgt_masks,
)
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.containers import ModuleList
from torch import nn

from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder
from speechbrain_mamba.lobes.asr.mamba_decoder import (
    MambaDecoder,
    MambaDecoderCache,
)
from speechbrain_mamba.nnet import reset_mamba_parameters
from speechbrain_mamba.nnet.padding import check_relative_lengths
from speechbrain_mamba.utils.value_checks import check_once

SB_ENCODERS = ("transformer", "conformer", "branchformer")
MAMBA_ENCODERS = ("conmamba",)
DECODERS = ("transformer", "mamba")


def _check_wav_len(wav_len: Optional[torch.Tensor]) -> None:
    """Rejects NaN / infinite / out-of-range relative lengths before they
    become padding masks (a NaN length would mask the whole item)."""
    if isinstance(wav_len, torch.Tensor):
        check_once(wav_len, "relative lengths", check_relative_lengths)


class MambaTransformerASR(TransformerASR):
    """``TransformerASR`` with ConMamba encoder and Mamba decoder options.

    Arguments
    ---------
    tgt_vocab : int
        Vocabulary size.
    input_size : int
        Input feature size (e.g. 640 after SpeechBrain's 2-block CNN front
        end on 80 fbanks).
    d_model : int
        Model dimension.
    nhead : int
        Attention heads (Transformer / Conformer modules only).
    num_encoder_layers : int
        Encoder layers.
    num_decoder_layers : int
        Decoder layers (0: encoder-only model, e.g. for CTC).
    d_ffn : int
        Hidden size of the feed-forward modules.
    dropout : float
        Dropout rate.
    activation : type
        Activation of the decoder feed-forward modules.
    positional_encoding : str or None
        ``"fixed_abs_sine"`` or None. Never added in front of a Mamba
        encoder; used for the decoder input as in ``TransformerASR``.
    normalize_before : bool
        Pre-norm layers.
    kernel_size : int
        Kernel of the Conformer / ConMamba convolution modules.
    bias : bool
        Biases of the convolution modules.
    encoder_module : str
        ``"transformer"``, ``"conformer"``, ``"branchformer"`` or
        ``"conmamba"``.
    decoder_module : str
        ``"transformer"`` or ``"mamba"``.
    conformer_activation : type
        Activation of the Conformer modules.
    branchformer_activation : type
        Activation of the Branchformer modules.
    conmamba_activation : type
        Activation of the ConMamba feed-forward and convolution modules.
    attention_type : str
        Attention of Transformer / Conformer modules (``"regularMHA"``,
        ``"RelPosMHAXL"``, ...). With ``"RelPosMHAXL"`` the decoder input
        gets a sinusoidal encoding, as in ``TransformerASR``.
    max_length : int
        Maximum length for positional encodings.
    causal : bool, optional
        Causal encoder (None: SpeechBrain's default, True, with a warning).
        A causal ConMamba uses unidirectional Mamba and causal convolutions.
    csgu_linear_units, gate_activation, use_linear_after_conv
        Branchformer options (see ``TransformerASR``).
    output_hidden_states : bool
        Return the encoder's hidden states too.
    layerdrop_prob : float
        Encoder layer drop probability.
    mamba_config : dict, optional
        Mamba mixer arguments (``d_state``, ``d_conv``, ``expand``, ...) and
        ``bidirectional`` (encoder only; default True), as in Mamba-ASR.
    cuda_graphs : bool
        The ConMamba encoder replays the CUDA graphs it records itself on a
        GPU (training and inference, one per batch size and bucket of
        lengths; see :class:`~speechbrain_mamba.lobes.asr.conmamba.
        ConMambaEncoder`); False: eager calls.

    Example
    -------
    >>> net = MambaTransformerASR(
    ...     tgt_vocab=20, input_size=12, d_model=16, nhead=2,
    ...     num_encoder_layers=1, num_decoder_layers=1, d_ffn=32,
    ...     encoder_module="conmamba", decoder_module="mamba",
    ...     attention_type="RelPosMHAXL", normalize_before=True, causal=False,
    ...     mamba_config={"d_state": 4, "expand": 2, "d_conv": 4},
    ... )
    >>> enc, dec = net(torch.rand(2, 9, 12), torch.randint(1, 20, (2, 5)))
    >>> enc.shape, dec.shape
    (torch.Size([2, 9, 16]), torch.Size([2, 5, 16]))
    """

    def __init__(
        self,
        tgt_vocab: int,
        input_size: int,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        d_ffn: int = 2048,
        dropout: float = 0.1,
        activation: type = nn.ReLU,
        positional_encoding: Optional[str] = "fixed_abs_sine",
        normalize_before: bool = False,
        kernel_size: Optional[int] = 31,
        bias: bool = True,
        encoder_module: str = "transformer",
        decoder_module: str = "transformer",
        conformer_activation: type = Swish,
        branchformer_activation: type = nn.GELU,
        conmamba_activation: type = nn.GELU,
        attention_type: str = "regularMHA",
        max_length: int = 2500,
        causal: Optional[bool] = None,
        csgu_linear_units: int = 3072,
        gate_activation: type = nn.Identity,
        use_linear_after_conv: bool = False,
        output_hidden_states: bool = False,
        layerdrop_prob: float = 0.0,
        mamba_config: Optional[Dict[str, Any]] = None,
        cuda_graphs: bool = True,
    ):
        if encoder_module not in SB_ENCODERS + MAMBA_ENCODERS:
            raise ValueError(
                f"encoder_module must be one of {SB_ENCODERS + MAMBA_ENCODERS}"
                f"; got {encoder_module!r}"
            )
        if decoder_module not in DECODERS:
            raise ValueError(
                f"decoder_module must be one of {DECODERS}; got "
                f"{decoder_module!r}"
            )
        mamba_encoder = encoder_module in MAMBA_ENCODERS
        mamba_decoder = decoder_module == "mamba" and num_decoder_layers > 0
        if mamba_encoder and num_encoder_layers < 1:
            raise ValueError("a ConMamba encoder needs num_encoder_layers >= 1")
        if mamba_encoder and not normalize_before:
            raise ValueError("normalize_before must be True for ConMamba")
        # The parent builds nothing for an encoder_module it does not know,
        # and no decoder when told there are no decoder layers: the Mamba
        # modules are added below, then everything is initialised once.
        super().__init__(
            tgt_vocab=tgt_vocab,
            input_size=input_size,
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=0 if mamba_decoder else num_decoder_layers,
            d_ffn=d_ffn,
            dropout=dropout,
            activation=activation,
            positional_encoding=positional_encoding,
            normalize_before=normalize_before,
            kernel_size=kernel_size,
            bias=bias,
            encoder_module=encoder_module,
            conformer_activation=conformer_activation,
            branchformer_activation=branchformer_activation,
            attention_type=attention_type,
            max_length=max_length,
            causal=causal,
            csgu_linear_units=csgu_linear_units,
            gate_activation=gate_activation,
            use_linear_after_conv=use_linear_after_conv,
            output_hidden_states=output_hidden_states,
            layerdrop_prob=layerdrop_prob,
        )
        self.encoder_module = encoder_module
        self.decoder_module = decoder_module
        self.num_decoder_layers = num_decoder_layers
        self.max_length = max_length
        if mamba_encoder:
            self.encoder = ConMambaEncoder(
                num_layers=num_encoder_layers,
                d_model=d_model,
                d_ffn=d_ffn,
                kernel_size=kernel_size,
                activation=conmamba_activation,
                bias=bias,
                dropout=dropout,
                causal=self.causal,
                mamba_config=mamba_config,
                output_hidden_states=output_hidden_states,
                layerdrop_prob=layerdrop_prob,
                cuda_graphs=cuda_graphs,
            )
        if mamba_decoder:
            self.custom_tgt_module = ModuleList(
                NormalizedEmbedding(d_model, tgt_vocab)
            )
            decoder_mamba_config = dict(mamba_config or {})
            decoder_mamba_config.pop("bidirectional", None)
            self.decoder = MambaDecoder(
                num_layers=num_decoder_layers,
                d_model=d_model,
                d_ffn=d_ffn,
                activation=activation,
                dropout=dropout,
                normalize_before=normalize_before,
                mamba_config=decoder_mamba_config,
            )
        self._modules_complete = True
        self._init_params()

    # ------------------------------------------------------------------ init
    def _init_params(self):
        """SpeechBrain's xavier initialisation, then Mamba's own init for
        every Mamba mixer (xavier would overwrite ``A_log`` and ``dt``)."""
        if not getattr(self, "_modules_complete", False):
            return  # called by the parent before the Mamba modules exist
        super()._init_params()
        reset_mamba_parameters(self)

    # ------------------------------------------------------------- helpers
    @property
    def has_mamba_encoder(self) -> bool:
        """Whether the encoder is a Mamba encoder."""
        return self.encoder_module in MAMBA_ENCODERS

    @property
    def has_mamba_decoder(self) -> bool:
        """Whether the decoder is a Mamba decoder."""
        return self.decoder_module == "mamba" and self.num_decoder_layers > 0

    def _target_positional_encoding(self) -> Optional[nn.Module]:
        """The module TransformerASR adds to the decoder input, if any."""
        if self.attention_type in ("RelPosMHAXL", "RoPEMHA"):
            return self.positional_encoding_decoder
        if (
            self.positional_encoding_type == "fixed_abs_sine"
            or self.attention_type == "hypermixing"
        ):
            return self.positional_encoding
        return None

    def _embed_target(self, tgt: torch.Tensor, offset: int = 0):
        """Token embedding plus the decoder positional encoding of the
        positions ``offset .. offset + len - 1``."""
        emb = self.custom_tgt_module(tgt)
        pos = self._target_positional_encoding()
        if pos is not None:
            end = offset + emb.shape[1]
            if end > pos.pe.shape[1]:
                raise ValueError(
                    f"target position {end - 1} exceeds max_length "
                    f"{pos.pe.shape[1]} of the decoder positional encoding"
                )
            emb = emb + pos.pe[:, offset:end].to(emb.dtype)
        return emb

    def _run_mamba_encoder(self, src, src_key_padding_mask):
        src = self.custom_src_module(src)
        return self.encoder(src=src, src_key_padding_mask=src_key_padding_mask)

    @staticmethod
    def _memory_padding_mask(encoder_out, enc_len):
        if enc_len is None:
            return None
        return ~length_to_mask(
            enc_len.to(encoder_out.device), max_len=encoder_out.shape[1]
        ).bool()

    # ------------------------------------------------------------ forward
    def forward(self, src, tgt, wav_len=None, pad_idx=0):
        """Encodes ``src`` and, unless ``tgt`` is None, decodes ``tgt``
        (teacher forcing). Same contract as ``TransformerASR.forward``.

        Arguments
        ---------
        src : torch.Tensor
            Input features, [batch, time, input_size] (or 4-D, flattened).
        tgt : torch.Tensor or None
            Decoder input tokens, [batch, tgt_len] (starting with bos).
        wav_len : torch.Tensor, optional
            Relative lengths, [batch].
        pad_idx : int
            Padding token of ``tgt``.

        Returns
        -------
        With ``tgt``: ``(encoder_out, decoder_out)`` (and the hidden states
        in the middle when ``output_hidden_states``); without: the encoder's
        output tuple, like ``TransformerASR``.
        """
        _check_wav_len(wav_len)
        if not (self.has_mamba_encoder or self.has_mamba_decoder):
            return super().forward(src, tgt, wav_len, pad_idx=pad_idx)
        if src.ndim == 4:
            bz, t, ch1, ch2 = src.shape
            src = src.reshape(bz, t, ch1 * ch2)
        src_key_padding_mask, tgt_key_padding_mask, _, tgt_mask = (
            make_transformer_src_tgt_masks(
                src, tgt, wav_len, causal=self.causal, pad_idx=pad_idx
            )
        )
        if self.has_mamba_encoder:
            outputs = self._run_mamba_encoder(src, src_key_padding_mask)
        else:
            outputs = self._sb_encode(src, wav_len, pad_idx)
        if tgt is None:
            return outputs
        if self.output_hidden_states:
            encoder_out, _, hidden_states = outputs
        else:
            encoder_out, _ = outputs

        if self.has_mamba_decoder:
            decoder_out, _, _ = self.decoder(
                tgt=self._embed_target(tgt),
                memory=encoder_out,
                memory_key_padding_mask=src_key_padding_mask,
            )
        else:
            decoder_out, _, _ = self.decoder(
                tgt=self._embed_target(tgt),
                memory=encoder_out,
                memory_mask=None,
                tgt_mask=tgt_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=src_key_padding_mask,
                pos_embs_tgt=None,
                pos_embs_src=None,
            )
        if self.output_hidden_states:
            return encoder_out, hidden_states, decoder_out
        return encoder_out, decoder_out

    def _sb_encode(self, src, wav_len, pad_idx):
        """SpeechBrain's encoder path, returning the raw encoder tuple."""
        src_key_padding_mask, _, src_mask, _ = make_transformer_src_tgt_masks(
            src, None, wav_len, pad_idx=pad_idx, causal=self.causal
        )
        src = self.custom_src_module(src)
        pos_embs = None
        if self.attention_type == "RelPosMHAXL":
            pos_embs = self.positional_encoding(src)
        elif (
            self.attention_type not in ("hypermixing", "RoPEMHA")
            and self.positional_encoding_type == "fixed_abs_sine"
        ):
            src = src + self.positional_encoding(src)
        return self.encoder(
            src=src,
            src_mask=src_mask,
            src_key_padding_mask=src_key_padding_mask,
            pos_embs=pos_embs,
        )

    def encode(
        self,
        src,
        wav_len=None,
        pad_idx=0,
        dynchunktrain_config=None,
    ):
        """Encoder forward pass (same contract as ``TransformerASR.encode``).

        Arguments
        ---------
        src : torch.Tensor
            Input features, [batch, time, input_size].
        wav_len : torch.Tensor, optional
            Relative lengths, [batch].
        pad_idx : int
            Unused (kept for the interface).
        dynchunktrain_config : DynChunkTrainConfig, optional
            Chunked attention (not supported by ConMamba).

        Returns
        -------
        torch.Tensor
            Encoder output, [batch, time, d_model] (and the hidden states
            when ``output_hidden_states``).
        """
        _check_wav_len(wav_len)
        if not self.has_mamba_encoder:
            return super().encode(
                src, wav_len, pad_idx, dynchunktrain_config=dynchunktrain_config
            )
        if dynchunktrain_config is not None:
            raise NotImplementedError(
                "dynamic chunk training / streaming is not supported by the "
                "ConMamba encoder"
            )
        if src.dim() == 4:
            bz, t, ch1, ch2 = src.shape
            src = src.reshape(bz, t, ch1 * ch2)
        src_key_padding_mask, _, _, _ = make_transformer_src_tgt_masks(
            src, None, wav_len, pad_idx=pad_idx, causal=self.causal
        )
        outputs = self._run_mamba_encoder(src, src_key_padding_mask)
        if self.output_hidden_states:
            encoder_out, _, hidden_states = outputs
            return encoder_out, hidden_states
        return outputs[0]

    def encode_streaming(self, src, context):
        """Streaming encoding (Transformer/Conformer encoders only)."""
        if self.has_mamba_encoder:
            raise NotImplementedError(
                "streaming is not supported by the ConMamba encoder"
            )
        return super().encode_streaming(src, context)

    def make_streaming_context(self, dynchunktrain_config, encoder_kwargs=None):
        """Streaming context (Transformer/Conformer encoders only)."""
        if self.has_mamba_encoder:
            raise NotImplementedError(
                "streaming is not supported by the ConMamba encoder"
            )
        return super().make_streaming_context(
            dynchunktrain_config, encoder_kwargs or {}
        )

    # ------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, tgt, encoder_out, enc_len=None):
        """One decoding step over the whole prefix ``tgt`` (SpeechBrain's
        contract, used by ``S2STransformerBeamSearcher``).

        Arguments
        ---------
        tgt : torch.Tensor
            Prefix tokens, [batch, prefix_len].
        encoder_out : torch.Tensor
            Encoder output, [batch, time, d_model].
        enc_len : torch.Tensor, optional
            Absolute encoder lengths, [batch].

        Returns
        -------
        prediction : torch.Tensor
            Decoder output, [batch, prefix_len, d_model].
        attention : torch.Tensor or None
            Last layer's cross-attention (None for a Mamba decoder).
        """
        if not self.has_mamba_decoder:
            return super().decode(tgt, encoder_out, enc_len)
        prediction, _, _ = self.decoder(
            tgt=self._embed_target(tgt),
            memory=encoder_out,
            memory_key_padding_mask=self._memory_padding_mask(
                encoder_out, enc_len
            ),
        )
        return prediction, None

    @torch.no_grad()
    def init_decoding_cache(
        self, encoder_out: torch.Tensor, enc_len: Optional[torch.Tensor] = None
    ) -> MambaDecoderCache:
        """Runs the encoder output through the decoder's cross mixers once
        and returns the recurrent state for :meth:`decode_step`.

        Arguments
        ---------
        encoder_out : torch.Tensor
            Encoder output, [batch, time, d_model].
        enc_len : torch.Tensor, optional
            Absolute encoder lengths, [batch].

        Returns
        -------
        MambaDecoderCache
            State before the first target token.
        """
        if not self.has_mamba_decoder:
            raise RuntimeError(
                "recurrent decoding needs decoder_module='mamba'"
            )
        return self.decoder.init_cache(
            encoder_out,
            memory_key_padding_mask=self._memory_padding_mask(
                encoder_out, enc_len
            ),
        )

    @torch.no_grad()
    def decode_step(
        self, tokens: torch.Tensor, cache: MambaDecoderCache
    ) -> Tuple[torch.Tensor, MambaDecoderCache]:
        """Decodes one token per hypothesis in O(1) of the prefix length.

        Arguments
        ---------
        tokens : torch.Tensor
            The latest token of every hypothesis, [batch] or [batch, 1].
        cache : MambaDecoderCache
            State from :meth:`init_decoding_cache` or the previous step
            (updated in place and returned).

        Returns
        -------
        prediction : torch.Tensor
            Decoder output for this position, [batch, 1, d_model].
        cache : MambaDecoderCache
            The updated state.
        """
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(1)
        if tokens.shape[1] != 1:
            raise ValueError(
                "decode_step takes one token per row; got "
                f"{tuple(tokens.shape)}"
            )
        emb = self._embed_target(tokens, offset=cache.position)
        return self.decoder.step(emb, cache)
