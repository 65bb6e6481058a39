"""The non-autoregressive (NAR) codec language model of VALL-E / VALL-M.

Stage ``j`` (1 .. num_codebooks - 1) predicts codebook ``j`` of the target
frames from the sum of the embeddings of codebooks ``< j``, with full
context over ``[phonemes ; prompt ; target]``: the prompt frames carry the
sum of all their codebooks. The stage enters every norm of the backbone
through adaptive LayerNorm. The backbone is a Transformer (VALL-E) or a
bidirectional Mamba stack (VALL-M).

Author
------
speechbrain-mamba developers
"""

from typing import Any, Dict, Optional

import torch
from torch import nn

from speechbrain_mamba.lobes.tts.common import (
    backbone_defaults,
    check_tokens,
    padding_mask,
)
from speechbrain_mamba.lobes.tts.inputs import CodecLMInputs
from speechbrain_mamba.lobes.tts.mamba_backbone import AdaptiveMambaStack
from speechbrain_mamba.lobes.tts.packing import pack_segments, unpack_second
from speechbrain_mamba.lobes.tts.transformer import TransformerStack


class CodecNAR(CodecLMInputs):
    """NAR model predicting codebooks 2 .. N from codebook 1.

    Arguments
    ---------
    num_symbols : int
        Size of the phoneme symbol table (with padding at 0).
    codebook_size : int
        Entries per codebook.
    num_codebooks : int
        Codebooks of the codec (at least 2).
    d_model : int
        Model width.
    num_layers : int
        Layers of the backbone.
    backbone : str
        "transformer" (VALL-E) or "mamba" (VALL-M, bidirectional).
    nhead : int
        Attention heads (Transformer).
    d_ffn : int, optional
        Feed-forward size (Transformer), default 4 * d_model.
    dropout : float
        Dropout of embeddings and Transformer layers.
    d_state, d_conv, expand : int
        Mamba mixer sizes.
    positional : bool, optional
        Sinusoidal positions on text and audio; default True for the
        Transformer, False for Mamba.
    norm_eps : float
        Epsilon of the norms.
    mamba_backend : str
        Backend of the Mamba layers.
    cuda_graphs : bool
        The Mamba stacks replay CUDA graphs they record themselves on a GPU
        (training and inference calls; one per batch size and bucket of
        the length, same outputs and gradients as the plain call; see
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
        A runtime option, not part of ``config``.

    Example
    -------
    >>> nar = CodecNAR(10, codebook_size=16, num_codebooks=4, d_model=32,
    ...                num_layers=1, backbone="mamba", d_state=4)
    >>> phonemes = torch.randint(1, 10, (2, 5))
    >>> codes = torch.randint(0, 16, (2, 4, 9))
    >>> logits = nar(phonemes, codes, prompt_frames=torch.tensor([3, 4]),
    ...              stage=torch.tensor([1, 3]))
    >>> logits.shape
    torch.Size([2, 9, 16])
    """

    def __init__(
        self,
        num_symbols: int,
        codebook_size: int = 1024,
        num_codebooks: int = 8,
        d_model: int = 1024,
        num_layers: int = 12,
        backbone: str = "transformer",
        nhead: int = 16,
        d_ffn: Optional[int] = None,
        dropout: float = 0.1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        positional: Optional[bool] = None,
        norm_eps: float = 1e-5,
        mamba_backend: str = "auto",
        cuda_graphs: bool = True,
    ):
        super().__init__()
        positional, d_ffn = backbone_defaults(
            backbone, d_model, positional, d_ffn
        )
        if num_codebooks < 2:
            raise ValueError(
                f"the NAR model needs num_codebooks >= 2, got {num_codebooks}"
            )
        #: Constructor arguments (what export writes into the hub YAML).
        self.config: Dict[str, Any] = dict(
            num_symbols=num_symbols,
            codebook_size=codebook_size,
            num_codebooks=num_codebooks,
            d_model=d_model,
            num_layers=num_layers,
            backbone=backbone,
            nhead=nhead,
            d_ffn=d_ffn,
            dropout=dropout,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            positional=positional,
            norm_eps=norm_eps,
            mamba_backend=mamba_backend,
        )
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.num_stages = num_codebooks - 1
        self.backbone_type = backbone
        # one audio table, codebook k at rows k * codebook_size ...
        self.build_inputs(
            num_symbols,
            num_codebooks * codebook_size,
            d_model,
            dropout,
            positional,
        )
        if backbone == "transformer":
            self.backbone = TransformerStack(
                d_model,
                num_layers,
                nhead,
                d_ffn,
                dropout,
                num_conditions=self.num_stages,
                norm_eps=norm_eps,
            )
        else:
            self.backbone = AdaptiveMambaStack(
                d_model,
                num_layers,
                num_conditions=self.num_stages,
                bidirectional=True,
                norm_eps=norm_eps,
                d_state=d_state,
                d_conv=d_conv,
                expand=expand,
                backend=mamba_backend,
                cuda_graphs=cuda_graphs,
            )
        # output layer of each stage, one tensor so that every stage's
        # weights take part in each step (no unused parameters under DDP)
        self.head_weight = nn.Parameter(
            torch.empty(self.num_stages, codebook_size, d_model)
        )
        self.head_bias = nn.Parameter(
            torch.zeros(self.num_stages, codebook_size)
        )
        nn.init.normal_(self.head_weight, std=d_model**-0.5)

    def audio_inputs(
        self,
        codes: torch.Tensor,
        prompt_frames: torch.Tensor,
        stage: torch.Tensor,
    ) -> torch.Tensor:
        """Sum of codebook embeddings: all codebooks on prompt frames,
        codebooks ``< stage`` elsewhere.

        Arguments
        ---------
        codes : torch.Tensor
            [batch, num_codebooks, frames] (long).
        prompt_frames : torch.Tensor
            Prompt frames of each item, [batch].
        stage : torch.Tensor
            Codebook each item predicts, [batch], in 1 .. num_codebooks - 1.

        Returns
        -------
        torch.Tensor
            [batch, frames, d_model].
        """
        frames = codes.shape[-1]
        in_prompt = (
            torch.arange(frames, device=codes.device)[None, :]
            < prompt_frames[:, None]
        )
        x = None
        for k in range(self.num_codebooks):
            use = in_prompt | (stage[:, None] > k)
            emb = self.audio_embedding(codes[:, k] + k * self.codebook_size)
            emb = emb * use[..., None].to(emb.dtype)
            x = emb if x is None else x + emb
        return x

    def forward(
        self,
        phonemes: torch.Tensor,
        codes: torch.Tensor,
        prompt_frames: torch.Tensor,
        stage: torch.Tensor,
        phoneme_lens: Optional[torch.Tensor] = None,
        code_lens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits of codebook ``stage`` at every audio frame.

        Arguments
        ---------
        phonemes : torch.Tensor
            [batch, phonemes] (long).
        codes : torch.Tensor
            [batch, num_codebooks, frames] (long): prompt then target frames.
            Target frames of codebooks >= stage are not read.
        prompt_frames : torch.Tensor
            Prompt frames of each item, [batch] (long, >= 0).
        stage : torch.Tensor
            Codebook to predict, [batch] in 1 .. num_codebooks - 1.
        phoneme_lens, code_lens : torch.Tensor, optional
            Relative lengths, [batch].

        Returns
        -------
        torch.Tensor
            [batch, frames, codebook_size]; only target frames
            (``prompt_frames <= t < frames``) are meaningful.
        """
        check_tokens(codes, "codes", self.codebook_size, 3)
        batch, num_codebooks, time = codes.shape
        if num_codebooks != self.num_codebooks:
            raise ValueError(
                f"codes has {num_codebooks} codebooks, the model "
                f"{self.num_codebooks} (expected [batch, codebooks, frames])"
            )
        stage = torch.as_tensor(stage, device=codes.device).long()
        if stage.dim() == 0:
            stage = stage.expand(batch)
        if bool((stage < 1).any()) or bool((stage > self.num_stages).any()):
            raise ValueError(
                f"stage must be in [1, {self.num_stages}], got {stage.tolist()}"
            )
        text_frames, code_frames = self.segment_frames(
            phonemes, codes, phoneme_lens, code_lens
        )
        text = self.embed_phonemes(phonemes)
        audio = self.prepare_audio(
            self.audio_inputs(codes, prompt_frames, stage),
            torch.arange(time, device=codes.device)[None, :],
        )
        x, total = pack_segments(text, text_frames, audio, code_frames)
        condition = stage - 1
        if self.backbone_type == "transformer":
            mask = padding_mask(total, x.shape[1])
            h = self.backbone(x, mask, condition=condition)
        else:
            h = self.backbone(x, condition, lengths=total.float() / x.shape[1])
        h = unpack_second(h, text_frames, time)
        weight = self.head_weight[condition].to(h.dtype)
        bias = self.head_bias[condition].to(h.dtype)
        return torch.einsum("btd,bvd->btv", h, weight) + bias[:, None, :]

    @torch.no_grad()
    def fill(
        self,
        phonemes: torch.Tensor,
        codes: torch.Tensor,
        prompt_frames: torch.Tensor,
        phoneme_lens: Optional[torch.Tensor] = None,
        code_lens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predicts codebooks 2 .. N of the target frames, stage by stage
        (greedy, as in VALL-E).

        Arguments
        ---------
        phonemes : torch.Tensor
            [batch, phonemes].
        codes : torch.Tensor
            [batch, num_codebooks, frames]: complete prompt frames, then
            target frames of which only codebook 1 is read.
        prompt_frames : torch.Tensor
            Prompt frames per item, [batch].
        phoneme_lens, code_lens : torch.Tensor, optional
            Relative lengths, [batch].

        Returns
        -------
        torch.Tensor
            Copy of ``codes`` with the target frames of codebooks 2 .. N
            predicted.
        """
        codes = codes.clone()
        batch, _, time = codes.shape
        target = (
            torch.arange(time, device=codes.device)[None, :]
            >= prompt_frames[:, None]
        )
        for stage in range(1, self.num_codebooks):
            logits = self.forward(
                phonemes,
                codes,
                prompt_frames,
                torch.full((batch,), stage, device=codes.device),
                phoneme_lens,
                code_lens,
            )
            codes[:, stage] = torch.where(
                target, logits.argmax(-1), codes[:, stage]
            )
        return codes
