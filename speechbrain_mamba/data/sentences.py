"""Deterministic English sentences with known text.

A small grammar over a fixed vocabulary of a few hundred common English
words produces simple, well-formed sentences ("Mr. Baker found 3 green
apples near the river."). Each sentence comes in two forms, as in LibriTTS:

* ``original``: the book text, with digits and abbreviations;
* ``normalized``: numbers and titles spelled out, which is what is spoken.

:func:`librispeech_text` turns the normalised form into a LibriSpeech style
transcript (upper case, no punctuation but apostrophes).

Author
------
speechbrain-mamba developers
"""

import re
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

# Nouns as (singular, plural).
NOUNS = (
    ("apple", "apples"),
    ("bag", "bags"),
    ("ball", "balls"),
    ("basket", "baskets"),
    ("bed", "beds"),
    ("bell", "bells"),
    ("bench", "benches"),
    ("bird", "birds"),
    ("boat", "boats"),
    ("book", "books"),
    ("bottle", "bottles"),
    ("box", "boxes"),
    ("boy", "boys"),
    ("bridge", "bridges"),
    ("brother", "brothers"),
    ("bucket", "buckets"),
    ("cake", "cakes"),
    ("candle", "candles"),
    ("car", "cars"),
    ("card", "cards"),
    ("cat", "cats"),
    ("chair", "chairs"),
    ("child", "children"),
    ("clock", "clocks"),
    ("coat", "coats"),
    ("cup", "cups"),
    ("dog", "dogs"),
    ("door", "doors"),
    ("egg", "eggs"),
    ("farmer", "farmers"),
    ("field", "fields"),
    ("flower", "flowers"),
    ("friend", "friends"),
    ("garden", "gardens"),
    ("girl", "girls"),
    ("glass", "glasses"),
    ("hat", "hats"),
    ("hill", "hills"),
    ("horse", "horses"),
    ("house", "houses"),
    ("island", "islands"),
    ("key", "keys"),
    ("kitchen", "kitchens"),
    ("lamp", "lamps"),
    ("letter", "letters"),
    ("man", "men"),
    ("map", "maps"),
    ("market", "markets"),
    ("mountain", "mountains"),
    ("orange", "oranges"),
    ("painter", "painters"),
    ("pencil", "pencils"),
    ("picture", "pictures"),
    ("plate", "plates"),
    ("river", "rivers"),
    ("road", "roads"),
    ("room", "rooms"),
    ("ship", "ships"),
    ("shoe", "shoes"),
    ("sister", "sisters"),
    ("soldier", "soldiers"),
    ("song", "songs"),
    ("station", "stations"),
    ("stone", "stones"),
    ("story", "stories"),
    ("student", "students"),
    ("table", "tables"),
    ("teacher", "teachers"),
    ("train", "trains"),
    ("tree", "trees"),
    ("village", "villages"),
    ("wagon", "wagons"),
    ("window", "windows"),
    ("woman", "women"),
)

ADJECTIVES = (
    "big",
    "small",
    "old",
    "young",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "brown",
    "happy",
    "quiet",
    "loud",
    "warm",
    "cold",
    "bright",
    "dark",
    "heavy",
    "little",
    "long",
    "short",
    "clean",
    "dirty",
    "empty",
    "busy",
    "gentle",
    "tired",
    "strange",
    "tiny",
    "wooden",
    "golden",
    "simple",
    "early",
    "pretty",
    "lucky",
    "famous",
    "careful",
    "narrow",
    "sharp",
    "soft",
    "fresh",
    "rich",
    "poor",
    "proud",
)

# Transitive verbs as (past, base).
TRANSITIVE_VERBS = (
    ("found", "find"),
    ("saw", "see"),
    ("took", "take"),
    ("brought", "bring"),
    ("opened", "open"),
    ("closed", "close"),
    ("painted", "paint"),
    ("carried", "carry"),
    ("watched", "watch"),
    ("cleaned", "clean"),
    ("bought", "buy"),
    ("sold", "sell"),
    ("made", "make"),
    ("lost", "lose"),
    ("kept", "keep"),
    ("moved", "move"),
    ("pushed", "push"),
    ("pulled", "pull"),
    ("washed", "wash"),
    ("fixed", "fix"),
    ("dropped", "drop"),
    ("held", "hold"),
    ("lifted", "lift"),
    ("followed", "follow"),
    ("visited", "visit"),
    ("called", "call"),
    ("helped", "help"),
    ("met", "meet"),
    ("wanted", "want"),
    ("liked", "like"),
    ("needed", "need"),
    ("counted", "count"),
    ("filled", "fill"),
    ("covered", "cover"),
    ("built", "build"),
    ("packed", "pack"),
    ("hid", "hide"),
    ("left", "leave"),
    ("showed", "show"),
    ("remembered", "remember"),
)

# Intransitive verbs as (past, base).
INTRANSITIVE_VERBS = (
    ("slept", "sleep"),
    ("laughed", "laugh"),
    ("waited", "wait"),
    ("walked", "walk"),
    ("ran", "run"),
    ("smiled", "smile"),
    ("sang", "sing"),
    ("danced", "dance"),
    ("cried", "cry"),
    ("arrived", "arrive"),
    ("stayed", "stay"),
    ("listened", "listen"),
    ("worked", "work"),
    ("played", "play"),
    ("rested", "rest"),
    ("jumped", "jump"),
    ("talked", "talk"),
    ("returned", "return"),
    ("stopped", "stop"),
    ("shouted", "shout"),
)

ADVERBS = (
    "quickly",
    "slowly",
    "quietly",
    "loudly",
    "happily",
    "sadly",
    "carefully",
    "gently",
    "softly",
    "suddenly",
    "politely",
    "calmly",
    "bravely",
    "eagerly",
    "patiently",
    "again",
    "together",
)

PREPOSITIONS = (
    "on",
    "under",
    "near",
    "behind",
    "beside",
    "inside",
    "across",
    "along",
    "over",
    "by",
    "from",
    "past",
)

NAMES = (
    "Anna",
    "Peter",
    "Mary",
    "John",
    "Lucy",
    "James",
    "Emma",
    "David",
    "Sarah",
    "Thomas",
    "Alice",
    "Robert",
    "Helen",
    "George",
    "Laura",
    "Daniel",
    "Rose",
    "Henry",
    "Clara",
    "Martin",
)

SURNAMES = (
    "Brown",
    "Smith",
    "Green",
    "Taylor",
    "White",
    "Clark",
    "Wilson",
    "Baker",
    "Turner",
    "Hill",
    "Walker",
    "Parker",
)

# Titles as (original, normalised).
TITLES = (("Mr.", "Mister"), ("Mrs.", "Missus"), ("Dr.", "Doctor"))

# Numbers as (digits, words).
NUMBERS = (
    ("2", "two"),
    ("3", "three"),
    ("4", "four"),
    ("5", "five"),
    ("6", "six"),
    ("7", "seven"),
    ("8", "eight"),
    ("9", "nine"),
    ("10", "ten"),
    ("11", "eleven"),
    ("12", "twelve"),
    ("20", "twenty"),
)

DAYS = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)

TIMES = (
    "this morning",
    "last night",
    "yesterday",
    "today",
    "in the evening",
    "after dinner",
    "before noon",
    "every day",
    "at noon",
    "last week",
    "after lunch",
    "at dawn",
)

SUBJECT_PRONOUNS = ("he", "she", "they", "we", "you")
OBJECT_PRONOUNS = ("him", "her", "them", "us", "it")
POSSESSIVES = ("my", "our", "his", "her", "their", "your")

_PUNCTUATION = {",", ".", "?", "!"}


def _vocabulary() -> frozenset:
    words = set()
    for pair in NOUNS + TRANSITIVE_VERBS + INTRANSITIVE_VERBS:
        words.update(pair)
    for group in (
        ADJECTIVES,
        ADVERBS,
        PREPOSITIONS,
        SUBJECT_PRONOUNS,
        OBJECT_PRONOUNS,
        POSSESSIVES,
        TIMES,
    ):
        for item in group:
            words.update(item.split())
    words.update(n.lower() for n in NAMES + SURNAMES + DAYS)
    words.update(n.lower() + "'s" for n in NAMES)
    words.update(t[1].lower() for t in TITLES)
    words.update(n[1] for n in NUMBERS)
    words.update(
        ["the", "a", "an", "on", "and", "was", "did", "said", "that"]
        + ["where", "there", "were"]
    )
    return frozenset(words)


#: All lower-case words the normalised sentences can contain.
VOCABULARY = _vocabulary()


@dataclass(frozen=True)
class Sentence:
    """A sentence in its original and normalised (spoken) forms.

    Arguments
    ---------
    original : str
        Text as printed, e.g. ``"Mr. Baker found 3 red apples."``.
    normalized : str
        Text as spoken, e.g. ``"Mister Baker found three red apples."``.
    """

    original: str
    normalized: str

    @property
    def words(self) -> list:
        """The lower-case words of the normalised form.

        Example
        -------
        >>> Sentence("Dr. Hill sang.", "Doctor Hill sang.").words
        ['doctor', 'hill', 'sang']
        """
        return librispeech_text(self.normalized).lower().split()


def librispeech_text(text: str) -> str:
    """Turns text into a LibriSpeech style transcript.

    Arguments
    ---------
    text : str
        Normalised text (numbers and abbreviations spelled out).

    Returns
    -------
    str
        Upper case words separated by single spaces; punctuation other
        than apostrophes inside words is removed.

    Example
    -------
    >>> librispeech_text("Yesterday, Anna's  dog ran home!")
    "YESTERDAY ANNA'S DOG RAN HOME"
    """
    text = re.sub(r"[^A-Za-z' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w).upper()


class SentenceGenerator:
    """Draws sentences from a small English grammar, reproducibly.

    Arguments
    ---------
    seed : int or numpy.random.Generator
        Seed (or generator) of the random choices. The same seed gives the
        same sentences.
    min_words : int
        Fewest words in a sentence (normalised form).
    max_words : int
        Most words in a sentence (normalised form).

    Example
    -------
    >>> gen = SentenceGenerator(seed=0)
    >>> sentences = gen.sentences(50)
    >>> all(4 <= len(s.words) <= 12 for s in sentences)
    True
    >>> all(set(s.words) <= VOCABULARY for s in sentences)
    True
    >>> sentences == SentenceGenerator(seed=0).sentences(50)
    True
    >>> sentences == SentenceGenerator(seed=1).sentences(50)
    False
    """

    def __init__(
        self,
        seed: Union[int, np.random.Generator] = 0,
        min_words: int = 4,
        max_words: int = 12,
    ):
        if not 3 <= min_words <= max_words:
            raise ValueError(
                "SentenceGenerator: need 3 <= min_words <= max_words, got "
                f"min_words={min_words}, max_words={max_words}"
            )
        if isinstance(seed, np.random.Generator):
            self.rng = seed
        else:
            self.rng = np.random.default_rng(seed)
        self.min_words = min_words
        self.max_words = max_words
        self._templates = (
            self._t_transitive,
            self._t_intransitive,
            self._t_counting,
            self._t_time_first,
            self._t_question,
            self._t_description,
            self._t_compound,
            self._t_reported,
            self._t_where,
            self._t_there_were,
            self._t_possessive,
        )

    # -- random helpers -----------------------------------------------------
    def _pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def _maybe(self, prob: float) -> bool:
        return bool(self.rng.random() < prob)

    @staticmethod
    def _w(text: str) -> list:
        """Tokens for text that is the same in both forms."""
        return [(w, w) for w in text.split()]

    def _noun_phrase(self, plural: bool = False, det: str = "") -> list:
        noun = self._pick(NOUNS)[1 if plural else 0]
        if not det:
            det = "the" if plural or self._maybe(0.6) else "a"
        tokens = self._w(det)
        if self._maybe(0.5):
            tokens += self._w(self._pick(ADJECTIVES))
        return tokens + self._w(noun)

    def _person(self) -> list:
        if self._maybe(0.3):
            surname = self._pick(SURNAMES)
            return [self._pick(TITLES), (surname, surname)]
        name = self._pick(NAMES)
        return [(name, name)]

    def _subject(self, singular: bool = False) -> list:
        kind = int(self.rng.integers(3 if singular else 5))
        if kind == 0:
            return self._noun_phrase(det="the")
        if kind == 1:
            return self._person()
        if kind == 2:
            return self._noun_phrase(det=self._pick(POSSESSIVES))
        if kind == 3:
            return self._noun_phrase(plural=True)
        return self._w(self._pick(SUBJECT_PRONOUNS))

    def _object(self) -> list:
        kind = int(self.rng.integers(6))
        if kind <= 2:
            return self._noun_phrase()
        if kind == 3:
            return self._noun_phrase(plural=True)
        if kind == 4:
            return self._person()
        return self._w(self._pick(OBJECT_PRONOUNS))

    def _place(self) -> list:
        return self._w(self._pick(PREPOSITIONS)) + self._noun_phrase(det="the")

    def _time(self) -> list:
        if self._maybe(0.25):
            day = self._pick(DAYS)
            return self._w("on") + [(day, day)]
        return self._w(self._pick(TIMES))

    def _number(self) -> tuple:
        digits, words = self._pick(NUMBERS)
        return (digits if self._maybe(0.5) else words, words)

    # -- templates ----------------------------------------------------------
    def _t_transitive(self) -> list:
        tokens = self._subject() + self._w(self._pick(TRANSITIVE_VERBS)[0])
        tokens += self._object()
        if self._maybe(0.5):
            tokens += self._place()
        return tokens + [(".", ".")]

    def _t_intransitive(self) -> list:
        tokens = self._subject() + self._w(self._pick(INTRANSITIVE_VERBS)[0])
        if self._maybe(0.5):
            tokens += self._w(self._pick(ADVERBS))
        if self._maybe(0.6):
            tokens += self._place()
        return tokens + [(".", ".")]

    def _t_counting(self) -> list:
        tokens = self._person() + self._w(self._pick(TRANSITIVE_VERBS)[0])
        tokens.append(self._number())
        if self._maybe(0.5):
            tokens += self._w(self._pick(ADJECTIVES))
        tokens += self._w(self._pick(NOUNS)[1])
        if self._maybe(0.4):
            tokens += self._place()
        return tokens + [(".", ".")]

    def _t_time_first(self) -> list:
        tokens = self._time() + [(",", ",")] + self._subject()
        tokens += self._w(self._pick(TRANSITIVE_VERBS)[0]) + self._object()
        return tokens + [(".", ".")]

    def _t_question(self) -> list:
        tokens = self._w("did") + self._subject()
        tokens += self._w(self._pick(TRANSITIVE_VERBS)[1]) + self._object()
        if self._maybe(0.4):
            tokens += self._time()
        return tokens + [("?", "?")]

    def _t_description(self) -> list:
        tokens = self._subject(singular=True) + self._w("was")
        tokens += self._w(self._pick(ADJECTIVES)) + self._w("and")
        return tokens + self._w(self._pick(ADJECTIVES)) + [(".", ".")]

    def _t_compound(self) -> list:
        tokens = self._subject() + self._w(self._pick(TRANSITIVE_VERBS)[0])
        tokens += self._object() + [(",", ",")] + self._w("and")
        tokens += self._subject() + self._w(self._pick(INTRANSITIVE_VERBS)[0])
        return tokens + [(".", ".")]

    def _t_reported(self) -> list:
        tokens = self._w(self._pick(SUBJECT_PRONOUNS)) + self._w("said that")
        tokens += self._subject() + self._w(self._pick(INTRANSITIVE_VERBS)[0])
        if self._maybe(0.5):
            tokens += self._time()
        return tokens + [(".", ".")]

    def _t_where(self) -> list:
        tokens = self._w("where did") + self._subject()
        tokens += self._w(self._pick(TRANSITIVE_VERBS)[1]) + self._object()
        return tokens + [("?", "?")]

    def _t_there_were(self) -> list:
        tokens = self._w("there were") + [self._number()]
        if self._maybe(0.5):
            tokens += self._w(self._pick(ADJECTIVES))
        tokens += self._w(self._pick(NOUNS)[1]) + self._place()
        return tokens + [(".", ".")]

    def _t_possessive(self) -> list:
        name = self._pick(NAMES) + "'s"
        tokens = [(name, name)] + self._w(self._pick(NOUNS)[0])
        tokens += self._w(self._pick(INTRANSITIVE_VERBS)[0])
        if self._maybe(0.6):
            tokens += self._w(self._pick(ADVERBS))
        if self._maybe(0.5):
            tokens += self._time()
        return tokens + [(".", ".")]

    # -- assembly -----------------------------------------------------------
    @staticmethod
    def _join(words: list) -> str:
        out = []
        for i, word in enumerate(words):
            if word in _PUNCTUATION and out:
                out[-1] += word
                continue
            if word == "a" and i + 1 < len(words):
                if words[i + 1][0].lower() in "aeiou":
                    word = "an"
            out.append(word)
        text = " ".join(out)
        return text[:1].upper() + text[1:]

    def sentence(self) -> Sentence:
        """Draws one sentence.

        Returns
        -------
        Sentence
            With ``min_words <= len(words) <= max_words``.

        Example
        -------
        >>> s = SentenceGenerator(seed=3).sentence()
        >>> s.normalized[0].isupper(), s.normalized[-1] in ".?"
        (True, True)
        """
        for _ in range(1000):
            template = self._pick(self._templates)
            tokens = template()
            n_words = sum(t[1] not in _PUNCTUATION for t in tokens)
            if self.min_words <= n_words <= self.max_words:
                original = self._join([t[0] for t in tokens])
                normalized = self._join([t[1] for t in tokens])
                return Sentence(original, normalized)
        raise RuntimeError(
            "SentenceGenerator: no sentence with "
            f"{self.min_words}..{self.max_words} words; widen the range"
        )

    def sentences(self, count: int) -> list:
        """Draws ``count`` sentences.

        Arguments
        ---------
        count : int
            Number of sentences.

        Returns
        -------
        list of Sentence

        Example
        -------
        >>> len(SentenceGenerator(seed=0).sentences(3))
        3
        """
        return [self.sentence() for _ in range(count)]


def make_sentences(
    count: int,
    seed: int = 0,
    min_words: int = 4,
    max_words: int = 12,
    rng: Optional[np.random.Generator] = None,
) -> list:
    """Draws ``count`` sentences (shortcut for :class:`SentenceGenerator`).

    Arguments
    ---------
    count : int
        Number of sentences.
    seed : int
        Seed of the random choices (ignored when ``rng`` is given).
    min_words : int
        Fewest words per sentence.
    max_words : int
        Most words per sentence.
    rng : numpy.random.Generator, optional
        Generator to draw from instead of a fresh one.

    Returns
    -------
    list of Sentence

    Example
    -------
    >>> [len(s.words) <= 6 for s in make_sentences(3, max_words=6)]
    [True, True, True]
    """
    gen = SentenceGenerator(
        rng if rng is not None else seed, min_words, max_words
    )
    return gen.sentences(count)
