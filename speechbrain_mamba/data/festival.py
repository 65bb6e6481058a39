"""Speech synthesis with the Festival speech synthesis system.

Festival's diphone and unit-selection voices (Debian packages
``festvox-kallpc16k``, ``festvox-kdlpc16k``, ``festvox-us-slt-hts`` and the
non-English ``festvox-*`` voices) concatenate or model real recordings of
human speakers, so their output is much closer to natural speech than
espeak-ng's formant synthesis. The mini separation corpora use them beside
espeak-ng; the language of a voice does not matter for separation, so every
voice reads the same English sentences.

Each call starts ``festival --pipe`` with a three-line Scheme program (pick
the voice, synthesise, save), which takes 0.1 to 0.5 s per sentence. The
output is deterministic for the same text, voice and Festival version.
Pitch and tempo variants (pseudo-speakers) are made afterwards with sox's
``pitch`` and ``tempo`` effects (:func:`shift_pitch_and_tempo`): a pitch
shift by resampling also moves the formants, as a shorter or longer vocal
tract would.

Author
------
speechbrain-mamba developers
"""

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf

#: Environment variable naming a festival executable to use.
FESTIVAL_ENV_VAR = "SBMAMBA_FESTIVAL"

_INSTALL_HINT = (
    "Install it with `sudo apt-get install festival festvox-kallpc16k "
    "festvox-kdlpc16k festvox-us-slt-hts sox` (Debian/Ubuntu; "
    "tools/install.sh does this), or set {var} to the executable."
)


class FestivalNotFoundError(FileNotFoundError):
    """Raised when Festival (or sox, which makes its variants) is missing."""


@dataclass(frozen=True)
class FestivalVoice:
    """A Festival voice and what it is.

    Arguments
    ---------
    name : str
        Festival voice name (``voice_<name>`` selects it).
    language : str
        ISO 639-1 code of the language it was recorded in.
    gender : str
        ``"M"`` or ``"F"``.
    package : str
        Debian package that installs it.
    """

    name: str
    language: str
    gender: str
    package: str


#: Festival voices that speak English text without failing (checked with
#: Debian 12's packages). The Indian-language NSK voices crash on English
#: text and are left out.
FESTIVAL_VOICES = (
    FestivalVoice("kal_diphone", "en", "M", "festvox-kallpc16k"),
    FestivalVoice("ked_diphone", "en", "M", "festvox-kdlpc16k"),
    FestivalVoice("cmu_us_slt_arctic_hts", "en", "F", "festvox-us-slt-hts"),
    FestivalVoice("upc_ca_ona_hts", "ca", "F", "festvox-ca-ona-hts"),
    FestivalVoice("suo_fi_lj_diphone", "fi", "F", "festvox-suopuhe-lj"),
    FestivalVoice("hy_fi_mv_diphone", "fi", "M", "festvox-suopuhe-mv"),
    FestivalVoice("pc_diphone", "it", "M", "festvox-itapc16k"),
    FestivalVoice("lp_diphone", "it", "F", "festvox-italp16k"),
    FestivalVoice("msu_ru_nsh_clunits", "ru", "M", "festvox-ru"),
    FestivalVoice("czech_dita", "cs", "F", "festvox-czech-dita"),
    FestivalVoice("czech_krb", "cs", "M", "festvox-czech-krb"),
    FestivalVoice("czech_machac", "cs", "M", "festvox-czech-machac"),
    FestivalVoice("czech_ph", "cs", "M", "festvox-czech-ph"),
)

_VOICES_BY_NAME = {v.name: v for v in FESTIVAL_VOICES}


def find_festival(binary: Optional[str] = None) -> str:
    """Returns the path of the festival executable.

    The search order is: the ``binary`` argument, the environment variable
    ``SBMAMBA_FESTIVAL``, then ``festival`` on the ``PATH``.

    Arguments
    ---------
    binary : str, optional
        A program name or path to use instead of searching.

    Returns
    -------
    str
        Path of the executable.

    Raises
    ------
    FestivalNotFoundError
        If no executable is found.

    Example
    -------
    >>> find_festival("/no/such/festival")
    Traceback (most recent call last):
    ...
    speechbrain_mamba.data.festival.FestivalNotFoundError: festival not ...
    """
    candidate = binary or os.environ.get(FESTIVAL_ENV_VAR) or "festival"
    path = shutil.which(candidate)
    if path is None:
        raise FestivalNotFoundError(
            f"festival not found ({candidate!r}). "
            + _INSTALL_HINT.format(var=FESTIVAL_ENV_VAR)
        )
    return path


def _run(cmd: list, what: str, timeout: float, data: bytes = b"") -> bytes:
    proc = subprocess.run(
        cmd, input=data, capture_output=True, check=False, timeout=timeout
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-400:]
        code = proc.returncode
        raise RuntimeError(f"{what} failed (exit code {code}): {err}")
    return proc.stdout


@functools.lru_cache(maxsize=None)
def _installed_voices(path: str) -> tuple:
    out = _run(
        [path, "--pipe"],
        "festival (voice.list)",
        60.0,
        b"(print (voice.list))\n",
    ).decode("utf-8", "replace")
    start, end = out.rfind("("), out.rfind(")")
    return tuple(out[start + 1 : end].split()) if 0 <= start < end else ()


def festival_voices(binary: Optional[str] = None) -> tuple:
    """The voices of :data:`FESTIVAL_VOICES` that are installed.

    Arguments
    ---------
    binary : str, optional
        festival executable; none installed gives an empty tuple.

    Returns
    -------
    tuple of FestivalVoice
        Installed voices, in the order of :data:`FESTIVAL_VOICES`.

    Example
    -------
    >>> voices = festival_voices()
    >>> all(v in FESTIVAL_VOICES for v in voices)
    True
    """
    try:
        path = find_festival(binary)
    except FestivalNotFoundError:
        return ()
    names = set(_installed_voices(path))
    return tuple(v for v in FESTIVAL_VOICES if v.name in names)


def festival_version(binary: Optional[str] = None) -> str:
    """Version line of festival, recorded in corpus markers.

    Arguments
    ---------
    binary : str, optional
        festival executable.

    Returns
    -------
    str
        E.g. ``"Festival Speech Synthesis System: 2.5.0..."`` (without
        the executable's path, so that it is the same on every machine).

    Example
    -------
    >>> festival_version().startswith("Festival Speech Synthesis")
    True
    """
    path = find_festival(binary)
    out = _run([path, "--version"], "festival --version", 60.0)
    line = out.decode("utf-8", "replace").strip().splitlines()[0]
    return line.split(": ", 1)[-1]


def _scheme_string(text: str) -> str:
    """``text`` as a Scheme string literal (quotes and backslashes
    escaped, control characters as spaces)."""
    clean = "".join(" " if ord(c) < 32 else c for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain_texts(text: str) -> tuple:
    """The text, then simpler spellings of it: some voices' intonation
    models fail on questions or on a missing final full stop (Festival
    then writes nothing and still exits with 0).

    >>> _plain_texts("Where did he go?")
    ('Where did he go?', 'Where did he go.', 'where did he go.')
    """
    statement = text.rstrip().rstrip("?!.,;:") + "."
    words = "".join(c if c.isalnum() or c in " '" else " " for c in text)
    plain = " ".join(words.lower().split()) + "."
    return tuple(dict.fromkeys((text, statement, plain)))


def _synthesize_once(
    path: str, text: str, voice: str, timeout: float
) -> Optional[tuple]:
    """One festival run: ``(wav, rate)``, or None if it wrote no audio."""
    with tempfile.TemporaryDirectory(prefix="sbmamba-festival-") as tmp:
        out = os.path.join(tmp, "out.wav")
        program = (
            f"(voice_{voice})\n"
            f"(set! u (utt.synth (Utterance Text {_scheme_string(text)})))\n"
            f"(utt.save.wave u {_scheme_string(out)} 'riff)\n"
        )
        _run([path, "--pipe"], f"festival ({voice})", timeout, program.encode())
        if not os.path.exists(out):
            return None
        wav, rate = sf.read(out, dtype="float64", always_2d=True)
    return wav, int(rate)


def synthesize(
    text: str,
    voice: str = "kal_diphone",
    binary: Optional[str] = None,
    timeout: float = 120.0,
) -> tuple:
    """Synthesises text with a Festival voice.

    Arguments
    ---------
    text : str
        The text to speak (one or more sentences).
    voice : str
        A voice of :data:`FESTIVAL_VOICES`.
    binary : str, optional
        festival executable; found with :func:`find_festival` if omitted.
    timeout : float
        Seconds after which synthesis is abandoned.

    Returns
    -------
    wav : numpy.ndarray
        Mono float64 waveform in [-1, 1].
    sample_rate : int
        Its sampling rate (the voice's own: 16, 22.05, 32 or 44.1 kHz).

    Raises
    ------
    FestivalNotFoundError
        If festival is not installed.
    ValueError
        If the text is empty or the voice unknown or not installed.
    RuntimeError
        If festival fails or returns no audio.

    Example
    -------
    >>> wav, rate = synthesize("hello world", voice="kal_diphone")
    >>> wav.ndim, rate, 0.3 < len(wav) / rate < 3
    (1, 16000, True)
    >>> wav, rate = synthesize("Where did he go?", voice="lp_diphone")
    >>> rate, bool(np.abs(wav).max() > 0.01)
    (16000, True)
    """
    if not text or not text.strip():
        raise ValueError("festival.synthesize: the text is empty")
    if voice not in _VOICES_BY_NAME:
        raise ValueError(
            f"festival.synthesize: unknown voice {voice!r}; known voices: "
            f"{', '.join(sorted(_VOICES_BY_NAME))}"
        )
    path = find_festival(binary)
    if voice not in _installed_voices(path):
        raise ValueError(
            f"festival voice {voice!r} is not installed: install the Debian "
            f"package {_VOICES_BY_NAME[voice].package}"
        )
    for attempt in _plain_texts(text):
        result = _synthesize_once(path, attempt, voice, timeout)
        if result is not None:
            break
    else:
        raise RuntimeError(
            f"festival wrote no audio for voice {voice!r} and text {text!r} "
            "(also tried without punctuation)"
        )
    wav, rate = result
    wav = wav.mean(axis=1)
    if wav.size == 0 or not np.any(wav):
        raise RuntimeError(
            f"festival returned silence for voice {voice!r} and text {text!r}"
        )
    return wav, int(rate)


def find_sox() -> str:
    """Path of the sox executable (it makes the pitch and tempo variants).

    Returns
    -------
    str
        Path of sox.

    Raises
    ------
    FestivalNotFoundError
        If sox is missing.

    Example
    -------
    >>> find_sox().endswith("sox")
    True
    """
    path = shutil.which("sox")
    if path is None:
        raise FestivalNotFoundError(
            "sox not found (it makes the pitch and tempo variants of the "
            "Festival voices). " + _INSTALL_HINT.format(var=FESTIVAL_ENV_VAR)
        )
    return path


def shift_pitch_and_tempo(
    wav: np.ndarray,
    sample_rate: int,
    semitones: float = 0.0,
    tempo: float = 1.0,
    timeout: float = 60.0,
) -> np.ndarray:
    """Shifts the pitch (and with it the formants) and changes the tempo.

    Uses sox's ``pitch`` effect (time stretch and resampling: the spectral
    envelope moves with the pitch, as with a shorter or longer vocal tract)
    and ``tempo`` (WSOLA: the rate changes, the pitch does not).

    Arguments
    ---------
    wav : numpy.ndarray
        Mono waveform in [-1, 1].
    sample_rate : int
        Its sampling rate in Hz.
    semitones : float
        Pitch shift (positive: higher), within [-12, 12].
    tempo : float
        Speaking-rate factor (> 1: faster), within [0.5, 2].

    Returns
    -------
    numpy.ndarray
        The transformed float64 waveform, about ``len(wav) / tempo`` long.

    Example
    -------
    >>> rate = 16000
    >>> t = np.arange(rate) / rate
    >>> y = shift_pitch_and_tempo(np.sin(2 * np.pi * 200 * t) / 2, rate,
    ...                           semitones=12.0, tempo=2.0)
    >>> abs(len(y) - rate // 2) < 400
    True
    >>> spectrum = np.abs(np.fft.rfft(y[1000:7000]))
    >>> bool(380 < np.argmax(spectrum) * rate / 6000 < 420)  # octave up
    True
    """
    if not -12.0 <= semitones <= 12.0:
        raise ValueError(f"semitones must be in [-12, 12], got {semitones}")
    if not 0.5 <= tempo <= 2.0:
        raise ValueError(f"tempo must be in [0.5, 2], got {tempo}")
    wav = np.asarray(wav, dtype=np.float64)
    if semitones == 0.0 and tempo == 1.0:
        return wav.copy()
    effects = []
    if semitones != 0.0:
        effects += ["pitch", f"{100.0 * semitones:.1f}"]
    if tempo != 1.0:
        effects += ["tempo", "-s", f"{tempo:.4f}"]
    header = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
    cmd = [find_sox(), "-D", *header, "-r", str(int(sample_rate)), "-"]
    cmd += [*header, "-"] + effects
    raw = _run(cmd, "sox", timeout, wav.astype("<f4").tobytes())
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)
