"""The autoregressive (AR) codec language model of VALL-E / VALL-M.

Over the packed sequence ``[phonemes ; BOS, c_1 ... c_T]`` it predicts the
first-codebook tokens ``c_1 ... c_T`` and an end-of-sequence token. With
``backbone="transformer"`` (VALL-E) the phonemes attend to each other
bidirectionally and the audio attends causally to the phonemes and the
earlier audio; generation keeps a key/value cache. With
``backbone="mamba"`` (VALL-M) a unidirectional Mamba stack reads the whole
sequence left to right (the Speech Slytherin setup), optionally after a
bidirectional Mamba phoneme encoder that restores the bidirectional text
context; generation carries the recurrent state, O(1) per token.

Author
------
speechbrain-mamba developers
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from speechbrain_mamba.lobes.tts.common import (
    IGNORE_INDEX,
    backbone_defaults,
    check_tokens,
    frames_of,
    prefix_lm_mask,
)
from speechbrain_mamba.lobes.tts.inputs import CodecLMInputs
from speechbrain_mamba.lobes.tts.packing import pack_segments, unpack_second
from speechbrain_mamba.lobes.tts.step_graphs import ARStepGraphs
from speechbrain_mamba.lobes.tts.transformer import KVCache, TransformerStack
from speechbrain_mamba.nnet import MambaCache, MambaStack
from speechbrain_mamba.utils.bucketed_graphs import SelfGraphedModule


@dataclass
class ARDecodingState:
    """What :meth:`CodecAR.step` needs to continue a generation.

    Arguments
    ---------
    cache : KVCache or list of MambaCache
        Key/value cache (Transformer) or recurrent states (Mamba).
    next_position : torch.Tensor
        Audio position of the next input token of each item, [batch].
    """

    cache: Union[KVCache, List[MambaCache]]
    next_position: torch.Tensor

    def reorder(self, index: torch.Tensor) -> "ARDecodingState":
        """Selects (and repeats) batch entries, e.g. to follow beams."""
        if isinstance(self.cache, KVCache):
            cache = self.cache.reorder(index)
        else:
            cache = [c.reorder(index) for c in self.cache]
        return ARDecodingState(cache, self.next_position[index])


class CodecAR(CodecLMInputs, SelfGraphedModule):
    """AR model over ``[phonemes ; first-codebook tokens]``.

    Token ids: audio tokens are ``0 .. codebook_size - 1``, EOS is
    ``codebook_size`` (predicted) and BOS ``codebook_size + 1`` (input
    only). Phoneme id 0 is padding.

    Arguments
    ---------
    num_symbols : int
        Size of the phoneme symbol table (with padding at 0).
    codebook_size : int
        Entries of the codec's first codebook.
    d_model : int
        Model width.
    num_layers : int
        Layers of the backbone.
    backbone : str
        "transformer" (VALL-E) or "mamba" (VALL-M).
    nhead : int
        Attention heads (Transformer).
    d_ffn : int, optional
        Feed-forward size (Transformer), default 4 * d_model.
    dropout : float
        Dropout of embeddings and Transformer layers.
    text_encoder_layers : int
        Mamba only: bidirectional Mamba layers encoding the phonemes before
        the unidirectional stack (0: none, the paper's setup).
    d_state, d_conv, expand : int
        Mamba mixer sizes.
    positional : bool, optional
        Add sinusoidal positions to text and audio; default True for the
        Transformer and False for Mamba.
    norm_eps : float
        Epsilon of the norms.
    mamba_backend : str
        Backend of the Mamba layers ("auto", "torch", "cuda").
    cuda_graphs : bool
        On a GPU, the Mamba stacks replay CUDA graphs they record themselves
        (training and inference calls; one per batch size and bucket of
        the length, same outputs and gradients as the plain call; see
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`),
        and VALL-M's :meth:`step` replays a graph of the whole decoding
        step it records itself (one per batch size, dtypes and autocast;
        see :mod:`~speechbrain_mamba.lobes.tts.step_graphs`). The attribute
        ``cuda_graphs`` switches the step graphs (each stack has its own);
        it is always False for the Transformer, whose growing key/value
        cache a graph cannot hold. A runtime option, not part of
        ``config``.
    max_cuda_graphs : int
        Most step graphs :meth:`step` keeps (other keys step plainly).

    Example
    -------
    >>> ar = CodecAR(num_symbols=10, codebook_size=16, d_model=32,
    ...              num_layers=2, backbone="mamba", d_state=4).eval()
    >>> phonemes = torch.randint(1, 10, (2, 5))
    >>> codes = torch.randint(0, 16, (2, 7))
    >>> ar(phonemes, codes).shape
    torch.Size([2, 8, 17])
    >>> logits, state = ar.start(phonemes, torch.tensor([5, 5]),
    ...                          codes[:, :3], torch.tensor([3, 3]))
    >>> torch.allclose(logits, ar(phonemes, codes)[:, 3], atol=1e-4)
    True
    """

    def __init__(
        self,
        num_symbols: int,
        codebook_size: int = 1024,
        d_model: int = 1024,
        num_layers: int = 12,
        backbone: str = "transformer",
        nhead: int = 16,
        d_ffn: Optional[int] = None,
        dropout: float = 0.1,
        text_encoder_layers: int = 0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        positional: Optional[bool] = None,
        norm_eps: float = 1e-5,
        mamba_backend: str = "auto",
        cuda_graphs: bool = True,
        max_cuda_graphs: int = 16,
    ):
        super().__init__()
        positional, d_ffn = backbone_defaults(
            backbone, d_model, positional, d_ffn
        )
        if text_encoder_layers and backbone != "mamba":
            raise ValueError(
                "text_encoder_layers is a VALL-M option (backbone='mamba'); "
                "the Transformer already reads the phonemes bidirectionally"
            )
        #: Constructor arguments (what export writes into the hub YAML).
        self.config: Dict[str, Any] = dict(
            num_symbols=num_symbols,
            codebook_size=codebook_size,
            d_model=d_model,
            num_layers=num_layers,
            backbone=backbone,
            nhead=nhead,
            d_ffn=d_ffn,
            dropout=dropout,
            text_encoder_layers=text_encoder_layers,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            positional=positional,
            norm_eps=norm_eps,
            mamba_backend=mamba_backend,
        )
        self.codebook_size = codebook_size
        self.eos_index = codebook_size
        self.bos_index = codebook_size + 1
        self.backbone_type = backbone
        self.init_cuda_graphs(cuda_graphs, max_cuda_graphs, 0)
        self._step_graphs: Optional[ARStepGraphs] = None
        # audio tokens, EOS and BOS
        self.build_inputs(
            num_symbols, codebook_size + 2, d_model, dropout, positional
        )
        mixer = dict(
            d_state=d_state, d_conv=d_conv, expand=expand, backend=mamba_backend
        )
        self.text_encoder = None
        if backbone == "transformer":
            self.backbone = TransformerStack(
                d_model, num_layers, nhead, d_ffn, dropout, norm_eps=norm_eps
            )
        else:
            if text_encoder_layers:
                self.text_encoder = MambaStack(
                    d_model,
                    text_encoder_layers,
                    bidirectional=True,
                    norm_eps=norm_eps,
                    cuda_graphs=cuda_graphs,
                    **mixer,
                )
            self.backbone = MambaStack(
                d_model,
                num_layers,
                bidirectional=False,
                norm_eps=norm_eps,
                cuda_graphs=cuda_graphs,
                **mixer,
            )
        self.head = nn.Linear(d_model, codebook_size + 1)

    # -- embeddings ---------------------------------------------------------
    def _embed_text(
        self, phonemes: torch.Tensor, frames: torch.Tensor
    ) -> torch.Tensor:
        x = self.embed_phonemes(phonemes)
        if self.text_encoder is not None:
            x = self.text_encoder(x, lengths=frames.float() / x.shape[1])
        return x

    def _embed_audio(
        self, tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return self.prepare_audio(self.audio_embedding(tokens), positions)

    def _embed_after_bos(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeds ``[BOS, tokens]`` ([batch, frames]) at audio positions
        0 .. frames."""
        bos = torch.full(
            (tokens.shape[0], 1),
            self.bos_index,
            dtype=torch.long,
            device=tokens.device,
        )
        audio_in = torch.cat([bos, tokens.long()], dim=1)
        positions = torch.arange(audio_in.shape[1], device=tokens.device)
        return self._embed_audio(audio_in, positions[None, :])

    def _run(
        self,
        text: torch.Tensor,
        text_frames: torch.Tensor,
        audio: torch.Tensor,
        audio_frames: torch.Tensor,
        cache=None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Backbone over the packed sequence; returns it and total frames."""
        x, total = pack_segments(text, text_frames, audio, audio_frames)
        time = x.shape[1]
        if self.backbone_type == "transformer":
            mask = prefix_lm_mask(text_frames, total, time)
            h = self.backbone(x, mask, cache=cache)
            if cache is not None:  # the padding of a batch stays hidden
                positions = torch.arange(time, device=x.device)
                cache.valid = positions[None, :] < total[:, None]
        else:
            h = self.backbone(x, lengths=total.float() / time, cache=cache)
        return h, total

    # -- training -----------------------------------------------------------
    def forward(
        self,
        phonemes: torch.Tensor,
        codes: torch.Tensor,
        phoneme_lens: Optional[torch.Tensor] = None,
        code_lens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced logits of the next first-codebook token.

        Arguments
        ---------
        phonemes : torch.Tensor
            Phoneme ids, [batch, phonemes] (long).
        codes : torch.Tensor
            First-codebook tokens, [batch, frames] (long).
        phoneme_lens, code_lens : torch.Tensor, optional
            Relative lengths in (0, 1] of each item, [batch].

        Returns
        -------
        torch.Tensor
            [batch, frames + 1, codebook_size + 1]: position t predicts
            token t (position ``frames`` of each item predicts EOS); see
            :meth:`targets`.
        """
        check_tokens(codes, "codes", self.codebook_size, 2)
        time = codes.shape[1]
        text_frames, code_frames = self.segment_frames(
            phonemes, codes, phoneme_lens, code_lens
        )
        text = self._embed_text(phonemes, text_frames)
        audio = self._embed_after_bos(codes)
        h, _ = self._run(text, text_frames, audio, code_frames + 1)
        return self.head(unpack_second(h, text_frames, time + 1))

    def targets(
        self, codes: torch.Tensor, code_lens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Targets matching :meth:`forward`: the tokens, then EOS, then
        ``IGNORE_INDEX`` (-100) on the padding.

        Arguments
        ---------
        codes : torch.Tensor
            First-codebook tokens, [batch, frames].
        code_lens : torch.Tensor, optional
            Relative lengths, [batch].

        Returns
        -------
        torch.Tensor
            [batch, frames + 1] (long).
        """
        batch, time = codes.shape
        frames = frames_of(code_lens, batch, time, codes.device)
        out = torch.cat([codes, torch.zeros_like(codes[:, :1])], dim=1)
        positions = torch.arange(time + 1, device=codes.device)[None, :]
        out = torch.where(positions == frames[:, None], self.eos_index, out)
        return torch.where(positions > frames[:, None], IGNORE_INDEX, out)

    # -- generation ---------------------------------------------------------
    def start(
        self,
        phonemes: torch.Tensor,
        phoneme_frames: torch.Tensor,
        prompt: torch.Tensor,
        prompt_frames: torch.Tensor,
    ) -> Tuple[torch.Tensor, ARDecodingState]:
        """Reads the phonemes and the prompt's first-codebook tokens and
        returns the logits of the first new token with the decoding state.

        Arguments
        ---------
        phonemes : torch.Tensor
            [batch, phonemes]: prompt transcript and target text.
        phoneme_frames : torch.Tensor
            Valid phonemes per item, [batch] (long).
        prompt : torch.Tensor
            Prompt tokens, [batch, frames] (may have 0 frames).
        prompt_frames : torch.Tensor
            Valid prompt frames per item, [batch] (long, may be 0).

        Returns
        -------
        logits : torch.Tensor
            [batch, codebook_size + 1].
        state : ARDecodingState
            For :meth:`step`.
        """
        check_tokens(prompt, "prompt", self.codebook_size, 2)
        batch = phonemes.shape[0]
        text = self._embed_text(phonemes, phoneme_frames)
        audio = self._embed_after_bos(prompt)
        if self.backbone_type == "transformer":
            cache = KVCache(len(self.backbone.layers))
        else:
            cache = self.backbone.init_cache(batch)
        h, total = self._run(
            text, phoneme_frames, audio, prompt_frames + 1, cache
        )
        last = h[torch.arange(batch, device=h.device), total - 1]
        state = ARDecodingState(cache, (prompt_frames + 1).clone())
        return self.head(last), state

    def step(
        self, tokens: torch.Tensor, state: ARDecodingState
    ) -> torch.Tensor:
        """Feeds one token per item and returns the next logits.

        With ``cuda_graphs`` on, a VALL-M step on a GPU (fused decoding
        kernels: no gradient, batch <= 8) replays a CUDA graph the model
        records at the first such step (one launch instead of about a
        hundred; the same values). The state's tensors are then replaced by
        the recording's own tensors, holding the state's values (copied
        once per generation, see
        :func:`~speechbrain_mamba.lobes.tts.step_graphs.bind_state`): read
        them from ``state``, not from references kept earlier.

        Arguments
        ---------
        tokens : torch.Tensor
            Last generated token of each item, [batch] (long, < codebook
            size + 1; EOS may be fed for finished items).
        state : ARDecodingState
            From :meth:`start`, updated in place.

        Returns
        -------
        torch.Tensor
            [batch, codebook_size + 1], a tensor of its own.
        """
        if (
            self.uses_cuda_graphs()
            and self.max_cuda_graphs
            and tokens.is_cuda
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        ):
            if self._step_graphs is None:
                self._step_graphs = ARStepGraphs(self, self.max_cuda_graphs)
            return self._step_graphs(tokens, state)
        return self._plain_step(tokens, state)

    def _plain_step(
        self, tokens: torch.Tensor, state: ARDecodingState
    ) -> torch.Tensor:
        """The decoding step that :meth:`step` records (its plain call)."""
        x = self._embed_audio(tokens[:, None], state.next_position[:, None])
        if self.backbone_type == "transformer":
            cache = state.cache
            new = torch.ones_like(cache.valid[:, :1])
            mask = torch.cat([cache.valid, new], dim=1)[:, None, :]
            h = self.backbone(x, mask, cache=cache)
        else:
            h = self.backbone(x, cache=state.cache)
        state.next_position += 1  # in place: a CUDA graph can replay it
        return self.head(h[:, 0])

    # -- own CUDA graphs of the step ----------------------------------------
    @property
    def cuda_graphs(self) -> bool:
        """Whether :meth:`step` replays its own CUDA graphs (never for the
        Transformer)."""
        return self._cuda_graphs and self.backbone_type == "mamba"

    @cuda_graphs.setter
    def cuda_graphs(self, value: bool) -> None:
        self._cuda_graphs = bool(value)

    @property
    def num_cuda_graphs(self) -> int:
        """Number of recorded step graphs (the stacks count theirs)."""
        steps = 0 if self._step_graphs is None else self._step_graphs.num_graphs
        return super().num_cuda_graphs + steps

    def drop_cuda_graphs(self) -> None:
        """Forgets the recorded step graphs (a state bound to one keeps its
        tensors; the next steps record again)."""
        super().drop_cuda_graphs()
        self._step_graphs = None

    def _replicate_for_data_parallel(self):
        """DataParallel replicas step plainly (their parameters are copies,
        new at each call)."""
        replica = super()._replicate_for_data_parallel()
        replica._step_graphs = None
        return replica

    def __getstate__(self):
        """Copies and pickles leave the step graphs out."""
        state = super().__getstate__()
        state["_step_graphs"] = None
        return state
