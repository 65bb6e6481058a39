"""Speech synthesis with the espeak-ng command line program.

espeak-ng is a small formant synthesiser available on every Linux
distribution. It is fast (a sentence takes about 10 ms), deterministic (the
same text, voice, speed and pitch give the same samples) and needs no model
download, which makes it a good source of small but real speech corpora.

Author
------
speechbrain-mamba developers
"""

import functools
import io
import math
import os
import re
import shutil
import subprocess
from typing import Optional

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

#: Sampling rate of the waveforms espeak-ng writes.
ESPEAK_SAMPLE_RATE = 22050

#: Environment variable naming an espeak-ng executable to use.
ESPEAK_ENV_VAR = "SBMAMBA_ESPEAK"

_INSTALL_HINT = (
    "Install it with your system package manager, e.g. "
    "`sudo apt-get install espeak-ng` (Debian/Ubuntu), "
    "`sudo dnf install espeak-ng` (Fedora) or `brew install espeak-ng` "
    "(macOS), or set {var} to the path of the executable."
)


class EspeakNotFoundError(FileNotFoundError):
    """Raised when no espeak-ng (or espeak) executable can be found."""


def find_espeak(binary: Optional[str] = None) -> str:
    """Returns the path of the espeak-ng executable.

    The search order is: the ``binary`` argument, the environment variable
    ``SBMAMBA_ESPEAK``, then ``espeak-ng`` and ``espeak`` on the ``PATH``.

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
    EspeakNotFoundError
        If no executable is found. The message says how to install
        espeak-ng.

    Example
    -------
    >>> find_espeak("/nonexistent/espeak-ng")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    speechbrain_mamba.data.espeak.EspeakNotFoundError: espeak-ng ...
    """
    requested = binary or os.environ.get(ESPEAK_ENV_VAR)
    candidates = [requested] if requested else ["espeak-ng", "espeak"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    where = (
        f"'{requested}' is not an executable"
        if requested
        else "neither 'espeak-ng' nor 'espeak' was found on the PATH"
    )
    raise EspeakNotFoundError(
        "espeak-ng is required to synthesise the mini corpora, but "
        f"{where}. " + _INSTALL_HINT.format(var=ESPEAK_ENV_VAR)
    )


def espeak_available(binary: Optional[str] = None) -> bool:
    """Tells whether an espeak-ng executable can be found.

    Arguments
    ---------
    binary : str, optional
        A program name or path to check instead of searching.

    Returns
    -------
    bool
        True if :func:`find_espeak` succeeds.

    Example
    -------
    >>> espeak_available("/nonexistent/espeak-ng")
    False
    """
    try:
        find_espeak(binary)
    except EspeakNotFoundError:
        return False
    return True


def espeak_version(binary: Optional[str] = None) -> str:
    """Returns the version line printed by ``espeak-ng --version``.

    Arguments
    ---------
    binary : str, optional
        A program name or path to use instead of searching.

    Returns
    -------
    str
        For example ``"eSpeak NG text-to-speech: 1.51 ..."``.

    Example
    -------
    >>> espeak_version().startswith("eSpeak")
    True
    """
    path = find_espeak(binary)
    proc = subprocess.run(
        [path, "--version"], capture_output=True, check=False, timeout=30
    )
    text = proc.stdout.decode("utf-8", "replace").strip()
    # The data path differs between machines but not the synthesis.
    return text.split("  Data at:")[0].strip()


@functools.lru_cache(maxsize=8)
def _voices_of(path: str) -> tuple:
    def table(arg: str) -> list:
        proc = subprocess.run(
            [path, arg], capture_output=True, check=False, timeout=30
        )
        lines = proc.stdout.decode("utf-8", "replace").splitlines()
        return [ln.split() for ln in lines[1:] if ln.strip()]

    # Columns: Pty Language Age/Gender VoiceName File [Other Languages]
    languages = set()
    for row in table("--voices"):
        if len(row) >= 4:
            languages.update((row[1].lower(), row[3].lower()))
        for field in row[4:]:
            if re.fullmatch(r"[A-Za-z]+/\S+", field):  # e.g. gmw/en-GB-x-rp
                languages.add(field.split("/")[-1].lower())
    variants = set()
    for row in table("--voices=variant"):
        for field in row:
            if field.startswith("!v/"):
                variants.add(field[3:].lower())
    return frozenset(languages), frozenset(variants)


def espeak_voices(binary: Optional[str] = None) -> tuple:
    """Lists the voices and voice variants espeak-ng knows.

    Arguments
    ---------
    binary : str, optional
        espeak-ng executable; found with :func:`find_espeak` if omitted.

    Returns
    -------
    languages : frozenset of str
        Lower-case language codes, voice names and voice file names
        (e.g. ``"en-us"``, ``"en-gb-x-rp"``).
    variants : frozenset of str
        Lower-case variant names (e.g. ``"f3"``, ``"m1"``, ``"klatt"``).

    Example
    -------
    >>> languages, variants = espeak_voices()
    >>> "en-us" in languages, "f3" in variants
    (True, True)
    """
    return _voices_of(find_espeak(binary))


def check_voice(voice: str, binary: Optional[str] = None) -> None:
    """Raises ValueError unless espeak-ng knows the voice and variant.

    espeak-ng itself silently falls back to a default voice for unknown
    names, which would make pseudo-speakers change without notice.

    Arguments
    ---------
    voice : str
        ``"language"`` or ``"language+variant"``.
    binary : str, optional
        espeak-ng executable; found with :func:`find_espeak` if omitted.

    Example
    -------
    >>> check_voice("en-gb-x-rp+f4")
    >>> check_voice("en-us+zz")
    Traceback (most recent call last):
    ...
    ValueError: espeak-ng has no voice variant 'zz' (in 'en-us+zz')
    """
    languages, variants = espeak_voices(binary)
    language, _, variant = voice.partition("+")
    if language.lower() not in languages:
        english = sorted(v for v in languages if v.startswith("en"))
        raise ValueError(
            f"espeak-ng has no voice {language!r} (in {voice!r}); English "
            f"voices: {', '.join(english)}"
        )
    if variant and variant.lower() not in variants:
        raise ValueError(
            f"espeak-ng has no voice variant {variant!r} (in {voice!r})"
        )


def synthesize(
    text: str,
    voice: str = "en-us",
    speed: int = 175,
    pitch: int = 50,
    amplitude: int = 100,
    binary: Optional[str] = None,
    timeout: float = 60.0,
) -> np.ndarray:
    """Synthesises text with espeak-ng.

    Arguments
    ---------
    text : str
        The text to speak (UTF-8, one or more sentences).
    voice : str
        espeak-ng voice, optionally with a variant, e.g. ``"en-us"``,
        ``"en-gb-x-rp+f3"``, ``"en-us+m3"``.
    speed : int
        Speaking rate in words per minute (espeak-ng ``-s``, 80 to 450).
    pitch : int
        Base pitch (espeak-ng ``-p``, 0 to 99).
    amplitude : int
        Amplitude (espeak-ng ``-a``, 0 to 200).
    binary : str, optional
        espeak-ng executable; found with :func:`find_espeak` if omitted.
    timeout : float
        Seconds after which synthesis is abandoned.

    Returns
    -------
    numpy.ndarray
        Mono float64 waveform in [-1, 1] at :data:`ESPEAK_SAMPLE_RATE`.

    Raises
    ------
    EspeakNotFoundError
        If espeak-ng is not installed.
    ValueError
        If the text is empty, the voice unknown or a parameter out of
        range.
    RuntimeError
        If espeak-ng fails or returns no audio.

    Example
    -------
    >>> wav = synthesize("hello world", voice="en-us+f3")
    >>> wav.ndim, 0.2 < len(wav) / ESPEAK_SAMPLE_RATE < 3
    (1, True)
    """
    if not text or not text.strip():
        raise ValueError("synthesize: the text is empty")
    if not 80 <= speed <= 450:
        raise ValueError(f"synthesize: speed must be in [80, 450], got {speed}")
    if not 0 <= pitch <= 99:
        raise ValueError(f"synthesize: pitch must be in [0, 99], got {pitch}")
    if not 0 <= amplitude <= 200:
        raise ValueError(
            f"synthesize: amplitude must be in [0, 200], got {amplitude}"
        )
    path = find_espeak(binary)
    check_voice(voice, path)
    cmd = [
        path,
        "-b",
        "1",  # UTF-8 input
        "-v",
        voice,
        "-s",
        str(int(speed)),
        "-p",
        str(int(pitch)),
        "-a",
        str(int(amplitude)),
        "--stdin",
        "--stdout",
    ]
    proc = subprocess.run(
        cmd,
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise RuntimeError(
            f"espeak-ng failed (exit code {proc.returncode}) for voice "
            f"{voice!r} and text {text!r}: {err or 'no audio produced'}"
        )
    wav, rate = sf.read(io.BytesIO(proc.stdout), dtype="float64")
    if rate != ESPEAK_SAMPLE_RATE:
        # Other espeak builds may use another rate; resample to ours.
        wav = resample(wav, rate, ESPEAK_SAMPLE_RATE)
    if wav.ndim != 1 or wav.size == 0 or not np.any(wav):
        raise RuntimeError(
            f"espeak-ng returned no audio for voice {voice!r} and text "
            f"{text!r} {err}"
        )
    return wav


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resamples a waveform with a polyphase anti-aliasing filter.

    Arguments
    ---------
    wav : numpy.ndarray
        Mono waveform, shape [time].
    orig_rate : int
        Its sampling rate in Hz.
    target_rate : int
        The wanted sampling rate in Hz.

    Returns
    -------
    numpy.ndarray
        The resampled waveform (float64), ``ceil(len * target / orig)``
        samples long.

    Example
    -------
    >>> t = np.arange(22050) / 22050
    >>> y = resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    >>> y.shape
    (16000,)
    >>> bool(np.allclose(y[100:-100], np.sin(2 * np.pi * 440 *
    ...     np.arange(16000) / 16000)[100:-100], atol=1e-3))
    True
    """
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(
            f"resample: sampling rates must be positive, got {orig_rate} "
            f"and {target_rate}"
        )
    wav = np.asarray(wav, dtype=np.float64)
    if orig_rate == target_rate:
        return wav.copy()
    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(wav, int(target_rate) // g, int(orig_rate) // g)


def trim_silence(
    wav: np.ndarray,
    sample_rate: int,
    threshold_db: float = -40.0,
    frame_ms: float = 10.0,
) -> np.ndarray:
    """Removes leading and trailing silence.

    Frames whose RMS is more than ``-threshold_db`` dB below the loudest
    frame count as silence.

    Arguments
    ---------
    wav : numpy.ndarray
        Mono waveform, shape [time].
    sample_rate : int
        Its sampling rate in Hz.
    threshold_db : float
        Silence threshold relative to the loudest frame (negative).
    frame_ms : float
        Frame length in milliseconds.

    Returns
    -------
    numpy.ndarray
        The waveform from the first to the last non-silent frame (a view).

    Example
    -------
    >>> x = np.concatenate([np.zeros(800), np.ones(1600), np.zeros(400)])
    >>> trim_silence(x, 16000).shape
    (1600,)
    """
    wav = np.asarray(wav)
    frame = max(1, int(round(sample_rate * frame_ms / 1000)))
    n_frames = math.ceil(len(wav) / frame)
    if n_frames == 0:
        return wav
    padded = np.zeros(n_frames * frame)
    padded[: len(wav)] = wav
    power = np.mean(padded.reshape(n_frames, frame) ** 2, axis=1)
    peak = power.max()
    if peak <= 0:
        return wav[:0]
    active = np.nonzero(power > peak * 10 ** (threshold_db / 10))[0]
    return wav[active[0] * frame : min(len(wav), (active[-1] + 1) * frame)]
