"""Mamba decoder for attention-free encoder-decoder ASR.

Each layer (pre-norm by default) runs::

    x = x + Mamba(LN(x))                        # over the target, causal
    x = x + CrossMamba(LN(x), encoder_output)   # Mamba over [memory ; target]
    x = x + FFN(LN(x))

and the stack ends with a LayerNorm. The decoder has the interface of
SpeechBrain's ``TransformerDecoder`` (``forward(tgt, memory, ...)`` returning
``(output, self_attns, cross_attns)``) and adds recurrent decoding:
:meth:`MambaDecoder.init_cache` consumes the encoder output once per
utterance, then :meth:`MambaDecoder.step` decodes one token at a time at a
cost independent of the prefix length. The padding of the encoder output
never sits between memory and target: each utterance's target follows its
last real encoder frame.

Author
------
speechbrain-mamba developers
"""

from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from speechbrain.nnet.attention import PositionalwiseFeedForward
from speechbrain.nnet.normalization import LayerNorm
from torch import nn

from speechbrain_mamba.lobes.asr.conmamba import key_padding_mask_to_lengths
from speechbrain_mamba.lobes.asr.layer_stack import NormedLayerStack
from speechbrain_mamba.nnet import CrossMamba, Mamba, MambaCache


@dataclass
class MambaDecoderCache:
    """Recurrent state of a :class:`MambaDecoder` for every hypothesis.

    Arguments
    ---------
    self_caches : list of MambaCache
        State of each layer's target Mamba.
    cross_caches : list of MambaCache
        State of each layer's CrossMamba (memory already consumed).
    position : int
        Number of target tokens consumed so far (the next token's position).

    Example
    -------
    >>> c = MambaCache(torch.zeros(2, 4, 3), torch.zeros(2, 4, 5))
    >>> cache = MambaDecoderCache([c], [c], position=3)
    >>> cache.repeat_interleave(2).batch_size
    4
    """

    self_caches: List[MambaCache]
    cross_caches: List[MambaCache]
    position: int = 0

    @property
    def batch_size(self) -> int:
        """Number of hypotheses held."""
        return self.self_caches[0].batch_size

    def index_select(self, index: torch.Tensor) -> "MambaDecoderCache":
        """Selects (and repeats) hypotheses, e.g. the surviving beams.

        Arguments
        ---------
        index : torch.Tensor
            Long tensor of hypothesis indices.

        Returns
        -------
        MambaDecoderCache
            A new cache.
        """
        return MambaDecoderCache(
            [c.reorder(index) for c in self.self_caches],
            [c.reorder(index) for c in self.cross_caches],
            self.position,
        )

    def repeat_interleave(self, times: int) -> "MambaDecoderCache":
        """Repeats every hypothesis ``times`` times (consecutively, like
        SpeechBrain's ``inflate_tensor``).

        Arguments
        ---------
        times : int
            Number of copies.

        Returns
        -------
        MambaDecoderCache
            A new cache with ``batch_size * times`` hypotheses.
        """
        device = self.self_caches[0].ssm.device
        index = torch.arange(self.batch_size, device=device)
        return self.index_select(index.repeat_interleave(times))


class MambaDecoderLayer(nn.Module):
    """Target Mamba, CrossMamba over [memory ; target], feed-forward.

    Arguments
    ---------
    d_model : int
        Model dimension.
    d_ffn : int
        Hidden size of the feed-forward module.
    activation : type
        Activation of the feed-forward module.
    dropout : float
        Dropout on the three residual branches.
    normalize_before : bool
        Pre-norm (True, as in the paper) or post-norm.
    mamba_config : dict, optional
        Arguments of the Mamba mixers (``d_state``, ``d_conv``, ``expand``,
        ...).

    Example
    -------
    >>> layer = MambaDecoderLayer(16, 32, mamba_config={"d_state": 4})
    >>> out, _, _ = layer(torch.rand(2, 5, 16), torch.rand(2, 7, 16))
    >>> out.shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        activation: type = nn.ReLU,
        dropout: float = 0.0,
        normalize_before: bool = True,
        mamba_config: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        kwargs = dict(mamba_config or {})
        if kwargs.pop("bidirectional", False):
            raise ValueError("a decoder cannot use bidirectional Mamba")
        self.self_mamba = Mamba(d_model, **kwargs)
        self.cross_mamba = CrossMamba(d_model, **kwargs)
        self.pos_ffn = PositionalwiseFeedForward(
            d_ffn=d_ffn,
            input_size=d_model,
            dropout=dropout,
            activation=activation,
        )
        self.norm1 = LayerNorm(d_model, eps=1e-6)
        self.norm2 = LayerNorm(d_model, eps=1e-6)
        self.norm3 = LayerNorm(d_model, eps=1e-6)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _sublayer(self, x, norm, dropout, fn):
        """Residual branch with pre- or post-norm."""
        if self.normalize_before:
            return x + dropout(fn(norm(x)))
        return norm(x + dropout(fn(x)))

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_lengths: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, None, None]:
        """Decodes a whole target sequence (teacher forcing).

        Arguments
        ---------
        tgt : torch.Tensor
            Target embeddings, [batch, tgt_len, d_model].
        memory : torch.Tensor
            Encoder output, [batch, time, d_model].
        memory_lengths : torch.Tensor, optional
            Relative lengths of the memory, [batch].

        Returns
        -------
        output : torch.Tensor
            [batch, tgt_len, d_model].
        self_attn, cross_attn : None
            No attention weights.
        """
        x = self._sublayer(tgt, self.norm1, self.dropout1, self.self_mamba)
        x = self._sublayer(
            x,
            self.norm2,
            self.dropout2,
            lambda t: self.cross_mamba(
                t, memory, memory_lengths=memory_lengths
            ),
        )
        x = self._sublayer(x, self.norm3, self.dropout3, self.pos_ffn)
        return x, None, None

    def init_cache(
        self, memory: torch.Tensor, memory_lengths: Optional[torch.Tensor]
    ) -> Tuple[MambaCache, MambaCache]:
        """Consumes the memory into the CrossMamba state.

        Arguments
        ---------
        memory : torch.Tensor
            Encoder output, [batch, time, d_model].
        memory_lengths : torch.Tensor, optional
            Relative lengths, [batch].

        Returns
        -------
        self_cache, cross_cache : MambaCache
            Empty target state and the primed cross state.
        """
        batch = memory.shape[0]
        self_cache = self.self_mamba.init_cache(batch, memory.device)
        cross_cache = self.cross_mamba.init_cache(batch, memory.device)
        # Mamba.forward on the memory alone (CrossMamba's own first call
        # would also need the first target frame); the padded frames leave
        # the state untouched.
        Mamba.forward(self.cross_mamba, memory, memory_lengths, cross_cache)
        cross_cache.primed = True
        return self_cache, cross_cache

    def step(
        self,
        tgt: torch.Tensor,
        self_cache: MambaCache,
        cross_cache: MambaCache,
    ) -> torch.Tensor:
        """Decodes one target position, updating the caches in place.

        Arguments
        ---------
        tgt : torch.Tensor
            Embedding of the newest token, [batch, 1, d_model].
        self_cache, cross_cache : MambaCache
            From :meth:`init_cache` or the previous step.

        Returns
        -------
        torch.Tensor
            [batch, 1, d_model].
        """
        x = self._sublayer(
            tgt,
            self.norm1,
            self.dropout1,
            lambda t: self.self_mamba(t, cache=self_cache),
        )
        x = self._sublayer(
            x,
            self.norm2,
            self.dropout2,
            lambda t: self.cross_mamba(t, None, cache=cross_cache),
        )
        return self._sublayer(x, self.norm3, self.dropout3, self.pos_ffn)


class MambaDecoder(NormedLayerStack):
    """Stack of :class:`MambaDecoderLayer` with a final LayerNorm, with the
    interface of SpeechBrain's ``TransformerDecoder`` plus recurrent
    decoding.

    Arguments
    ---------
    num_layers : int
        Number of layers.
    d_model : int
        Model dimension.
    d_ffn : int
        Hidden size of the feed-forward modules.
    activation : type
        Activation of the feed-forward modules.
    dropout : float
        Dropout rate.
    normalize_before : bool
        Pre-norm layers.
    mamba_config : dict, optional
        Arguments of the Mamba mixers.

    Example
    -------
    >>> dec = MambaDecoder(2, 16, 32, mamba_config={"d_state": 4}).eval()
    >>> tgt, memory = torch.rand(2, 5, 16), torch.rand(2, 7, 16)
    >>> full, _, _ = dec(tgt, memory)
    >>> cache = dec.init_cache(memory)
    >>> steps = [dec.step(tgt[:, t : t + 1], cache)[0] for t in range(5)]
    >>> torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)
    True
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        activation: type = nn.ReLU,
        dropout: float = 0.0,
        normalize_before: bool = True,
        mamba_config: Optional[Dict[str, Any]] = None,
    ):
        make_layer = partial(
            MambaDecoderLayer,
            d_model=d_model,
            d_ffn=d_ffn,
            activation=activation,
            dropout=dropout,
            normalize_before=normalize_before,
            mamba_config=mamba_config,
        )
        super().__init__(num_layers, d_model, make_layer, norm_eps=1e-6)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        tgt_mask: Optional[torch.Tensor] = None,
        memory_mask: Optional[torch.Tensor] = None,
        tgt_key_padding_mask: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs_tgt: Optional[torch.Tensor] = None,
        pos_embs_src: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, List[None], List[None]]:
        """Decodes a whole (right-padded) target sequence.

        Arguments
        ---------
        tgt : torch.Tensor
            Target embeddings, [batch, tgt_len, d_model].
        memory : torch.Tensor
            Encoder output, [batch, time, d_model].
        tgt_mask : torch.Tensor, optional
            Ignored: the decoder is causal by construction.
        memory_mask : torch.Tensor, optional
            Not supported (must be None).
        tgt_key_padding_mask : torch.Tensor, optional
            Ignored: target padding only follows the real tokens, which a
            causal decoder never sees.
        memory_key_padding_mask : torch.Tensor, optional
            Boolean, [batch, time], True on padded encoder frames.
        pos_embs_tgt, pos_embs_src : torch.Tensor, optional
            Ignored.

        Returns
        -------
        output : torch.Tensor
            [batch, tgt_len, d_model].
        self_attns, cross_attns : list
            One None per layer (no attention weights).
        """
        if memory_mask is not None:
            raise ValueError("memory_mask is not supported by MambaDecoder")
        memory_lengths = key_padding_mask_to_lengths(memory_key_padding_mask)
        output, _, _ = self.run_layers(
            tgt, lambda _, layer, x: (layer(x, memory, memory_lengths)[0], None)
        )
        nones = [None] * len(self.layers)
        return output, nones, list(nones)

    def init_cache(
        self,
        memory: torch.Tensor,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> MambaDecoderCache:
        """Runs the memory through every CrossMamba once.

        Arguments
        ---------
        memory : torch.Tensor
            Encoder output, [batch, time, d_model].
        memory_key_padding_mask : torch.Tensor, optional
            Boolean, [batch, time], True on padded frames.

        Returns
        -------
        MambaDecoderCache
            State before the first target token.
        """
        memory_lengths = key_padding_mask_to_lengths(memory_key_padding_mask)
        caches = [
            layer.init_cache(memory, memory_lengths) for layer in self.layers
        ]
        return MambaDecoderCache(
            [c[0] for c in caches], [c[1] for c in caches], position=0
        )

    def step(
        self, tgt: torch.Tensor, cache: MambaDecoderCache
    ) -> Tuple[torch.Tensor, MambaDecoderCache]:
        """Decodes one position for every hypothesis.

        Arguments
        ---------
        tgt : torch.Tensor
            Embedding of the newest token, [batch, 1, d_model].
        cache : MambaDecoderCache
            Updated in place (and returned).

        Returns
        -------
        output : torch.Tensor
            [batch, 1, d_model].
        cache : MambaDecoderCache
            The updated cache.
        """
        if tgt.dim() != 3 or tgt.shape[1] != 1:
            raise ValueError(
                f"step takes [batch, 1, d_model]; got {tuple(tgt.shape)}"
            )
        if tgt.shape[0] != cache.batch_size:
            raise ValueError(
                f"cache holds {cache.batch_size} hypotheses but the input "
                f"has {tgt.shape[0]}"
            )
        output, _, _ = self.run_layers(
            tgt,
            lambda i, layer, x: (
                layer.step(x, cache.self_caches[i], cache.cross_caches[i]),
                None,
            ),
        )
        cache.position += 1
        return output, cache
