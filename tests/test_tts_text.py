"""Text front end: espeak-ng phonemes, characters fallback, the symbol
table and its storage, unknown symbols, clear errors."""

import logging
import sys

import pytest

from speechbrain_mamba.tts import text as text_module
from speechbrain_mamba.tts.text import (
    WORD_BOUNDARY,
    SymbolTable,
    TextFrontEnd,
    phonemizer_available,
)

needs_espeak = pytest.mark.skipif(
    not phonemizer_available(), reason="phonemizer / espeak-ng not installed"
)


@needs_espeak
def test_phonemes_with_boundaries_stress_and_punctuation():
    front = TextFrontEnd("phonemes")
    tokens = front.tokenize("Hi, hi!")
    assert tokens == ["h", "ˈ", "aɪ", ",", WORD_BOUNDARY, "h", "ˈ", "aɪ", "!"]
    batch = front.tokenize_batch(["Hello world", "", "Hi"])
    assert batch[1] == [] and batch[2] == ["h", "ˈ", "aɪ"]
    assert batch[0].count(WORD_BOUNDARY) == 1
    # digits and abbreviations are spoken
    assert len(front.tokenize("Mr. Smith paid 25")) > 15


@needs_espeak
def test_phonemes_without_stress():
    tokens = TextFrontEnd("phonemes", with_stress=False).tokenize("Hi")
    assert tokens == ["h", "aɪ"]


def test_characters_front_end():
    front = TextFrontEnd("characters")
    assert front.tokenize("  Hi,   Bob! ") == [
        "h",
        "i",
        ",",
        WORD_BOUNDARY,
        "b",
        "o",
        "b",
        "!",
    ]
    front.fit(["hi bob", "hi"])
    assert front.symbols.symbols == ["<pad>", "<unk>", "_", "b", "h", "i", "o"]
    assert front.encode("bob").tolist() == [3, 6, 3]


def test_auto_falls_back_to_characters(monkeypatch, caplog):
    monkeypatch.setattr(
        text_module, "phonemizer_available", lambda language: False
    )
    with caplog.at_level(logging.WARNING):
        front = TextFrontEnd.auto()
    assert front.backend == "characters"
    assert "phonemizer" in caplog.text


def test_missing_phonemizer_is_a_clear_error(monkeypatch):
    text_module._espeak_backend.cache_clear()
    monkeypatch.setitem(sys.modules, "phonemizer", None)
    monkeypatch.setitem(sys.modules, "phonemizer.backend", None)
    try:
        with pytest.raises(ImportError, match="pip install phonemizer"):
            TextFrontEnd("phonemes").tokenize("hello")
        assert not phonemizer_available()
    finally:
        text_module._espeak_backend.cache_clear()


def test_symbol_table_round_trip_and_unknown_symbols(tmp_path, caplog):
    front = TextFrontEnd("characters").fit(["abc", "cab"])
    path = tmp_path / "front.json"
    front.save(path)
    loaded = TextFrontEnd.from_file(path)
    assert loaded.symbols == front.symbols
    assert loaded.backend == "characters"
    assert loaded.encode("cab").tolist() == front.encode("cab").tolist()
    with caplog.at_level(logging.WARNING):
        ids = loaded.encode("abz")
    assert ids.tolist()[-1] == loaded.symbols.unk_index == 1
    assert "'z'" in caplog.text
    assert loaded.symbols.decode(ids) == ["a", "b", "<unk>"]


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="text backend must be one of"):
        TextFrontEnd("graphemes")
    with pytest.raises(RuntimeError, match="no symbol table"):
        TextFrontEnd("characters").encode("hi")
    with pytest.raises(ValueError, match="no symbols"):
        TextFrontEnd("characters").fit(["a"]).encode("   ")
    with pytest.raises(ValueError, match="duplicate symbols"):
        SymbolTable(["a", "a"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a saved text front end"):
        TextFrontEnd.from_file(bad)
    with pytest.raises(FileNotFoundError, match="symbol table"):
        TextFrontEnd.from_file(tmp_path / "missing.json")
