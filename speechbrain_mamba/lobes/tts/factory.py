"""Ready-made sizes of VALL-E (Transformer) and VALL-M (Mamba) codec
language models, for recipes and benchmarks.

A Transformer layer of width d (feed-forward 4d) has about 12 d^2
parameters and a Mamba layer (expand 2) about 6.3 d^2, so VALL-M uses twice
as many layers as VALL-E for a similar parameter count.

Author
------
speechbrain-mamba developers
"""

from typing import Any, Dict, Tuple

from speechbrain_mamba.lobes.tts.ar import CodecAR
from speechbrain_mamba.lobes.tts.nar import CodecNAR

#: Width, Transformer layers and heads of each size; Mamba: 2x layers.
SIZES: Dict[str, Dict[str, int]] = {
    "tiny": dict(d_model=32, num_layers=1, nhead=2),
    "small": dict(d_model=256, num_layers=6, nhead=4),
    "medium": dict(d_model=512, num_layers=12, nhead=8),
    "paper": dict(d_model=1024, num_layers=12, nhead=16),
}

#: Model families.
KINDS = ("valle", "vallm")


def size_config(kind: str, size: str) -> Dict[str, Any]:
    """Constructor arguments shared by the AR and NAR models of a size.

    Arguments
    ---------
    kind : str
        "valle" (Transformer) or "vallm" (Mamba).
    size : str
        One of :data:`SIZES`.

    Returns
    -------
    dict

    Example
    -------
    >>> size_config("vallm", "paper")["num_layers"]
    24
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    config = dict(SIZES[size])
    if kind == "vallm":
        config["num_layers"] *= 2
        config["backbone"] = "mamba"
    else:
        config["backbone"] = "transformer"
    return config


def build_codec_lm(
    kind: str,
    size: str = "small",
    num_symbols: int = 128,
    codebook_size: int = 1024,
    num_codebooks: int = 8,
    text_encoder_layers: int = 0,
    **overrides: Any,
) -> Tuple[CodecAR, CodecNAR]:
    """Builds the AR and NAR models of VALL-E or VALL-M of a given size.

    Arguments
    ---------
    kind : str
        "valle" or "vallm".
    size : str
        "tiny", "small", "medium" or "paper" (d_model 1024, 12 Transformer
        layers with 16 heads, or 24 Mamba layers).
    num_symbols : int
        Phoneme symbol table size.
    codebook_size : int
        Entries per codebook (1024 for EnCodec).
    num_codebooks : int
        Codebooks (8 for EnCodec 24 kHz at 6 kbps).
    text_encoder_layers : int
        VALL-M only: bidirectional Mamba phoneme encoder in front of the AR
        model.
    **overrides
        Any other constructor argument of both models (dropout, d_state...).

    Returns
    -------
    (CodecAR, CodecNAR)

    Example
    -------
    >>> ar, nar = build_codec_lm("vallm", "tiny", num_symbols=20,
    ...                          codebook_size=16, num_codebooks=3)
    >>> ar.backbone_type, len(nar.backbone.mixers)
    ('mamba', 2)
    """
    config = size_config(kind, size)
    config.update(overrides)
    common = dict(num_symbols=num_symbols, codebook_size=codebook_size)
    ar_config = dict(config)
    if kind == "vallm":
        ar_config["text_encoder_layers"] = text_encoder_layers
    elif text_encoder_layers:
        raise ValueError("text_encoder_layers is a VALL-M option")
    ar = CodecAR(**common, **ar_config)
    nar = CodecNAR(**common, num_codebooks=num_codebooks, **config)
    return ar, nar
