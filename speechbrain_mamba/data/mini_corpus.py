"""Small but real speech corpora in the layouts of public datasets.

Sentences with known text (:mod:`speechbrain_mamba.data.sentences`) are
spoken by espeak-ng (:mod:`speechbrain_mamba.data.espeak`) with a fixed set
of pseudo-speakers (voice, variant, pitch and speed range) and written in
the on-disk layouts of LibriSpeech, WSJ0-2mix (plus its WSJ0 single-speaker
sources), Libri2Mix and LibriTTS, so that recipes written for those
datasets run unchanged on a few hundred utterances built in seconds.

Everything is deterministic from the seed: building twice with the same
arguments (and the same espeak-ng version) gives byte-identical files.
Each corpus is written to a temporary folder next to its destination and
renamed into place when complete; a marker file (``.mini_corpus.json``)
records the parameters and the files written, so a second call with the
same parameters returns at once, and a rebuild replaces an older corpus
only if the folder holds nothing else (files the generator did not write
are never deleted). Builds of other parameters that run at the same time
into one folder do not both succeed: the later one stops with an error
(:mod:`speechbrain_mamba.data.corpus_folder`).

Speakers are split as in the real datasets: training subsets use 10
pseudo-speakers, development and test subsets 3 unseen ones each.

Command line::

    python -m speechbrain_mamba.data.mini_corpus \\
        {librispeech,wsj0-2mix,librimix,libritts,all} --out DIR \\
        [--seed 0] [-n N] [--workers W] [--force] [--max-words M] \\
        [--voices {auto,festival,espeak}] [--sample-rates R ...] \\
        [--modes {min,max} ...]

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import io
import logging
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf

from speechbrain_mamba.data.corpus_folder import (
    CorpusGenerator,
    build_corpus_folder,
)
from speechbrain_mamba.data.espeak import (
    ESPEAK_SAMPLE_RATE,
    espeak_available,
    resample,
    synthesize,
    trim_silence,
)
from speechbrain_mamba.data.festival import (
    FESTIVAL_VOICES,
    FestivalNotFoundError,
    festival_version,
    festival_voices,
    find_festival,
    find_sox,
    shift_pitch_and_tempo,
)
from speechbrain_mamba.data.festival import (
    synthesize as festival_synthesize,
)
from speechbrain_mamba.data.mixing import (
    MAX_AMPLITUDE,
    active_level,
    mix_sources,
)
from speechbrain_mamba.data.sentences import (
    Sentence,
    SentenceGenerator,
    librispeech_text,
)
from speechbrain_mamba.utils.cli import non_negative_int, positive_int

logger = logging.getLogger(__name__)

__all__ = [
    "CORPORA",
    "DEFAULT_NUM_UTTERANCES",
    "MARKER_NAME",
    "PSEUDO_SPEAKERS",
    "PseudoSpeaker",
    "build_all",
    "build_librimix",
    "build_librispeech",
    "build_libritts",
    "build_wsj0_2mix",
    "espeak_available",
    "remix_wsj0_2mix",
    "main",
]

#: Bumped whenever the generated content changes for a given seed.
GENERATOR_VERSION = 2

#: Name of the file recording the parameters of a complete corpus.
MARKER_NAME = ".mini_corpus.json"

#: Default number of utterances (LibriSpeech, LibriTTS) or mixtures
#: (WSJ0-2mix, Libri2Mix) over all subsets.
DEFAULT_NUM_UTTERANCES = {
    "librispeech": 300,
    "wsj0-2mix": 280,
    "librimix": 280,
    "libritts": 200,
}

#: Corpus names accepted by the command line.
CORPORA = tuple(DEFAULT_NUM_UTTERANCES)

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class PseudoSpeaker:
    """A consistent synthetic speaker.

    Arguments
    ---------
    index : int
        Position in :data:`PSEUDO_SPEAKERS`.
    voice : str
        espeak-ng voice and variant, e.g. ``"en-us+f3"``.
    gender : str
        ``"M"`` or ``"F"`` (the variant's gender).
    pitch : int
        Base pitch (espeak-ng ``-p``); utterances vary it by +-4.
    speed : tuple of int
        Range of speaking rates in words per minute.
    subset : str
        ``"train"``, ``"dev"`` or ``"test"``: the subsets it speaks in.
    wsj_id : str
        Three character WSJ0 style speaker ID.
    engine : str
        ``"espeak-ng"`` or ``"festival"``. For Festival voices ``pitch`` is
        a pitch shift in quarter semitones (utterances vary it by +-1
        semitone) and ``speed`` a range of tempo factors in percent.
    """

    index: int
    voice: str
    gender: str
    pitch: int
    speed: tuple
    subset: str
    wsj_id: str
    engine: str = "espeak-ng"

    @property
    def librispeech_id(self) -> str:
        """LibriSpeech / LibriTTS style numeric speaker ID.

        Example
        -------
        >>> PSEUDO_SPEAKERS[0].librispeech_id
        '1001'
        """
        return str(1001 + self.index)

    @property
    def description(self) -> str:
        """Voice, pitch and speed range in one line.

        Example
        -------
        >>> PSEUDO_SPEAKERS[0].description
        'espeak-ng en-us+m3 pitch 40 speed 155-185'
        >>> FESTIVAL_SPEAKERS[1].description
        'festival ked_diphone pitch +3.50 st tempo 95-112%'
        """
        if self.engine == "festival":
            return (
                f"festival {self.voice} pitch {self.pitch / 4:+.2f} st "
                f"tempo {self.speed[0]}-{self.speed[1]}%"
            )
        return (
            f"espeak-ng {self.voice} pitch {self.pitch} "
            f"speed {self.speed[0]}-{self.speed[1]}"
        )


def _speakers() -> tuple:
    table = (
        # voice, gender, pitch, speed range, subset, WSJ0 ID
        ("en-us+m3", "M", 40, (155, 185), "train", "01a"),
        ("en-us+f3", "F", 62, (160, 190), "train", "01b"),
        ("en-gb+m1", "M", 35, (150, 180), "train", "01c"),
        ("en-gb+f2", "F", 66, (165, 195), "train", "01d"),
        ("en-us+m5", "M", 50, (170, 200), "train", "01e"),
        ("en-gb-x-rp+f4", "F", 55, (155, 185), "train", "01f"),
        ("en-gb-scotland+m2", "M", 45, (150, 180), "train", "01g"),
        ("en-us+f1", "F", 70, (165, 195), "train", "01h"),
        ("en-029+m4", "M", 42, (160, 190), "train", "01i"),
        ("en-gb-x-gbclan+f5", "F", 58, (155, 185), "train", "01j"),
        ("en-us-nyc+m6", "M", 44, (160, 190), "dev", "05a"),
        ("en-gb+f3", "F", 63, (155, 185), "dev", "05b"),
        ("en-us+m7", "M", 38, (165, 195), "dev", "05c"),
        ("en-gb-x-gbcwmd+f2", "F", 67, (160, 190), "test", "44a"),
        ("en-us+m1", "M", 48, (155, 185), "test", "44b"),
        ("en-gb-x-rp+f1", "F", 57, (165, 195), "test", "44c"),
    )
    return tuple(
        PseudoSpeaker(i, v, g, p, s, sub, w)
        for i, (v, g, p, s, sub, w) in enumerate(table)
    )


#: The 16 pseudo-speakers: 10 for training, 3 for dev, 3 for test.
PSEUDO_SPEAKERS = _speakers()

#: Pitch (semitones) and tempo (percent range) variants of each Festival
#: voice: the voice as recorded, then higher / lower with a shifted
#: spectral envelope (a shorter / longer vocal tract).
_FESTIVAL_VARIANTS = {
    "train": ((0.0, (92, 108)), (3.5, (95, 112)), (-3.0, (88, 104))),
    "dev": ((0.0, (92, 108)), (4.0, (95, 110))),
    "test": ((0.0, (92, 108)), (-3.0, (90, 106)), (4.5, (95, 110))),
}

#: Festival voices (Debian's festvox packages, recordings of real
#: speakers) of each speaker group: unseen voices for dev and test.
_FESTIVAL_GROUPS = {
    "train": (
        "ked_diphone",
        "cmu_us_slt_arctic_hts",
        "upc_ca_ona_hts",
        "suo_fi_lj_diphone",
        "hy_fi_mv_diphone",
        "pc_diphone",
        "msu_ru_nsh_clunits",
        "czech_dita",
        "czech_krb",
        "czech_machac",
    ),
    "dev": ("czech_ph",),
    "test": ("kal_diphone", "lp_diphone"),
}


def _festival_speakers() -> tuple:
    gender = {v.name: v.gender for v in FESTIVAL_VOICES}
    prefix = {"train": "f", "dev": "g", "test": "h"}
    speakers = []
    for subset, voices in _FESTIVAL_GROUPS.items():
        for voice in voices:
            for semitones, tempo in _FESTIVAL_VARIANTS[subset]:
                k = sum(s.subset == subset for s in speakers)
                speakers.append(
                    PseudoSpeaker(
                        len(PSEUDO_SPEAKERS) + len(speakers),
                        voice,
                        gender[voice],
                        int(round(4 * semitones)),
                        tempo,
                        subset,
                        f"{prefix[subset]}{k:02d}",
                        engine="festival",
                    )
                )
    return tuple(speakers)


#: Pseudo-speakers made from Festival voices (separation corpora only:
#: most voices speak the English sentences with another language's
#: phonetics, which is speech for separation but not for recognition).
#: 30 for training (10 voices x 3 variants), 2 for dev, 6 for test.
FESTIVAL_SPEAKERS = _festival_speakers()

#: Every pseudo-speaker, indexed by :attr:`PseudoSpeaker.index`.
ALL_SPEAKERS = PSEUDO_SPEAKERS + FESTIVAL_SPEAKERS

#: ``voices`` settings of the separation corpora.
VOICE_SETS = ("auto", "festival", "espeak")


def _speakers_of(*subsets: str, festival: Sequence[str] = ()) -> list:
    """Speakers of the subsets: espeak-ng ones, then those of the Festival
    voices named in ``festival``."""
    return [
        s
        for s in ALL_SPEAKERS
        if s.subset in subsets
        and (s.engine == "espeak-ng" or s.voice in festival)
    ]


def _festival_setup(voices: str, what: str) -> tuple:
    """The Festival executable and installed voice names to use.

    ``voices`` is ``"auto"`` (Festival's voices where installed, with a
    warning otherwise), ``"festival"`` (an error if they are missing) or
    ``"espeak"`` (espeak-ng only). Returns ``(binary or None, names)``.
    """
    if voices not in VOICE_SETS:
        raise ValueError(
            f"{what}: voices must be one of {VOICE_SETS}, got {voices!r}"
        )
    if voices == "espeak":
        return None, ()
    wanted = {v for group in _FESTIVAL_GROUPS.values() for v in group}
    try:
        binary = find_festival()
        find_sox()
        names = tuple(v.name for v in festival_voices(binary))
    except FestivalNotFoundError as err:
        if voices == "festival":
            raise
        logger.warning(
            "%s: %s Building with espeak-ng voices only (formant speech, "
            "further from real recordings).",
            what,
            err,
        )
        return None, ()
    missing = sorted(wanted - set(names))
    if missing:
        packages = sorted(
            v.package for v in FESTIVAL_VOICES if v.name in missing
        )
        message = (
            f"{what}: Festival voices {missing} are not installed "
            f"(Debian packages: {' '.join(packages)})"
        )
        if voices == "festival":
            raise FestivalNotFoundError(message)
        logger.warning("%s; using the others.", message)
    return binary, tuple(n for n in names if n in wanted)


# ---------------------------------------------------------------------------
# Planning (all random draws happen here, in order, in the calling thread)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Utterance:
    speaker: PseudoSpeaker
    sentence: Sentence
    speed: int
    pitch: int
    peak_db: float
    lead: float
    trail: float


def _rng(seed: int, corpus: str) -> np.random.Generator:
    code = [ord(c) for c in corpus]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *code]))


def _split_counts(total: int, weights: Sequence[int], what: str) -> list:
    """Splits ``total`` items into subsets proportionally to ``weights``,
    each subset getting at least one item."""
    if total < len(weights):
        raise ValueError(
            f"{what}: num_utterances must be at least {len(weights)} (one "
            f"per subset), got {total}"
        )
    rest = [max(1, round(total * w / sum(weights))) for w in weights[1:]]
    first = total - sum(rest)
    while first < 1:
        i = int(np.argmax(rest))
        rest[i] -= 1
        first += 1
    return [first, *rest]


def _jittered_pitch(speaker: PseudoSpeaker, jitter: int) -> int:
    """A speaker's pitch moved by ``jitter`` steps (espeak-ng pitch units
    clipped to [0, 99]; quarter semitones for Festival)."""
    if speaker.engine == "festival":
        return speaker.pitch + jitter
    return int(np.clip(speaker.pitch + jitter, 0, 99))


def _plan_utterances(
    rng: np.random.Generator,
    speakers: Sequence[PseudoSpeaker],
    count: int,
    sentences: SentenceGenerator,
) -> list:
    """Draws ``count`` utterances spread evenly over ``speakers``."""
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    plans = []
    for k in range(count):
        spk = order[k % len(order)]
        sentence = sentences.sentence()
        plans.append(
            _Utterance(
                speaker=spk,
                sentence=sentence,
                speed=int(rng.integers(spk.speed[0], spk.speed[1] + 1)),
                pitch=_jittered_pitch(spk, int(rng.integers(-4, 5))),
                peak_db=float(rng.uniform(-12.0, -2.0)),
                lead=float(rng.uniform(0.05, 0.25)),
                trail=float(rng.uniform(0.05, 0.25)),
            )
        )
    return plans


def _librispeech_ids(
    plans: Sequence[_Utterance], chapters_per_speaker: int, sep: str = "-"
) -> list:
    """LibriSpeech style (speaker, chapter, index-in-chapter) per plan.

    A speaker's utterances are split into ``chapters_per_speaker``
    consecutive chapters."""
    by_speaker = {}
    for i, plan in enumerate(plans):
        by_speaker.setdefault(plan.speaker.index, []).append(i)
    ids = [None] * len(plans)
    for spk_index, members in by_speaker.items():
        n_chap = max(1, min(chapters_per_speaker, len(members)))
        bounds = np.linspace(0, len(members), n_chap + 1).round().astype(int)
        for c in range(n_chap):
            chapter = str(20000 + 10 * spk_index + c)
            for k, i in enumerate(members[bounds[c] : bounds[c + 1]]):
                ids[i] = (plans[i].speaker.librispeech_id, chapter, k)
    return ids


#: Speaker group (:attr:`PseudoSpeaker.subset`) of the first, second and
#: third subset of every corpus.
_SUBSET_GROUPS = ("train", "dev", "test")


def _start_planning(
    corpus: str,
    seed: int,
    num_utterances: int,
    weights: Sequence[int],
    max_words: int,
) -> tuple:
    """Splits ``num_utterances`` over the subsets (checking it first) and
    seeds the random draws of one corpus.

    Returns ``(counts, rng, sentences)``: the count of each subset, the
    corpus's generator and a sentence generator drawing from it.
    """
    what = "build_" + corpus.replace("-", "_")
    if int(seed) < 0:
        raise ValueError(f"{what}: seed must be non-negative, got {seed}")
    counts = _split_counts(num_utterances, weights, what)
    rng = _rng(seed, corpus)
    return counts, rng, SentenceGenerator(rng, 4, max_words)


def _plan_subsets(
    rng: np.random.Generator,
    sentences: SentenceGenerator,
    subsets: Sequence[str],
    counts: Sequence[int],
    train_chapters: int = 1,
    min_count: int = 1,
    festival: Sequence[str] = (),
) -> Iterable[tuple]:
    """Plans the utterances of each subset, with its own speakers.

    A generator: the utterances of a subset are drawn when the caller asks
    for it, so draws the caller makes between two subsets (paragraphs,
    pairs, gains) keep their place in the random stream.

    Yields ``(subset, count, plans, ids)``: ``max(count, min_count)``
    plans spread over the speakers of the subset's group and their
    LibriSpeech style ``(speaker, chapter, index)`` IDs, with
    ``train_chapters`` chapters per training speaker and one otherwise.
    ``festival`` names the Festival voices whose speakers take part.
    """
    for subset, count, group in zip(subsets, counts, _SUBSET_GROUPS):
        plans = _plan_utterances(
            rng,
            _speakers_of(group, festival=festival),
            max(min_count, count),
            sentences,
        )
        chapters = train_chapters if group == "train" else 1
        yield subset, count, plans, _librispeech_ids(plans, chapters)


def _voice_params(festival_binary: Optional[str], voices: Sequence) -> dict:
    """Marker entries of the Festival voices a corpus uses."""
    if not voices:
        return {"festival_voices": []}
    return {
        "festival_voices": list(voices),
        "festival": festival_version(festival_binary),
    }


def _corpus_params(
    corpus: str, seed: int, num_utterances: int, max_words: int, **extra
) -> dict:
    """Parameters recorded in (and compared with) a corpus's marker."""
    return {
        "corpus": corpus,
        "seed": int(seed),
        "num_utterances": int(num_utterances),
        "max_words": max_words,
        **extra,
    }


# ---------------------------------------------------------------------------
# Rendering and writing
# ---------------------------------------------------------------------------
def _render(plan: _Utterance, rates: Iterable[int], binary: str) -> dict:
    """Synthesises one utterance: int16 waveform per sampling rate.

    ``binary`` is the espeak-ng executable; Festival voices use the
    festival executable that :func:`find_festival` finds."""
    if plan.speaker.engine == "festival":
        wav, src_rate = festival_synthesize(
            plan.sentence.normalized, plan.speaker.voice
        )
        wav = shift_pitch_and_tempo(
            wav, src_rate, semitones=plan.pitch / 4, tempo=plan.speed / 100
        )
    else:
        wav = synthesize(
            plan.sentence.normalized,
            voice=plan.speaker.voice,
            speed=plan.speed,
            pitch=plan.pitch,
            binary=binary,
        )
        src_rate = ESPEAK_SAMPLE_RATE
    wav = trim_silence(wav, src_rate)
    lead = np.zeros(int(round(plan.lead * src_rate)))
    trail = np.zeros(int(round(plan.trail * src_rate)))
    wav = np.concatenate([lead, wav, trail])
    wav *= 10 ** (plan.peak_db / 20) / np.abs(wav).max()
    out = {}
    for rate in rates:
        res = resample(wav, src_rate, rate)
        out[rate] = np.clip(np.round(res * 32768), -32768, 32767).astype(
            np.int16
        )
    return out


def _write_audio(path: Path, data: np.ndarray, rate: int) -> None:
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="PCM_16", format=fmt)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _parallel(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(x) for x in items]`` on a thread pool, in order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _default_workers() -> int:
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def _speakers_txt(
    title: str, minutes: dict, subset_of: dict, gender_of: dict
) -> str:
    lines = [
        f"; {title} synthesised with espeak-ng by "
        "speechbrain_mamba.data.mini_corpus.",
        "; Each speaker is an espeak-ng voice with a fixed pitch and speed "
        "range.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for spk in sorted(minutes, key=int):
        lines.append(
            f"{spk:<5}| {gender_of[spk]} | {subset_of[spk]:<17}| "
            f"{minutes[spk]:5.2f} | {ALL_SPEAKERS[int(spk) - 1001].voice}"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _ChapterLayout:
    """File names and contents of a LibriSpeech style corpus.

    Arguments
    ---------
    rate : int
        Sampling rate of the audio files.
    audio_ext : str
        Audio file extension (``"flac"`` or ``"wav"``).
    transcript_name : callable
        ``(speaker, chapter) -> file name`` of a chapter's transcript.
    transcript_line : callable
        ``(utt_id, sentence) -> line`` of the transcript.
    title : str
        Corpus name in ``SPEAKERS.txt``.
    side_texts : tuple of str
        Sentence attributes also written next to each audio file, as
        ``utt_id.{attribute}.txt``.
    """

    rate: int
    audio_ext: str
    transcript_name: Callable[[str, str], str]
    transcript_line: Callable[[str, Sentence], str]
    title: str
    side_texts: tuple = ()


def _write_chapters(
    tmp: Path,
    jobs: Sequence[tuple],
    binary: str,
    workers: int,
    layout: _ChapterLayout,
) -> int:
    """Writes a LibriSpeech style corpus of read speech.

    Each job ``(subset, speaker, chapter, utt_id, plan)`` becomes
    ``tmp/subset/speaker/chapter/utt_id.{layout.audio_ext}`` (plus its
    ``layout.side_texts``); each chapter gets a transcript with one line
    per utterance, sorted, and ``tmp/SPEAKERS.txt`` lists the speakers.
    Returns the number of files written.
    """
    rate = layout.rate

    def one(job: tuple) -> int:
        subset, spk, chap, utt, plan = job
        folder = tmp / subset / spk / chap
        wav = _render(plan, (rate,), binary)[rate]
        _write_audio(folder / f"{utt}.{layout.audio_ext}", wav, rate)
        for name in layout.side_texts:
            text = getattr(plan.sentence, name)
            _write_text(folder / f"{utt}.{name}.txt", text)
        return len(wav)

    lengths = _parallel(one, jobs, workers)
    chapters, minutes, subset_of, gender_of = {}, {}, {}, {}
    for (subset, spk, chap, utt, plan), n in zip(jobs, lengths):
        chapters.setdefault((subset, spk, chap), []).append(
            layout.transcript_line(utt, plan.sentence)
        )
        minutes[spk] = minutes.get(spk, 0.0) + n / rate / 60
        subset_of[spk] = subset
        gender_of[spk] = plan.speaker.gender
    for (subset, spk, chap), lines in chapters.items():
        _write_text(
            tmp / subset / spk / chap / layout.transcript_name(spk, chap),
            "\n".join(sorted(lines)) + "\n",
        )
    _write_text(
        tmp / "SPEAKERS.txt",
        _speakers_txt(layout.title, minutes, subset_of, gender_of),
    )
    return (1 + len(layout.side_texts)) * len(jobs) + len(chapters) + 1


def _write_mixtures(
    root: Path,
    subset: str,
    name: str,
    rates: Sequence[int],
    modes: Sequence[str],
    inputs: Callable[[int], tuple],
    mix_folder: str,
    peak: Optional[float] = MAX_AMPLITUDE,
) -> dict:
    """Mixes two sources at every rate and mode and writes the results.

    ``inputs(rate)`` gives ``(sources, gains)`` for :func:`mix_sources`;
    the mixture and the two scaled sources go to
    ``root/wav{rate // 1000}k/mode/subset/{mix_folder,s1,s2}/name.wav``.
    Returns the mixture length in samples per ``(rate, mode)``.
    """
    lengths = {}
    for rate in rates:
        sources, gains = inputs(rate)
        for mode in modes:
            folder = root / f"wav{rate // 1000}k" / mode / subset
            m, (s1, s2) = mix_sources(sources, gains, mode, peak=peak)
            for sub, wav in ((mix_folder, m), ("s1", s1), ("s2", s2)):
                _write_audio(folder / sub / f"{name}.wav", wav, rate)
            lengths[(rate, mode)] = len(m)
    return lengths


# ---------------------------------------------------------------------------
# Atomic build with a completion marker
# ---------------------------------------------------------------------------
def _check_workers(num_workers: Optional[int], what: str) -> int:
    """``num_workers``, or the default for ``None``; refuses anything but
    an integer of at least 1 (nothing is clamped silently)."""
    if num_workers is None:
        return _default_workers()
    try:
        if isinstance(num_workers, bool):
            raise TypeError
        workers = operator.index(num_workers)
    except TypeError:
        raise ValueError(
            f"{what}: num_workers must be an integer, got {num_workers!r}"
        ) from None
    if workers < 1:
        raise ValueError(
            f"{what}: num_workers must be at least 1 (or None for the "
            f"default), got {workers}"
        )
    return workers


#: This module's builders as their markers record them.
_GENERATOR = CorpusGenerator(
    name="speechbrain_mamba.data.mini_corpus",
    version=GENERATOR_VERSION,
    marker_name=MARKER_NAME,
    title="the mini corpus generator",
    described=("corpus", "seed", "num_utterances", "max_words"),
)


def _atomic_build(
    out_dir: PathLike,
    params: dict,
    force: bool,
    espeak: Optional[str],
    write: Callable[[Path, Path, str, int], int],
    workers: Optional[int],
) -> Path:
    """Runs ``write(tmp_dir, final_dir, espeak_binary, workers)`` in a
    temporary folder and moves the result to ``out_dir`` with
    :func:`~speechbrain_mamba.data.corpus_folder.build_corpus_folder`,
    which never deletes a file it did not write."""
    what = "build_" + str(params["corpus"]).replace("-", "_")
    final = Path(out_dir).expanduser().resolve()
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder")
    workers = _check_workers(workers, what)
    return build_corpus_folder(
        final,
        _GENERATOR,
        params,
        force,
        espeak,
        lambda tmp, final, binary: write(tmp, final, binary, workers),
        str(params["corpus"]),
    )


def _check_rates(rates: Sequence[int], what: str) -> tuple:
    rates = tuple(sorted({int(r) for r in rates}))
    if not rates or any(r % 1000 or r <= 0 for r in rates):
        raise ValueError(
            f"{what}: sample_rates must be positive multiples of 1000 Hz "
            f"(folders are named wav8k, wav16k, ...), got {rates}"
        )
    return rates


def _check_modes(modes: Sequence[str], what: str) -> tuple:
    modes = tuple(dict.fromkeys(modes))
    if not modes or any(m not in ("min", "max") for m in modes):
        raise ValueError(
            f"{what}: modes must be 'min' and/or 'max', got {modes}"
        )
    return modes


def _draw_pairs(
    rng: np.random.Generator, speaker_of: Sequence[int], count: int
) -> list:
    """Draws ``count`` ordered pairs of pool indices with different
    speakers, avoiding repeated pairs while possible."""
    n = len(speaker_of)
    used = set()
    pairs = []
    for _ in range(count):
        for attempt in range(20):
            i = int(rng.integers(n))
            others = [j for j in range(n) if speaker_of[j] != speaker_of[i]]
            if not others:
                continue
            j = others[int(rng.integers(len(others)))]
            if (i, j) not in used or attempt == 19:
                break
        else:
            raise RuntimeError("need sources from at least two speakers")
        used.add((i, j))
        pairs.append((i, j))
    return pairs


# ---------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------
LIBRISPEECH_SUBSETS = ("train-clean-100", "dev-clean", "test-clean")

_LIBRISPEECH_LAYOUT = _ChapterLayout(
    rate=16000,
    audio_ext="flac",
    transcript_name=lambda spk, chap: f"{spk}-{chap}.trans.txt",
    transcript_line=lambda utt, sentence: (
        f"{utt} {librispeech_text(sentence.normalized)}"
    ),
    title="Mini LibriSpeech",
)


def build_librispeech(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: int = DEFAULT_NUM_UTTERANCES["librispeech"],
    num_workers: Optional[int] = None,
    force: bool = False,
    espeak: Optional[str] = None,
    max_words: int = 10,
) -> Path:
    """Builds a LibriSpeech style corpus (16 kHz FLAC with transcripts).

    Layout::

        out_dir/SPEAKERS.txt
        out_dir/{train-clean-100,dev-clean,test-clean}/SPK/CHAP/
            SPK-CHAP-UTTT.flac
            SPK-CHAP.trans.txt      # "SPK-CHAP-UTTT UPPER CASE TEXT"

    Utterances are split 80/10/10 over the subsets; each subset has its
    own speakers.

    Arguments
    ---------
    out_dir : str or path
        Root of the corpus (what a recipe's ``data_folder`` points to).
    seed : int
        Seed of every random choice.
    num_utterances : int
        Number of utterances over all subsets (at least 3).
    num_workers : int, optional
        Parallel espeak-ng processes, at least 1 (default: twice the CPU
        count, at most 8).
    force : bool
        Rebuild even if ``out_dir`` holds this corpus already.
    espeak : str, optional
        espeak-ng executable to use.
    max_words : int
        Most words per sentence (4 to ``max_words``).

    Returns
    -------
    pathlib.Path
        ``out_dir``, resolved.

    Raises
    ------
    EspeakNotFoundError
        If espeak-ng is not installed.
    FileExistsError
        If ``out_dir`` holds files not made by this generator (named in
        the message), or another build of other parameters finished in
        ``out_dir`` while this one ran.
    ValueError
        If ``seed``, ``num_utterances``, ``num_workers`` or ``max_words``
        is out of range.

    Example
    -------
    >>> root = build_librispeech(tmp_dir / "LibriSpeech", num_utterances=4)
    ... # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['SPEAKERS.txt', 'dev-clean', 'test-clean', 'train-clean-100']
    """
    counts, rng, sentences = _start_planning(
        "librispeech", seed, num_utterances, (8, 1, 1), max_words
    )
    jobs = []  # (subset, speaker, chapter, utt_id, plan)
    for subset, _, plans, ids in _plan_subsets(
        rng, sentences, LIBRISPEECH_SUBSETS, counts, train_chapters=2
    ):
        for plan, (spk, chap, k) in zip(plans, ids):
            jobs.append((subset, spk, chap, f"{spk}-{chap}-{k:04d}", plan))

    def write(tmp: Path, final: Path, binary: str, workers: int) -> int:
        return _write_chapters(tmp, jobs, binary, workers, _LIBRISPEECH_LAYOUT)

    params = _corpus_params("librispeech", seed, num_utterances, max_words)
    return _atomic_build(out_dir, params, force, espeak, write, num_workers)


# ---------------------------------------------------------------------------
# LibriTTS
# ---------------------------------------------------------------------------
_LIBRITTS_LAYOUT = _ChapterLayout(
    rate=24000,
    audio_ext="wav",
    transcript_name=lambda spk, chap: f"{spk}_{chap}.trans.tsv",
    transcript_line=lambda utt, sentence: (
        f"{utt}\t{sentence.original}\t{sentence.normalized}"
    ),
    title="Mini LibriTTS",
    side_texts=("normalized", "original"),
)


def build_libritts(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: int = DEFAULT_NUM_UTTERANCES["libritts"],
    num_workers: Optional[int] = None,
    force: bool = False,
    espeak: Optional[str] = None,
    max_words: int = 10,
) -> Path:
    """Builds a LibriTTS style corpus (24 kHz WAV, original and normalised
    text).

    Layout::

        out_dir/SPEAKERS.txt
        out_dir/{train-clean-100,dev-clean,test-clean}/SPK/CHAP/
            SPK_CHAP_PPPPPP_SSSSSS.wav
            SPK_CHAP_PPPPPP_SSSSSS.normalized.txt   # spoken text
            SPK_CHAP_PPPPPP_SSSSSS.original.txt     # with digits, "Mr."
            SPK_CHAP.trans.tsv   # "ID<TAB>original<TAB>normalized"

    ``PPPPPP`` is the paragraph and ``SSSSSS`` the sentence in it.
    Utterances are split 80/10/10 over the subsets, each with its own
    speakers.

    Arguments
    ---------
    out_dir : str or path
        Root of the corpus (what a recipe's ``data_folder`` points to).
    seed : int
        Seed of every random choice.
    num_utterances : int
        Number of utterances over all subsets (at least 3).
    num_workers : int, optional
        Parallel espeak-ng processes.
    force : bool
        Rebuild even if ``out_dir`` holds this corpus already.
    espeak : str, optional
        espeak-ng executable to use.
    max_words : int
        Most words per sentence.

    Returns
    -------
    pathlib.Path
        ``out_dir``, resolved.

    Example
    -------
    >>> root = build_libritts(tmp_dir / "LibriTTS", num_utterances=4)
    ... # doctest: +SKIP
    """
    counts, rng, sentences = _start_planning(
        "libritts", seed, num_utterances, (8, 1, 1), max_words
    )
    jobs = []  # (subset, speaker, chapter, utt_id, plan)
    for subset, _, plans, ids in _plan_subsets(
        rng, sentences, LIBRISPEECH_SUBSETS, counts, train_chapters=2
    ):
        paragraph = {}  # chapter -> (paragraph, sentence, left in paragraph)
        for plan, (spk, chap, _) in zip(plans, ids):
            par, sent, left = paragraph.get(chap, (-1, 0, 0))
            if left == 0:
                par, sent, left = par + 1, 0, int(rng.integers(1, 4))
            else:
                sent += 1
            paragraph[chap] = (par, sent, left - 1)
            utt = f"{spk}_{chap}_{par:06d}_{sent:06d}"
            jobs.append((subset, spk, chap, utt, plan))

    def write(tmp: Path, final: Path, binary: str, workers: int) -> int:
        return _write_chapters(tmp, jobs, binary, workers, _LIBRITTS_LAYOUT)

    params = _corpus_params("libritts", seed, num_utterances, max_words)
    return _atomic_build(out_dir, params, force, espeak, write, num_workers)


# ---------------------------------------------------------------------------
# WSJ0-2mix
# ---------------------------------------------------------------------------
WSJ0_2MIX_SUBSETS = ("tr", "cv", "tt")


def _format_snr(value: float) -> str:
    """MATLAB ``num2str`` style: 5 significant digits."""
    return f"{value:.5g}"


def _negate_snr(text: str) -> str:
    return text[1:] if text.startswith("-") else "-" + text


def _mix_wsj0_pair(
    root: Path,
    subset: str,
    name: str,
    snr1: str,
    first: tuple,
    second: tuple,
    modes: Sequence[str],
) -> None:
    """Writes one WSJ0-2mix mixture at every rate of its sources.

    ``first`` and ``second`` are ``(waveforms, active levels)``, each a
    dict keyed by sampling rate; the sources are scaled to ``+-snr1`` dB
    relative to their active levels."""
    w1 = 10 ** (float(snr1) / 20)
    w2 = 10 ** (float(_negate_snr(snr1)) / 20)

    def inputs(rate):
        sources = [first[0][rate], second[0][rate]]
        return sources, [w1 / first[1][rate], w2 / second[1][rate]]

    _write_mixtures(root, subset, name, sorted(first[0]), modes, inputs, "mix")


def remix_wsj0_2mix(
    root: PathLike,
    modes: Sequence[str] = ("min",),
    num_workers: Optional[int] = None,
) -> int:
    """Writes the 8 kHz mixtures of a mini WSJ0-2mix corpus again from its
    single-speaker sources and mixing lists.

    WSJ0-2mix itself is distributed this way (sources, lists and a mixing
    script): a corpus moved to another machine needs only ``wsj0/`` (which
    may be stored as FLAC: ``.flac`` files are read where the lists name a
    ``.wav`` that is missing) and ``mix_2_spk_{tr,cv,tt}.txt``. The result
    is identical to what :func:`build_wsj0_2mix` wrote at 8 kHz.

    Arguments
    ---------
    root : str or path
        Corpus root (holding ``wsj0`` and the lists).
    modes : sequence of str
        ``"min"`` and/or ``"max"``.
    num_workers : int, optional
        Parallel threads.

    Returns
    -------
    int
        Number of mixtures written.

    Example
    -------
    >>> root = build_wsj0_2mix(tmp_dir / "wsj0-2mix", num_utterances=6)
    ... # doctest: +SKIP
    >>> remix_wsj0_2mix(root)  # doctest: +SKIP
    6
    """
    root = Path(root)
    modes = _check_modes(modes, "remix_wsj0_2mix")
    workers = _check_workers(num_workers, "remix_wsj0_2mix")
    jobs = []
    for subset in WSJ0_2MIX_SUBSETS:
        listing = root / f"mix_2_spk_{subset}.txt"
        if not listing.is_file():
            raise FileNotFoundError(
                f"remix_wsj0_2mix: {listing} is missing (a mini WSJ0-2mix "
                "corpus has mix_2_spk_tr.txt, _cv.txt and _tt.txt)"
            )
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line.strip():
                src1, snr1, src2, _ = line.split()
                jobs.append((subset, src1, snr1, src2))

    def source(rel: str) -> tuple:
        path = root / rel
        if not path.is_file() and path.with_suffix(".flac").is_file():
            path = path.with_suffix(".flac")
        data, rate = sf.read(str(path), dtype="int16")
        if rate != 8000:
            raise ValueError(f"remix_wsj0_2mix: {path} is not 8 kHz")
        wav = data.astype(np.float64) / 32768.0
        return {8000: wav}, {8000: active_level(wav, 8000)}

    def mix(job):
        subset, src1, snr1, src2 = job
        name = f"{Path(src1).stem}_{snr1}_{Path(src2).stem}_{_negate_snr(snr1)}"
        _mix_wsj0_pair(
            root, subset, name, snr1, source(src1), source(src2), modes
        )

    _parallel(mix, jobs, workers)
    return len(jobs)


def build_wsj0_2mix(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: int = DEFAULT_NUM_UTTERANCES["wsj0-2mix"],
    num_workers: Optional[int] = None,
    force: bool = False,
    espeak: Optional[str] = None,
    sample_rates: Sequence[int] = (8000,),
    modes: Sequence[str] = ("min",),
    max_words: int = 10,
    voices: str = "auto",
) -> Path:
    """Builds a WSJ0-2mix style corpus and its single-speaker sources.

    Layout::

        out_dir/wav8k/min/{tr,cv,tt}/{mix,s1,s2}/NAME.wav
        out_dir/wsj0/si_tr_s/SPK/UTT.wav     # tr and cv sources (8 kHz)
        out_dir/wsj0/si_dt_05/SPK/UTT.wav    # tt sources (dev speakers)
        out_dir/wsj0/si_et_05/SPK/UTT.wav    # tt sources (test speakers)
        out_dir/mix_2_spk_{tr,cv,tt}.txt     # "src1 snr1 src2 snr2" lines

    ``NAME`` is ``UTT1_SNR1_UTT2_SNR2`` with ``SNR2 = -SNR1`` and
    ``|SNR1|`` uniform in [0, 2.5] dB, so ``s1`` is ``2 * SNR1`` dB
    louder than ``s2`` (active speech levels of the full sources). As in
    the original MATLAB scripts, ``min`` mixtures end with the shorter
    source, ``max`` ones pad it with zeros, and sources and mixture are
    scaled together to a peak of 0.9. ``mix`` is exactly ``s1 + s2`` in
    16-bit samples. Mixtures are split 200/40/40 (in proportion); tr and cv
    use the training speakers, tt the dev and test ones (unseen voices).

    Arguments
    ---------
    out_dir : str or path
        Root of the corpus (the folder holding ``wav8k``).
    seed : int
        Seed of every random choice.
    num_utterances : int
        Number of mixtures over tr, cv and tt (at least 3). The source
        pools hold as many utterances as there are mixtures.
    num_workers : int, optional
        Parallel espeak-ng processes.
    force : bool
        Rebuild even if ``out_dir`` holds this corpus already.
    espeak : str, optional
        espeak-ng executable to use.
    sample_rates : sequence of int
        Mixture sampling rates (``wav{rate // 1000}k`` folders).
    modes : sequence of str
        ``"min"`` and/or ``"max"``.
    max_words : int
        Most words per sentence.
    voices : str
        ``"auto"``: espeak-ng's pseudo-speakers and those of Festival's
        voices (recordings of real speakers, see
        :data:`FESTIVAL_SPEAKERS`) where Festival is installed, with a
        warning where it is not; ``"festival"``: the same, but an error
        without Festival; ``"espeak"``: espeak-ng only.

    Returns
    -------
    pathlib.Path
        ``out_dir``, resolved.

    Example
    -------
    >>> root = build_wsj0_2mix(tmp_dir / "wsj0-2mix", num_utterances=6)
    ... # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['mix_2_spk_cv.txt', 'mix_2_spk_tr.txt', 'mix_2_spk_tt.txt', 'wav8k',
     'wsj0']
    """
    rates = _check_rates(sample_rates, "build_wsj0_2mix")
    modes = _check_modes(modes, "build_wsj0_2mix")
    (n_tr, n_cv, n_tt), rng, sentences = _start_planning(
        "wsj0-2mix", seed, num_utterances, (5, 1, 1), max_words
    )
    festival_binary, festival = _festival_setup(voices, "build_wsj0_2mix")

    # Source pools: si_tr_s for tr/cv, si_dt_05 + si_et_05 for tt.
    pools = {
        "train": _plan_utterances(
            rng,
            _speakers_of("train", festival=festival),
            max(2, n_tr + n_cv),
            sentences,
        ),
        "eval": _plan_utterances(
            rng,
            _speakers_of("dev", "test", festival=festival),
            max(2, n_tt),
            sentences,
        ),
    }
    sources = []  # (relative path, plan, utt id)
    pool_index = {}
    for name, plans in pools.items():
        counter = {}
        for i, plan in enumerate(plans):
            spk = plan.speaker.wsj_id
            k = counter.get(spk, 0)
            counter[spk] = k + 1
            utt = f"{spk}c{k // 26:03d}{chr(ord('a') + k % 26)}"
            folder = {"train": "si_tr_s", "dev": "si_dt_05", "test": "si_et_05"}
            rel = f"wsj0/{folder[plan.speaker.subset]}/{spk}/{utt}.wav"
            pool_index[(name, i)] = len(sources)
            sources.append((rel, plan, utt))

    mixtures = []  # (subset, name, src index 1, src index 2, snr1)
    for subset, count, pool in (
        ("tr", n_tr, "train"),
        ("cv", n_cv, "train"),
        ("tt", n_tt, "eval"),
    ):
        speaker_of = [p.speaker.index for p in pools[pool]]
        for i, j in _draw_pairs(rng, speaker_of, count):
            snr = 0.0
            while snr < 1e-3:  # keep num2str-style names plain decimals
                snr = float(rng.uniform(0.0, 2.5))
            if rng.random() < 0.5:
                snr = -snr
            snr1 = _format_snr(snr)
            a, b = pool_index[(pool, i)], pool_index[(pool, j)]
            name = f"{sources[a][2]}_{snr1}_{sources[b][2]}_{_negate_snr(snr1)}"
            mixtures.append((subset, name, a, b, snr1))

    def write(tmp: Path, final: Path, binary: str, workers: int) -> int:
        src_rates = tuple(sorted(set(rates) | {8000}))

        def render(src):
            rel, plan, _ = src
            wavs = _render(plan, src_rates, binary)
            _write_audio(tmp / rel, wavs[8000], 8000)
            wavs = {r: wavs[r] / 32768.0 for r in rates}
            levels = {r: active_level(w, r) for r, w in wavs.items()}
            return wavs, levels

        rendered = _parallel(render, sources, workers)

        def mix(mixture):
            subset, name, a, b, snr1 = mixture
            _mix_wsj0_pair(
                tmp, subset, name, snr1, rendered[a], rendered[b], modes
            )

        _parallel(mix, mixtures, workers)
        for subset in WSJ0_2MIX_SUBSETS:
            lines = [
                f"{sources[a][0]} {snr1} {sources[b][0]} {_negate_snr(snr1)}"
                for sub, _, a, b, snr1 in mixtures
                if sub == subset
            ]
            _write_text(
                tmp / f"mix_2_spk_{subset}.txt", "\n".join(lines) + "\n"
            )
        return len(sources) + 3 * len(mixtures) * len(rates) * len(modes) + 3

    params = _corpus_params(
        "wsj0-2mix",
        seed,
        num_utterances,
        max_words,
        sample_rates=list(rates),
        modes=list(modes),
        **_voice_params(festival_binary, festival),
    )
    return _atomic_build(out_dir, params, force, espeak, write, num_workers)


# ---------------------------------------------------------------------------
# Libri2Mix
# ---------------------------------------------------------------------------
LIBRIMIX_SUBSETS = ("train-360", "dev", "test")
LIBRIMIX_COLUMNS = (
    "mixture_ID",
    "mixture_path",
    "source_1_path",
    "source_2_path",
    "length",
)


def build_librimix(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: int = DEFAULT_NUM_UTTERANCES["librimix"],
    num_workers: Optional[int] = None,
    force: bool = False,
    espeak: Optional[str] = None,
    sample_rates: Sequence[int] = (8000, 16000),
    modes: Sequence[str] = ("min", "max"),
    max_words: int = 10,
    voices: str = "auto",
) -> Path:
    """Builds a Libri2Mix style corpus (clean two-speaker mixtures).

    Layout::

        out_dir/Libri2Mix/wav{8k,16k}/{min,max}/{train-360,dev,test}/
            {mix_clean,s1,s2}/ID1_ID2.wav
        out_dir/Libri2Mix/wav{8k,16k}/{min,max}/metadata/
            mixture_{subset}_mix_clean.csv

    The CSV columns are LibriMix's ``mixture_ID, mixture_path,
    source_1_path, source_2_path, length`` (absolute paths, length in
    samples). ``ID1`` and ``ID2`` are LibriSpeech style utterance IDs. As
    in LibriMix, each 16 kHz source is scaled to a random level between
    -33 and -25 dB (active RMS, standing in for LUFS), the gains are lowered
    together if the mixture would exceed 0.9, and the same gains serve
    every sampling rate and mode; 8 kHz files are resampled from 16 kHz.
    ``mix_clean`` is exactly ``s1 + s2`` in 16-bit samples; ``min``
    files are the first samples of the ``max`` ones.

    Arguments
    ---------
    out_dir : str or path
        Root of the LibriMix storage (``Libri2Mix`` is created in it).
    seed : int
        Seed of every random choice.
    num_utterances : int
        Number of mixtures over all subsets (at least 3), split 5:1:1.
    num_workers : int, optional
        Parallel espeak-ng processes.
    force : bool
        Rebuild even if ``out_dir`` holds this corpus already.
    espeak : str, optional
        espeak-ng executable to use.
    sample_rates : sequence of int
        Sampling rates (at most 16000 Hz).
    modes : sequence of str
        ``"min"`` and/or ``"max"``.
    max_words : int
        Most words per sentence.
    voices : str
        ``"auto"``: espeak-ng's pseudo-speakers and those of Festival's
        voices (recordings of real speakers, see
        :data:`FESTIVAL_SPEAKERS`) where Festival is installed, with a
        warning where it is not; ``"festival"``: the same, but an error
        without Festival; ``"espeak"``: espeak-ng only.

    Returns
    -------
    pathlib.Path
        ``out_dir / "Libri2Mix"`` (what a recipe's ``data_folder`` points
        to).

    Example
    -------
    >>> root = build_librimix(tmp_dir / "LibriMix", num_utterances=6)
    ... # doctest: +SKIP
    >>> root.name  # doctest: +SKIP
    'Libri2Mix'
    """
    rates = _check_rates(sample_rates, "build_librimix")
    if max(rates) > 16000:
        raise ValueError(
            "build_librimix: LibriMix sources are 16 kHz; sample_rates must "
            f"be at most 16000, got {rates}"
        )
    modes = _check_modes(modes, "build_librimix")
    counts, rng, sentences = _start_planning(
        "librimix", seed, num_utterances, (5, 1, 1), max_words
    )
    festival_binary, festival = _festival_setup(voices, "build_librimix")
    sources = []  # (utt id, plan)
    mixtures = []  # (subset, mixture id, src index 1, src index 2, gains dB)
    for subset, count, plans, ids in _plan_subsets(
        rng, sentences, LIBRIMIX_SUBSETS, counts, 1, 2, festival
    ):
        offset = len(sources)
        for plan, (spk, chap, k) in zip(plans, ids):
            sources.append((f"{spk}-{chap}-{k:04d}", plan))
        speaker_of = [p.speaker.index for p in plans]
        for i, j in _draw_pairs(rng, speaker_of, count):
            a, b = offset + i, offset + j
            loudness = rng.uniform(-33.0, -25.0, size=2)
            name = f"{sources[a][0]}_{sources[b][0]}"
            mixtures.append((subset, name, a, b, tuple(loudness)))

    def write(tmp: Path, final: Path, binary: str, workers: int) -> int:
        def render(src):
            wav16 = _render(src[1], (16000,), binary)[16000] / 32768.0
            wavs = {r: resample(wav16, 16000, r) for r in rates}
            return wavs, wav16, active_level(wav16, 16000)

        rendered = _parallel(render, sources, workers)

        def mix(mixture):
            subset, name, a, b, loudness = mixture
            x1, x2 = rendered[a][1], rendered[b][1]
            gains = [
                10 ** (loudness[0] / 20) / rendered[a][2],
                10 ** (loudness[1] / 20) / rendered[b][2],
            ]
            # Lower the gains together if the longest mixture would clip.
            n = max(len(x1), len(x2))
            y1, y2 = gains[0] * x1, gains[1] * x2
            peak = max(
                np.abs(y1).max(),
                np.abs(y2).max(),
                np.abs(
                    np.pad(y1, (0, n - len(y1))) + np.pad(y2, (0, n - len(y2)))
                ).max(),
            )
            if peak > MAX_AMPLITUDE:
                gains = [g * MAX_AMPLITUDE / peak for g in gains]
            return _write_mixtures(
                tmp / "Libri2Mix",
                subset,
                name,
                rates,
                modes,
                lambda rate: (
                    (rendered[a][0][rate], rendered[b][0][rate]),
                    gains,
                ),
                "mix_clean",
                peak=None,
            )

        lengths = _parallel(mix, mixtures, workers)
        for rate in rates:
            for mode in modes:
                rel = f"wav{rate // 1000}k/{mode}"
                for subset in LIBRIMIX_SUBSETS:
                    buf = io.StringIO()
                    writer = csv.writer(buf, lineterminator="\n")
                    writer.writerow(LIBRIMIX_COLUMNS)
                    for (sub, name, *_), n in zip(mixtures, lengths):
                        if sub != subset:
                            continue
                        base = final / "Libri2Mix" / rel / subset
                        writer.writerow(
                            [
                                name,
                                str(base / "mix_clean" / f"{name}.wav"),
                                str(base / "s1" / f"{name}.wav"),
                                str(base / "s2" / f"{name}.wav"),
                                n[(rate, mode)],
                            ]
                        )
                    _write_text(
                        tmp
                        / "Libri2Mix"
                        / rel
                        / "metadata"
                        / f"mixture_{subset}_mix_clean.csv",
                        buf.getvalue(),
                    )
        n_variants = len(rates) * len(modes)
        return n_variants * (3 * len(mixtures) + len(LIBRIMIX_SUBSETS))

    params = _corpus_params(
        "librimix",
        seed,
        num_utterances,
        max_words,
        sample_rates=list(rates),
        modes=list(modes),
        **_voice_params(festival_binary, festival),
    )
    root = _atomic_build(out_dir, params, force, espeak, write, num_workers)
    return root / "Libri2Mix"


# ---------------------------------------------------------------------------
# All corpora and command line
# ---------------------------------------------------------------------------
#: Sub-folder of each corpus when all are built into one folder.
ALL_SUBFOLDERS = {
    "librispeech": "LibriSpeech",
    "wsj0-2mix": "wsj0-2mix",
    "librimix": "LibriMix",
    "libritts": "LibriTTS",
}

_BUILDERS = {
    "librispeech": build_librispeech,
    "wsj0-2mix": build_wsj0_2mix,
    "librimix": build_librimix,
    "libritts": build_libritts,
}


def build_all(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: Optional[int] = None,
    num_workers: Optional[int] = None,
    force: bool = False,
    espeak: Optional[str] = None,
) -> dict:
    """Builds every corpus into sub-folders of ``out_dir``.

    The sub-folders are ``LibriSpeech``, ``wsj0-2mix``, ``LibriMix`` (with
    ``Libri2Mix`` inside) and ``LibriTTS``.

    Arguments
    ---------
    out_dir : str or path
        Parent folder.
    seed : int
        Seed of every random choice.
    num_utterances : int, optional
        Utterances (or mixtures) per corpus; the defaults of
        :data:`DEFAULT_NUM_UTTERANCES` if omitted.
    num_workers : int, optional
        Parallel espeak-ng processes.
    force : bool
        Rebuild corpora that exist already.
    espeak : str, optional
        espeak-ng executable to use.

    Returns
    -------
    dict
        Corpus name -> data folder (as returned by each builder).

    Example
    -------
    >>> folders = build_all(tmp_dir / "corpora", num_utterances=6)
    ... # doctest: +SKIP
    >>> sorted(folders)  # doctest: +SKIP
    ['librimix', 'librispeech', 'libritts', 'wsj0-2mix']
    """
    out = {}
    for name, builder in _BUILDERS.items():
        n = (
            DEFAULT_NUM_UTTERANCES[name]
            if num_utterances is None
            else (num_utterances)
        )
        out[name] = builder(
            Path(out_dir) / ALL_SUBFOLDERS[name],
            seed=seed,
            num_utterances=n,
            num_workers=num_workers,
            force=force,
            espeak=espeak,
        )
    return out


def _max_words(text: str) -> int:
    """``--max-words``: an integer of at least 4 (the shortest sentences
    have 4 words)."""
    value = positive_int(text)
    if value < 4:
        raise argparse.ArgumentTypeError(
            f"expected an integer of at least 4, got {text!r}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.data.mini_corpus",
        description=(
            "Build small speech corpora synthesised with espeak-ng (and, "
            "for wsj0-2mix and librimix, Festival's voices) in the layouts "
            "of LibriSpeech, WSJ0-2mix, Libri2Mix and LibriTTS. "
            "Deterministic from the seed. Never deletes files it did not "
            "write."
        ),
    )
    parser.add_argument(
        "corpus",
        choices=(*CORPORA, "all"),
        help="corpus to build; 'all' builds each into a sub-folder of --out "
        f"({', '.join(ALL_SUBFOLDERS.values())})",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (corpus root)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (>= 0)"
    )
    parser.add_argument(
        "-n",
        "--num-utterances",
        type=positive_int,
        default=None,
        help="utterances (LibriSpeech, LibriTTS) or mixtures (WSJ0-2mix, "
        "Libri2Mix) over all subsets; defaults: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_NUM_UTTERANCES.items()),
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="parallel synthesis processes, at least 1 (default: 2 x CPUs, "
        "at most 8)",
    )
    parser.add_argument(
        "--sample-rates",
        type=positive_int,
        nargs="+",
        default=None,
        help="mixture sampling rates for wsj0-2mix (default 8000) and "
        "librimix (default 8000 16000)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("min", "max"),
        default=None,
        help="mixture modes for wsj0-2mix (default min) and librimix "
        "(default min max)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if up to date (files the generator did not write "
        "are never deleted: a folder holding any is refused)",
    )
    parser.add_argument(
        "--espeak", default=None, help="espeak-ng executable to use"
    )
    parser.add_argument(
        "--max-words",
        type=_max_words,
        default=None,
        help="most words per sentence (default 10; sentences have 4 or more)",
    )
    parser.add_argument(
        "--voices",
        choices=VOICE_SETS,
        default=None,
        help="voices of wsj0-2mix and librimix: 'auto' (default: Festival's "
        "voices where installed, plus espeak-ng), 'festival' (error without "
        "Festival) or 'espeak'",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only print errors"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point.

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 on a clear error (message printed).

    Example
    -------
    >>> main(["librispeech", "--out", "unused", "-n", "2", "-q"])
    1
    """
    args = _parser().parse_args(argv)
    if not args.quiet:
        logging.basicConfig(
            level=logging.INFO, format="%(message)s", stream=sys.stdout
        )
    options = {}
    if args.sample_rates or args.modes or args.voices:
        if args.corpus not in ("wsj0-2mix", "librimix"):
            print(
                "error: --sample-rates, --modes and --voices apply to one "
                "mixture corpus (wsj0-2mix or librimix)",
                file=sys.stderr,
            )
            return 1
        if args.voices:
            options["voices"] = args.voices
    if args.max_words is not None:
        if args.corpus == "all":
            print("error: --max-words applies to one corpus", file=sys.stderr)
            return 1
        options["max_words"] = args.max_words
    if args.sample_rates:
        options["sample_rates"] = args.sample_rates
    if args.modes:
        options["modes"] = args.modes
    start = time.perf_counter()
    try:
        if args.corpus == "all":
            folders = build_all(
                args.out,
                seed=args.seed,
                num_utterances=args.num_utterances,
                num_workers=args.workers,
                force=args.force,
                espeak=args.espeak,
            )
        else:
            n = args.num_utterances
            if n is None:
                n = DEFAULT_NUM_UTTERANCES[args.corpus]
            folders = {
                args.corpus: _BUILDERS[args.corpus](
                    args.out,
                    seed=args.seed,
                    num_utterances=n,
                    num_workers=args.workers,
                    force=args.force,
                    espeak=args.espeak,
                    **options,
                )
            }
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        for name, folder in folders.items():
            print(f"{name}: {folder}")
        print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
