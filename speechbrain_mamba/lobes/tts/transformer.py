"""A small pre-norm Transformer with key/value caching and optional
adaptive LayerNorm, for the VALL-E codec language models.

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with a
boolean mask (True: the query may attend to the key), so one layer serves
the AR model (bidirectional over the phonemes, causal over the audio), the
NAR model (full context) and step-by-step decoding with a
:class:`KVCache`.

Author
------
speechbrain-mamba developers
"""

import contextlib
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from speechbrain_mamba.lobes.tts.adaptive_norm import AdaptiveLayerNorm

#: Attention kernels of an eager decoding step (one query against the
#: cache). cuDNN's is left out: it builds an execution plan for every new
#: key length, about 4 ms of host time per layer and step on an H200
#: (VALL-E's eager step: 47 ms per token with it, 5.7 ms without). Steps
#: recorded in a CUDA graph keep it (there the plan is built once, and its
#: kernel is the fastest: 1.2 against 4.6 ms per token at 60 s).
DECODING_ATTENTION = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


class KVCache:
    """Keys and values of every layer, for step-by-step decoding.

    The stack updates the cache in place: each call writes the keys and
    values of its new frames into preallocated buffers (grown by doubling,
    so a decoding step copies nothing), and ``valid`` records which cached
    frames may be attended to (False for the padding of a batched prefill).

    Arguments
    ---------
    num_layers : int
        Number of layers of the stack.

    Example
    -------
    >>> cache = KVCache(2)
    >>> len(cache)
    0
    """

    def __init__(self, num_layers: int):
        self.keys: List[Optional[torch.Tensor]] = [None] * num_layers
        self.values: List[Optional[torch.Tensor]] = [None] * num_layers
        self._valid: Optional[torch.Tensor] = None
        self.length = 0

    def __len__(self) -> int:
        """Number of cached frames."""
        return self.length

    @property
    def valid(self) -> Optional[torch.Tensor]:
        """[batch, cached frames] bool: frames that may be attended to."""
        if self._valid is None:
            return None
        return self._valid[:, : self.length]

    @valid.setter
    def valid(self, mask: torch.Tensor) -> None:
        if mask.shape[1] != self.length:
            raise ValueError(
                f"valid must cover the {self.length} cached frames, got "
                f"shape {tuple(mask.shape)}"
            )
        self._valid[:, : self.length] = mask

    @staticmethod
    def _write(buffer, new, start):
        end = start + new.shape[2]
        if buffer is None or buffer.shape[2] < end:
            capacity = max(
                end, 64, 0 if buffer is None else 2 * buffer.shape[2]
            )
            grown = new.new_empty(*new.shape[:2], capacity, new.shape[3])
            if buffer is not None:
                grown[:, :, :start] = buffer[:, :, :start]
            buffer = grown
        buffer[:, :, start:end] = new
        return buffer

    def update(
        self, index: int, keys: torch.Tensor, values: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stores layer ``index``'s keys and values of the new frames
        ([batch, heads, new, d_head]) after the cached ones and returns all
        of them (views of the buffers)."""
        self.keys[index] = self._write(self.keys[index], keys, self.length)
        self.values[index] = self._write(
            self.values[index], values, self.length
        )
        end = self.length + keys.shape[2]
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]

    def advance(self, new_valid: torch.Tensor) -> None:
        """Marks the frames of this call ([batch, new] bool) as cached."""
        self._valid = self._write(
            None if self._valid is None else self._valid[:, None, :, None],
            new_valid[:, None, :, None],
            self.length,
        )[:, 0, :, 0]
        self.length += new_valid.shape[1]

    def reorder(self, index: torch.Tensor) -> "KVCache":
        """Selects (and repeats) batch entries, e.g. to follow beams.

        Arguments
        ---------
        index : torch.Tensor
            Long tensor of batch indices.

        Returns
        -------
        KVCache
            A new cache (this one is left unchanged).
        """
        out = KVCache(len(self.keys))
        pick = lambda t: None if t is None else t.index_select(0, index)
        out.keys = [pick(k) for k in self.keys]
        out.values = [pick(v) for v in self.values]
        out._valid = pick(self._valid)
        out.length = self.length
        return out


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: self-attention and feed-forward blocks.

    Arguments
    ---------
    d_model : int
        Feature size.
    nhead : int
        Number of attention heads.
    d_ffn : int
        Hidden size of the feed-forward block.
    dropout : float
        Dropout of attention weights and residual branches.
    num_conditions : int, optional
        When given, both norms are :class:`AdaptiveLayerNorm` over that many
        conditions (and ``condition`` must be passed to forward).
    norm_eps : float
        Epsilon of the norms.

    Example
    -------
    >>> layer = TransformerLayer(16, nhead=2, d_ffn=32)
    >>> x = torch.randn(2, 5, 16)
    >>> y = layer(x, torch.ones(2, 5, 5, dtype=torch.bool))
    >>> y.shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        d_ffn: int,
        dropout: float = 0.0,
        num_conditions: Optional[int] = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if d_model % nhead:
            raise ValueError(
                f"d_model={d_model} must be divisible by nhead={nhead}"
            )
        self.d_model = d_model
        self.nhead = nhead
        self.dropout = dropout
        self.adaptive = num_conditions is not None
        if self.adaptive:
            self.norm1 = AdaptiveLayerNorm(d_model, num_conditions, norm_eps)
            self.norm2 = AdaptiveLayerNorm(d_model, num_conditions, norm_eps)
        else:
            self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
            self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ffn),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ffn, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def _norm(self, norm: nn.Module, x: torch.Tensor, condition):
        return norm(x, condition) if self.adaptive else norm(x)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        condition: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        index: int = 0,
    ) -> torch.Tensor:
        """Runs the layer.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        mask : torch.Tensor
            Boolean [batch, time, cached + time]: True where a query may
            attend to a key.
        condition : torch.Tensor, optional
            [batch] condition indices (adaptive norms only).
        cache : KVCache, optional
            Keys and values of earlier frames; this layer's new keys and
            values are written into it.
        index : int
            Position of the layer in the stack (its slot in the cache).

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        if self.adaptive and condition is None:
            raise ValueError("this layer has adaptive norms: pass condition")
        batch, time, _ = x.shape
        head = self.d_model // self.nhead
        h = self._norm(self.norm1, x, condition)
        q, k, v = (
            self.qkv(h)
            .view(batch, time, 3, self.nhead, head)
            .permute(2, 0, 3, 1, 4)
        )
        if cache is not None:
            k, v = cache.update(index, k, v)
        # (in a CUDA graph the plan is built once, at capture: cuDNN allowed)
        decoding = (
            cache is not None
            and time == 1
            and x.is_cuda
            and not torch.cuda.is_current_stream_capturing()
        )
        with (
            sdpa_kernel(DECODING_ATTENTION)
            if decoding
            else contextlib.nullcontext()
        ):
            attn = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask[:, None],
                dropout_p=self.dropout if self.training else 0.0,
            )
        attn = attn.transpose(1, 2).reshape(batch, time, self.d_model)
        x = x + self.drop(self.out_proj(attn))
        x = x + self.drop(self.ffn(self._norm(self.norm2, x, condition)))
        return x


class TransformerStack(nn.Module):
    """A stack of pre-norm Transformer layers with a final norm and an
    optional key/value cache.

    Arguments
    ---------
    d_model : int
        Feature size.
    num_layers : int
        Number of layers.
    nhead : int
        Attention heads.
    d_ffn : int
        Feed-forward hidden size.
    dropout : float
        Dropout.
    num_conditions : int, optional
        Adaptive LayerNorm over that many conditions (NAR stages).
    norm_eps : float
        Epsilon of the norms.

    Example
    -------
    >>> stack = TransformerStack(16, 2, nhead=2, d_ffn=32).eval()
    >>> x = torch.randn(1, 6, 16)
    >>> causal = torch.ones(6, 6, dtype=torch.bool).tril()[None]
    >>> full = stack(x, causal)
    >>> cache = KVCache(2)
    >>> first = stack(x[:, :4], causal[:, :4, :4], cache=cache)
    >>> last = stack(x[:, 4:], causal[:, 4:], cache=cache)
    >>> torch.allclose(torch.cat([first, last], 1), full, atol=1e-5)
    True
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        nhead: int,
        d_ffn: int,
        dropout: float = 0.0,
        num_conditions: Optional[int] = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d_model = d_model
        self.layers = nn.ModuleList(
            TransformerLayer(
                d_model, nhead, d_ffn, dropout, num_conditions, norm_eps
            )
            for _ in range(num_layers)
        )
        self.adaptive = num_conditions is not None
        if self.adaptive:
            self.norm_f = AdaptiveLayerNorm(d_model, num_conditions, norm_eps)
        else:
            self.norm_f = nn.LayerNorm(d_model, eps=norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        condition: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> torch.Tensor:
        """Runs the stack.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        mask : torch.Tensor
            Boolean [batch, time, cached + time] attention mask.
        condition : torch.Tensor, optional
            [batch] condition indices (adaptive norms).
        cache : KVCache, optional
            Keys and values of earlier frames; updated in place with this
            call's frames (marked valid).

        Returns
        -------
        torch.Tensor
            [batch, time, d_model].
        """
        batch, time, _ = x.shape
        past_len = 0 if cache is None else len(cache)
        if mask.shape != (batch, time, past_len + time):
            raise ValueError(
                f"mask must be [batch={batch}, time={time}, "
                f"keys={past_len + time}], got {tuple(mask.shape)}"
            )
        for index, layer in enumerate(self.layers):
            x = layer(x, mask, condition, cache, index)
        if cache is not None:
            cache.advance(
                torch.ones(batch, time, dtype=torch.bool, device=x.device)
            )
        if self.adaptive:
            return self.norm_f(x, condition)
        return self.norm_f(x)
