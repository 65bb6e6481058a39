"""Codec language models for zero-shot TTS: VALL-E (Transformer) and VALL-M
(Mamba) AR and NAR models, their layers and ready-made sizes."""

from speechbrain_mamba.lobes.tts.adaptive_norm import AdaptiveLayerNorm
from speechbrain_mamba.lobes.tts.ar import ARDecodingState, CodecAR
from speechbrain_mamba.lobes.tts.factory import (
    SIZES,
    build_codec_lm,
    size_config,
)
from speechbrain_mamba.lobes.tts.mamba_backbone import AdaptiveMambaStack
from speechbrain_mamba.lobes.tts.nar import CodecNAR
from speechbrain_mamba.lobes.tts.positional import ScaledSinusoidalPositions
from speechbrain_mamba.lobes.tts.transformer import (
    KVCache,
    TransformerLayer,
    TransformerStack,
)

__all__ = [
    "ARDecodingState",
    "AdaptiveLayerNorm",
    "AdaptiveMambaStack",
    "CodecAR",
    "CodecNAR",
    "KVCache",
    "SIZES",
    "ScaledSinusoidalPositions",
    "TransformerLayer",
    "TransformerStack",
    "build_codec_lm",
    "size_config",
]
