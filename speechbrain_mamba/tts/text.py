"""Text front end of the TTS models: espeak-ng phonemes (through the
``phonemizer`` package) or characters, and the fixed symbol table that maps
them to ids and is stored with the model.

Phoneme sequences keep word boundaries (``_``), stress marks (``ˈ``,
``ˌ``, as separate symbols) and punctuation. The characters back end
(lower-cased letters, digits and punctuation, ``_`` between words) needs
nothing installed and serves as the fallback.

Author
------
speechbrain-mamba developers
"""

import functools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)


PAD = "<pad>"
UNK = "<unk>"
#: Symbol between words.
WORD_BOUNDARY = "_"
#: Front ends; "auto" picks phonemes when espeak-ng is usable.
BACKENDS = ("phonemes", "characters")
PUNCTUATION = set(";:,.!?¡¿—…\"«»“”()-'")
STRESS = set("ˈˌ")


class SymbolTable:
    """Maps symbols to ids: ``<pad>`` is 0, ``<unk>`` is 1, then the
    symbols in a fixed order.

    Arguments
    ---------
    symbols : sequence of str
        Symbols after the two special ones (duplicates are an error).

    Example
    -------
    >>> table = SymbolTable(["a", "b"])
    >>> table.encode(["b", "a", "z"])
    [3, 2, 1]
    >>> table.decode([3, 2, 1])
    ['b', 'a', '<unk>']
    """

    def __init__(self, symbols: Sequence[str] = ()):
        symbols = [PAD, UNK] + [s for s in symbols if s not in (PAD, UNK)]
        if len(set(symbols)) != len(symbols):
            dupes = [s for s, n in Counter(symbols).items() if n > 1]
            raise ValueError(f"duplicate symbols in the table: {dupes}")
        self.symbols: List[str] = symbols
        self.index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def build(
        cls, sequences: Iterable[Sequence[str]], min_count: int = 1
    ) -> "SymbolTable":
        """Table of the symbols seen at least ``min_count`` times, sorted.

        Arguments
        ---------
        sequences : iterable of sequences of str
            Tokenised training texts.
        min_count : int
            Rarer symbols map to ``<unk>``.

        Returns
        -------
        SymbolTable
        """
        counts = Counter(s for seq in sequences for s in seq)
        return cls(sorted(s for s, n in counts.items() if n >= min_count))

    @property
    def pad_index(self) -> int:
        """Id of the padding symbol (0)."""
        return 0

    @property
    def unk_index(self) -> int:
        """Id of unknown symbols (1)."""
        return 1

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.index

    def encode(self, tokens: Sequence[str]) -> List[int]:
        """Ids of tokens; unknown ones map to ``<unk>`` (logged once)."""
        ids = [self.index.get(t, 1) for t in tokens]
        unknown = sorted({t for t in tokens if t not in self.index})
        if unknown:
            logger.warning("symbols not in the table (as <unk>): %s", unknown)
        return ids

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Symbols of ids."""
        return [self.symbols[int(i)] for i in ids]

    def __eq__(self, other) -> bool:
        return isinstance(other, SymbolTable) and self.symbols == other.symbols


def phonemizer_available(language: str = "en-us") -> bool:
    """True when ``phonemizer`` and the espeak-ng library are usable.

    Arguments
    ---------
    language : str
        espeak-ng language code.

    Returns
    -------
    bool
    """
    try:
        _espeak_backend(language, True)
    except (ImportError, RuntimeError):
        return False
    return True


@functools.lru_cache(maxsize=8)
def _espeak_backend(language: str, with_stress: bool):
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError as err:
        raise ImportError(
            "The phoneme front end needs the 'phonemizer' package and the "
            "espeak-ng library: pip install phonemizer, and install "
            "espeak-ng (apt-get install espeak-ng, brew install espeak-ng). "
            "Or use text_backend='characters'."
        ) from err
    if not EspeakBackend.is_available():
        raise RuntimeError(
            "phonemizer cannot find the espeak-ng library: install espeak-ng "
            "or set PHONEMIZER_ESPEAK_LIBRARY to libespeak-ng's path"
        )
    quiet = logging.getLogger("phonemizer.quiet")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(
        language,
        preserve_punctuation=True,
        with_stress=with_stress,
        language_switch="remove-flags",
        logger=quiet,
    )


def _split_phone(phone: str) -> List[str]:
    """Splits punctuation and stress marks off a phonemizer phone."""
    out, trailing = [], []
    while phone and phone[0] in PUNCTUATION:
        out.append(phone[0])
        phone = phone[1:]
    while phone and phone[-1] in PUNCTUATION:
        trailing.insert(0, phone[-1])
        phone = phone[:-1]
    while phone and phone[0] in STRESS:
        out.append(phone[0])
        phone = phone[1:]
    if phone:
        out.append(phone)
    return out + trailing


@register_checkpoint_hooks
class TextFrontEnd:
    """Turns text into symbol ids, with a symbol table stored alongside.

    Arguments
    ---------
    backend : str
        "phonemes" (espeak-ng through phonemizer) or "characters".
    language : str
        espeak-ng language of the phoneme back end.
    with_stress : bool
        Keep stress marks (phonemes).
    symbols : SymbolTable, optional
        The table; build it with :meth:`fit` when not given.

    Example
    -------
    >>> front = TextFrontEnd("characters")
    >>> front.tokenize("Hi, Bob!")
    ['h', 'i', ',', '_', 'b', 'o', 'b', '!']
    >>> front.fit(["hi bob"]).encode("bob hi").tolist()
    [3, 6, 3, 2, 4, 5]
    """

    def __init__(
        self,
        backend: str = "phonemes",
        language: str = "en-us",
        with_stress: bool = True,
        symbols: Optional[SymbolTable] = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(
                f"text backend must be one of {BACKENDS}, got {backend!r}"
            )
        self.backend = backend
        self.language = language
        self.with_stress = with_stress
        self.symbols = symbols

    @classmethod
    def auto(cls, language: str = "en-us", **kwargs) -> "TextFrontEnd":
        """Phonemes when phonemizer and espeak-ng work, else characters
        (with a warning).

        Arguments
        ---------
        language : str
            espeak-ng language.
        **kwargs
            Other constructor arguments.

        Returns
        -------
        TextFrontEnd
        """
        if phonemizer_available(language):
            return cls("phonemes", language, **kwargs)
        logger.warning(
            "phonemizer/espeak-ng unavailable: using the characters front "
            "end (pip install phonemizer and install espeak-ng for phonemes)"
        )
        return cls("characters", language, **kwargs)

    # -- tokenisation ---------------------------------------------------
    def tokenize(self, text: str) -> List[str]:
        """Symbols of one text.

        Arguments
        ---------
        text : str

        Returns
        -------
        list of str
        """
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[str]]:
        """Symbols of several texts (one espeak-ng call for all).

        Arguments
        ---------
        texts : sequence of str

        Returns
        -------
        list of list of str
        """
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"text must be a str, got {type(text)}")
        if self.backend == "characters":
            return [self._characters(t) for t in texts]
        from phonemizer.separator import Separator

        espeak = _espeak_backend(self.language, self.with_stress)
        # phonemizer drops empty lines: phonemise the others only
        spoken = [i for i, t in enumerate(texts) if t.strip()]
        phonemized = espeak.phonemize(
            [texts[i].strip() for i in spoken],
            separator=Separator(phone="|", word=" ", syllable=""),
            strip=True,
            njobs=1,
        )
        if len(phonemized) != len(spoken):
            raise RuntimeError(
                f"phonemizer returned {len(phonemized)} lines for "
                f"{len(spoken)} texts"
            )
        lines = [""] * len(texts)
        for i, line in zip(spoken, phonemized):
            lines[i] = line
        out = []
        for line in lines:
            tokens = []
            for word in line.split():
                if tokens:
                    tokens.append(WORD_BOUNDARY)
                for phone in word.split("|"):
                    tokens.extend(_split_phone(phone))
            out.append(tokens)
        return out

    @staticmethod
    def _characters(text: str) -> List[str]:
        words = text.lower().split()
        tokens = []
        for word in words:
            if tokens:
                tokens.append(WORD_BOUNDARY)
            tokens.extend(word)
        return tokens

    # -- ids ----------------------------------------------------------------
    def fit(self, texts: Iterable[str], min_count: int = 1) -> "TextFrontEnd":
        """Builds the symbol table from training texts.

        Arguments
        ---------
        texts : iterable of str
            Training transcripts.
        min_count : int
            Rarer symbols map to ``<unk>``.

        Returns
        -------
        TextFrontEnd
            self.
        """
        self.symbols = SymbolTable.build(
            self.tokenize_batch(list(texts)), min_count
        )
        return self

    def _table(self) -> SymbolTable:
        if self.symbols is None:
            raise RuntimeError(
                "the front end has no symbol table: call fit() or load one"
            )
        return self.symbols

    def encode_tokens(self, tokens: Sequence[str]) -> torch.Tensor:
        """Ids of already tokenised symbols, [len] long."""
        return torch.tensor(self._table().encode(tokens), dtype=torch.long)

    def encode(self, text: str) -> torch.Tensor:
        """Ids of a text, [len] long (empty text is an error)."""
        tokens = self.tokenize(text)
        if not tokens:
            raise ValueError(f"text {text!r} has no symbols to synthesise")
        return self.encode_tokens(tokens)

    def __len__(self) -> int:
        return len(self._table())

    # -- storage --------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything that defines the mapping (JSON-serialisable)."""
        return {
            "backend": self.backend,
            "language": self.language,
            "with_stress": self.with_stress,
            "symbols": self._table().symbols,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TextFrontEnd":
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["backend"],
            data.get("language", "en-us"),
            data.get("with_stress", True),
            SymbolTable(data["symbols"]),
        )

    @mark_as_saver
    def save(self, path: PathLike) -> None:
        """Writes the front end and its table as JSON (atomically)."""
        path = Path(path)
        atomic_write_text(
            path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        )

    @mark_as_loader
    def load(self, path: PathLike, end_of_epoch: bool = False) -> None:
        """Replaces this front end's settings and table by a saved one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"symbol table {path} not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            loaded = self.from_dict(data)
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path} is not a saved text front end") from err
        self.__dict__.update(loaded.__dict__)

    @classmethod
    def from_file(cls, path: PathLike) -> "TextFrontEnd":
        """Loads a front end saved with :meth:`save`."""
        front = cls("characters")
        front.load(path)
        return front
