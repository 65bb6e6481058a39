"""Speech recognition lobes: the ConMamba encoder, the Mamba decoder, their
``TransformerASR`` integration and the cached beam searcher."""

from speechbrain_mamba.lobes.asr.conmamba import (
    ConMambaEncoder,
    ConMambaEncoderLayer,
    MaskedConvolutionModule,
)
from speechbrain_mamba.lobes.asr.mamba_decoder import (
    MambaDecoder,
    MambaDecoderCache,
    MambaDecoderLayer,
)
from speechbrain_mamba.lobes.asr.searcher import S2SMambaBeamSearcher
from speechbrain_mamba.lobes.asr.transformer_asr import MambaTransformerASR

__all__ = [
    "ConMambaEncoder",
    "ConMambaEncoderLayer",
    "MambaDecoder",
    "MambaDecoderCache",
    "MambaDecoderLayer",
    "MambaTransformerASR",
    "MaskedConvolutionModule",
    "S2SMambaBeamSearcher",
]
