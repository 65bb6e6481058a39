"""Small, real speech corpora synthesised with espeak-ng.

Modules
-------
espeak
    Finding the espeak-ng program and synthesising text to waveforms.
sentences
    Deterministic English sentences with known text (original and
    normalised forms).
mixing
    Speech mixtures in the WSJ0-2mix and LibriMix conventions.
mini_corpus
    Builders (and a command line) writing LibriSpeech, WSJ0-2mix, Libri2Mix
    and LibriTTS style corpora to disk.
corpus_folder
    Building a corpus into a folder without losing files the builder did
    not write (marker with the files' SHA-256, lock against concurrent
    builds); shared with the mini VoiceBank builder.
librispeech_prepare
    LibriSpeech data preparation (CSV files) for the ASR and SSL recipes.
librispeech_dataio
    The tokenizer and the datasets of the LibriSpeech recipes.

The builders are importable from here too; they are loaded on first use so
that ``python -m speechbrain_mamba.data.mini_corpus`` runs cleanly.

Example
-------
>>> from speechbrain_mamba.data import build_wsj0_2mix
>>> build_wsj0_2mix.__name__
'build_wsj0_2mix'
"""

import importlib

_LAZY = {
    "build_all": "mini_corpus",
    "build_librimix": "mini_corpus",
    "build_librispeech": "mini_corpus",
    "build_libritts": "mini_corpus",
    "build_wsj0_2mix": "mini_corpus",
    "espeak_available": "espeak",
    "synthesize": "espeak",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
