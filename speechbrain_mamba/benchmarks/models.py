"""Model pairs of the efficiency study: each Mamba model and its SpeechBrain
transformer peer, built at the sizes of the Speech Slytherin paper
(separation: Mamba-TasNet vs SepFormer; recognition: ConMamba vs Conformer
encoders; synthesis: VALL-M vs VALL-E codec language models).

Author
------
speechbrain-mamba developers
"""

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

import speechbrain_mamba  # noqa: F401  (torchaudio compat before speechbrain)


class SeparationPipeline(nn.Module):
    """Encoder -> mask net -> decoder, as in SpeechBrain's separation
    recipes: [batch, samples] -> [batch, samples, num_spks].

    Arguments
    ---------
    masknet : torch.nn.Module
        A mask network with the Dual_Path_Model call contract.
    channels : int
        Encoder filters.
    kernel_size : int
        Encoder kernel (stride is half of it).
    num_spks : int
        Number of sources.

    Example
    -------
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> model = SeparationPipeline(MambaTasNetMaskNet(16, num_layers=1), 16)
    >>> model(torch.randn(2, 800)).shape
    torch.Size([2, 800, 2])
    """

    def __init__(
        self,
        masknet: nn.Module,
        channels: int,
        kernel_size: int = 16,
        num_spks: int = 2,
    ):
        super().__init__()
        from speechbrain.lobes.models.dual_path import Decoder, Encoder

        self.encoder = Encoder(kernel_size=kernel_size, out_channels=channels)
        self.masknet = masknet
        self.decoder = Decoder(
            in_channels=channels,
            out_channels=1,
            kernel_size=kernel_size,
            stride=kernel_size // 2,
            bias=False,
        )
        self.num_spks = num_spks

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separates [batch, samples] into [batch, samples, num_spks]."""
        encoded = self.encoder(mix)
        masks = self.masknet(encoded)
        sources = [
            self.decoder(encoded * masks[i]) for i in range(self.num_spks)
        ]
        est = torch.stack(sources, dim=-1)
        samples = mix.shape[-1]
        if est.shape[1] < samples:
            est = nn.functional.pad(est, (0, 0, 0, samples - est.shape[1]))
        return est[:, :samples]


def sepformer(channels: int = 256) -> nn.Module:
    """SpeechBrain's SepFormer (WSJ0-2mix recipe configuration, 25.7M)."""
    from speechbrain.lobes.models.dual_path import (
        Dual_Path_Model,
        SBTransformerBlock,
    )

    def block():
        return SBTransformerBlock(
            num_layers=8,
            d_model=channels,
            nhead=8,
            d_ffn=1024,
            dropout=0.0,
            use_positional_encoding=True,
            norm_before=True,
        )

    masknet = Dual_Path_Model(
        channels,
        channels,
        block(),
        block(),
        num_layers=2,
        norm="ln",
        K=250,
        num_spks=2,
        skip_around_intra=True,
        linear_layer_after_inter_intra=False,
    )
    return SeparationPipeline(masknet, channels)


def mamba_tasnet(size: str = "M") -> nn.Module:
    """Mamba-TasNet of a paper size (XS, S, M, L)."""
    from speechbrain_mamba.lobes.mamba_tasnet import (
        MAMBA_TASNET_SIZES,
        MambaTasNetMaskNet,
    )

    channels, layers, _ = MAMBA_TASNET_SIZES[size]
    return SeparationPipeline(
        MambaTasNetMaskNet(channels, num_layers=layers), channels
    )


class EncoderOnly(nn.Module):
    """Wraps a SpeechBrain-style encoder returning a tuple."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, frames, d_model] -> [batch, frames, d_model]."""
        return self.encoder(x)[0]


def conformer_encoder(
    d_model: int = 512, layers: int = 12, d_ffn: int = 2048, heads: int = 8
) -> nn.Module:
    """SpeechBrain's ConformerEncoder (large; RoPE attention on SDPA)."""
    from speechbrain.lobes.models.transformer.Conformer import (
        ConformerEncoder,
    )

    return EncoderOnly(
        ConformerEncoder(
            layers,
            d_model,
            d_ffn,
            heads,
            kernel_size=31,
            attention_type="RoPEMHA",
            dropout=0.0,
        )
    )


def conmamba_encoder(
    d_model: int = 512, layers: int = 12, d_ffn: int = 2048
) -> nn.Module:
    """This package's ConMamba encoder (large)."""
    from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder

    return EncoderOnly(ConMambaEncoder(layers, d_model, d_ffn, kernel_size=31))


#: Codec frames per second (EnCodec 24 kHz).
TTS_FRAME_RATE = 75.0
#: Phonemes per second of speech in the random TTS inputs (read English).
TTS_PHONEMES_PER_SECOND = 12.0
#: Phoneme table, codebook size and codebooks of the TTS models.
TTS_NUM_SYMBOLS, TTS_CODEBOOK_SIZE, TTS_NUM_CODEBOOKS = 128, 1024, 8


def joint_loss(
    ar,
    nar,
    batch,
    generator=None,
    prompt: Optional[torch.Tensor] = None,
    stage: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """AR + NAR cross-entropy of one batch of VALL-E / VALL-M (the training
    loss of the recipe's ``train_stage: both``).

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    nar : CodecNAR
        The NAR model.
    batch : dict
        ``phonemes``, ``codes`` [B, codebooks, frames], ``phoneme_lens``,
        ``code_lens`` (relative) and ``code_frames``.
    generator : torch.Generator, optional
        Draws the NAR prompt frames and stage.
    prompt : torch.Tensor, optional
        [B] long prompt frames of the NAR pass (drawn when None).
    stage : torch.Tensor, optional
        [B] long NAR codebook to predict (drawn when None).

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Example
    -------
    >>> pair = vall_m("tiny")
    >>> batch = tts_batch(0.1, 2, "cpu")
    >>> loss = joint_loss(pair.ar, pair.nar, batch,
    ...                   prompt=batch["prompt_frames"], stage=batch["stage"])
    >>> bool(loss == pair.train()(batch)), loss.dim()
    (True, 0)
    """
    from speechbrain_mamba.tts.brain import nar_targets, sample_prompt_frames
    from speechbrain_mamba.tts.metrics import token_nll

    codes = batch["codes"]
    ar_logits = ar(
        batch["phonemes"],
        codes[:, 0],
        batch["phoneme_lens"],
        batch["code_lens"],
    )
    loss = token_nll(ar_logits, ar.targets(codes[:, 0], batch["code_lens"]))
    frames = batch["code_frames"]
    if prompt is None:
        prompt = sample_prompt_frames(frames, 0.25, 0.5, 225, generator)
    if stage is None:
        stage = torch.randint(
            1, nar.num_codebooks, (codes.shape[0],), generator=generator
        ).to(codes.device)
    nar_logits = nar(
        batch["phonemes"],
        codes,
        prompt,
        stage,
        batch["phoneme_lens"],
        batch["code_lens"],
    )
    return loss + token_nll(
        nar_logits, nar_targets(codes, prompt, frames, stage)
    )


class CodecLMPair(nn.Module):
    """The AR and NAR models of VALL-E or VALL-M as one module.

    In training mode the forward pass returns the joint AR + NAR training
    loss (a scalar, :func:`joint_loss`); in eval mode it returns
    the NAR logits of one stage over the whole utterance (the NAR pass of
    inference). The AR model alone is reached as ``.ar`` (decoding).

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    nar : CodecNAR
        The NAR model.
    name : str
        Display name ("VALL-M", "VALL-E").

    Example
    -------
    >>> model = vall_m("tiny")
    >>> batch = tts_batch(0.1, 1, "cpu")
    >>> model(batch).dim()
    0
    >>> model.eval()(batch).shape
    torch.Size([1, 8, 1024])
    """

    def __init__(self, ar: nn.Module, nar: nn.Module, name: str):
        super().__init__()
        self.ar = ar
        self.nar = nar
        self.name = name

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Training loss (train mode) or NAR logits (eval mode) of a batch
        from :func:`tts_batch`."""
        if self.training:
            return joint_loss(
                self.ar,
                self.nar,
                batch,
                prompt=batch["prompt_frames"],
                stage=batch["stage"],
            )
        return self.nar(
            batch["phonemes"],
            batch["codes"],
            batch["prompt_frames"],
            batch["stage"],
        )


def codec_lm_pair(kind: str, size: str = "paper") -> CodecLMPair:
    """VALL-M ("vallm") or VALL-E ("valle") of a factory size, without
    dropout, 8 codebooks of 1024 entries.

    Arguments
    ---------
    kind : str
        "vallm" or "valle".
    size : str
        A size of :data:`speechbrain_mamba.lobes.tts.factory.SIZES`.

    Returns
    -------
    CodecLMPair

    Example
    -------
    >>> codec_lm_pair("valle", "tiny").name
    'VALL-E'
    """
    from speechbrain_mamba.lobes.tts.factory import build_codec_lm

    names = {"vallm": "VALL-M", "valle": "VALL-E"}
    if kind not in names:
        raise ValueError(f"kind must be one of {sorted(names)}, got {kind!r}")
    ar, nar = build_codec_lm(
        kind,
        size,
        num_symbols=TTS_NUM_SYMBOLS,
        codebook_size=TTS_CODEBOOK_SIZE,
        num_codebooks=TTS_NUM_CODEBOOKS,
        dropout=0.0,
    )
    return CodecLMPair(ar, nar, names[kind])


def vall_m(size: str = "paper") -> CodecLMPair:
    """VALL-M (Mamba AR + BiMamba NAR) of a size."""
    return codec_lm_pair("vallm", size)


def vall_e(size: str = "paper") -> CodecLMPair:
    """VALL-E (Transformer AR with key/value cache + NAR) of a size."""
    return codec_lm_pair("valle", size)


def tts_batch(
    seconds: float, batch: int, device, seed: int = 0
) -> Dict[str, torch.Tensor]:
    """Random phonemes and codec tokens of ``seconds`` of speech.

    Arguments
    ---------
    seconds : float
        Duration: ``75 * seconds`` codec frames (at least 2) and
        ``12 * seconds`` phonemes (at least 1).
    batch : int
        Items (all of the same length).
    device : str or torch.device
        Where the tensors go.
    seed : int
        Seed of the CPU generator.

    Returns
    -------
    dict
        ``phonemes`` [batch, phonemes], ``codes`` [batch, 8, frames],
        ``phoneme_lens`` / ``code_lens`` (relative, all 1),
        ``code_frames``, and the NAR's ``prompt_frames`` (a quarter to a
        half of the frames, at most 3 s) and ``stage`` (1 .. 7), [batch].

    Example
    -------
    >>> b = tts_batch(2.0, 3, "cpu")
    >>> b["codes"].shape, b["phonemes"].shape
    (torch.Size([3, 8, 150]), torch.Size([3, 24]))
    >>> bool((b["prompt_frames"] >= 37).all() and (b["stage"] >= 1).all())
    True
    """
    from speechbrain_mamba.tts.brain import sample_prompt_frames

    if seconds <= 0 or batch < 1:
        raise ValueError(
            f"need seconds > 0 and batch >= 1, got {seconds} and {batch}"
        )
    g = torch.Generator().manual_seed(seed)
    frames = max(2, round(TTS_FRAME_RATE * seconds))
    num_phonemes = max(1, round(TTS_PHONEMES_PER_SECOND * seconds))
    code_frames = torch.full((batch,), frames)
    out = {
        "phonemes": torch.randint(
            1, TTS_NUM_SYMBOLS, (batch, num_phonemes), generator=g
        ),
        "codes": torch.randint(
            0,
            TTS_CODEBOOK_SIZE,
            (batch, TTS_NUM_CODEBOOKS, frames),
            generator=g,
        ),
        "phoneme_lens": torch.ones(batch),
        "code_lens": torch.ones(batch),
        "code_frames": code_frames,
        "prompt_frames": sample_prompt_frames(
            code_frames, 0.25, 0.5, round(3 * TTS_FRAME_RATE), g
        ),
        "stage": torch.randint(1, TTS_NUM_CODEBOOKS, (batch,), generator=g),
    }
    return {key: value.to(device) for key, value in out.items()}


#: task -> (mamba builder, peer builder, input maker(seconds, batch, device),
#: tokens per second of the model's input sequence). The tts builders take
#: a size (see :data:`speechbrain_mamba.lobes.tts.factory.SIZES`).
TASKS: Dict[str, Tuple[Callable, Callable, Callable, float]] = {
    "separation": (
        mamba_tasnet,
        sepformer,
        lambda seconds, batch, device: torch.randn(
            batch, int(8000 * seconds), device=device
        ),
        1000.0,
    ),
    "asr": (
        conmamba_encoder,
        conformer_encoder,
        lambda seconds, batch, device: torch.randn(
            batch, int(25 * seconds), 512, device=device
        ),
        25.0,
    ),
    "tts": (vall_m, vall_e, tts_batch, TTS_FRAME_RATE),
}
