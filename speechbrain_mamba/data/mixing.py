"""Speech mixtures in the WSJ0-2mix and LibriMix conventions.

Both datasets sum scaled single-speaker utterances:

* WSJ0-2mix normalises each source to unit active speech level, weights
  source ``k`` by ``10 ** (snr_k / 20)`` with ``snr_2 = -snr_1``, cuts
  ("min") or zero-pads ("max") the sources to a common length, and finally
  scales sources and mixture together so that the largest absolute sample
  is 0.9.
* LibriMix scales each source to a random loudness and only scales down
  when the mixture would exceed 0.9.

Here sources are quantised to 16-bit PCM first and the mixture is the sum
of the quantised sources, so ``mix == s1 + s2`` holds exactly in the files.

Author
------
speechbrain-mamba developers
"""

from collections.abc import Sequence
from typing import Optional

import numpy as np

#: Largest absolute sample of sources and mixtures (as in both datasets).
MAX_AMPLITUDE = 0.9

_MODES = ("min", "max")


def active_level(
    wav: np.ndarray,
    sample_rate: int,
    frame_ms: float = 20.0,
    threshold_db: float = -40.0,
) -> float:
    """RMS level of the active (non-silent) part of a signal.

    A simple stand-in for the ITU-T P.56 active speech level used by
    WSJ0-2mix: the RMS over the frames whose power is within
    ``-threshold_db`` dB of the loudest frame.

    Arguments
    ---------
    wav : numpy.ndarray
        Mono waveform, shape [time].
    sample_rate : int
        Its sampling rate in Hz.
    frame_ms : float
        Frame length in milliseconds.
    threshold_db : float
        Frames quieter than the loudest frame by more than this many dB
        (negative) are ignored.

    Returns
    -------
    float
        The active RMS level (linear amplitude).

    Raises
    ------
    ValueError
        If the signal is empty or silent.

    Example
    -------
    >>> t = np.arange(8000) / 8000
    >>> tone = np.sin(2 * np.pi * 100 * t)
    >>> round(active_level(tone, 8000), 4)
    0.7071
    >>> round(active_level(np.concatenate([tone, np.zeros(8000)]), 8000), 4)
    0.7071
    """
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(
            f"active_level: expected a non-empty 1-D signal, got shape "
            f"{wav.shape}"
        )
    frame = max(1, int(round(sample_rate * frame_ms / 1000)))
    n_frames = -(-len(wav) // frame)
    padded = np.zeros(n_frames * frame)
    padded[: len(wav)] = wav
    power = np.mean(padded.reshape(n_frames, frame) ** 2, axis=1)
    peak = power.max()
    if peak <= 0:
        raise ValueError("active_level: the signal is silent")
    active = power >= peak * 10 ** (threshold_db / 10)
    # Count only real samples of the last (possibly partial) frame.
    sizes = np.full(n_frames, frame)
    sizes[-1] = len(wav) - (n_frames - 1) * frame
    energy = np.sum(power[active] * frame)
    return float(np.sqrt(energy / np.sum(sizes[active])))


def to_pcm16(wav: np.ndarray) -> np.ndarray:
    """Quantises a float waveform in [-1, 1) to 16-bit integers.

    Values are rounded to the nearest step of 1/32768 and clipped to the
    int16 range; reading the result back as float (divide by 32768, as
    soundfile does) gives the rounded waveform.

    Arguments
    ---------
    wav : numpy.ndarray
        Float waveform.

    Returns
    -------
    numpy.ndarray
        int16 array of the same shape.

    Example
    -------
    >>> to_pcm16(np.array([0.0, 0.5, -1.0, 1.0, 1e-5]))
    array([     0,  16384, -32768,  32767,      0], dtype=int16)
    """
    scaled = np.round(np.asarray(wav, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """Cuts a signal to ``length`` samples or pads it with trailing zeros.

    Arguments
    ---------
    wav : numpy.ndarray
        Waveform, shape [time].
    length : int
        Wanted length.

    Returns
    -------
    numpy.ndarray
        Waveform of shape [length].

    Example
    -------
    >>> fit_length(np.ones(3), 5)
    array([1., 1., 1., 0., 0.])
    >>> fit_length(np.ones(3), 2)
    array([1., 1.])
    """
    wav = np.asarray(wav)
    if len(wav) >= length:
        return wav[:length]
    out = np.zeros(length, dtype=wav.dtype)
    out[: len(wav)] = wav
    return out


def mix_sources(
    sources: Sequence[np.ndarray],
    gains: Sequence[float],
    mode: str = "min",
    peak: Optional[float] = MAX_AMPLITUDE,
) -> tuple:
    """Scales, aligns, quantises and sums sources into a mixture.

    Arguments
    ---------
    sources : sequence of numpy.ndarray
        Float waveforms (same sampling rate), each shape [time].
    gains : sequence of float
        Linear gain of each source.
    mode : str
        ``"min"``: the mixture ends with the shortest source (the others
        are cut); ``"max"``: it ends with the longest (the others are
        padded with zeros).
    peak : float, optional
        If given, sources and mixture are scaled together so that their
        largest absolute sample equals ``peak`` (WSJ0-2mix). If None, the
        gains are used as they are (LibriMix, whose gains already avoid
        clipping).

    Returns
    -------
    mixture : numpy.ndarray
        int16 mixture, the exact sum of the returned sources.
    scaled_sources : list of numpy.ndarray
        int16 scaled sources, all of the mixture's length.

    Raises
    ------
    ValueError
        For an unknown mode, mismatched gains, empty sources, or a
        mixture that does not fit 16 bits.

    Example
    -------
    >>> s1, s2 = np.full(5, 0.1), np.full(3, -0.2)
    >>> mix, (a, b) = mix_sources([s1, s2], [1.0, 1.0], "max", peak=None)
    >>> mix.tolist() == (a.astype(int) + b).tolist()
    True
    >>> len(mix), b.tolist()[3:]
    (5, [0, 0])
    >>> mix, (a, b) = mix_sources([s1, s2], [1.0, 1.0], "min")
    >>> len(mix), round(float(np.abs(b).max()) / 32768, 3)
    (3, 0.9)
    """
    if mode not in _MODES:
        raise ValueError(
            f"mix_sources: mode must be 'min' or 'max', got {mode!r}"
        )
    if len(sources) != len(gains) or len(sources) == 0:
        raise ValueError(
            f"mix_sources: got {len(sources)} sources and {len(gains)} gains"
        )
    lengths = [len(s) for s in sources]
    if min(lengths) == 0:
        raise ValueError("mix_sources: a source is empty")
    length = min(lengths) if mode == "min" else max(lengths)
    scaled = [
        fit_length(np.asarray(s, dtype=np.float64) * g, length)
        for s, g in zip(sources, gains)
    ]
    mixture = np.sum(scaled, axis=0)
    if peak is not None:
        max_amp = max(np.abs(mixture).max(), *(np.abs(s).max() for s in scaled))
        if max_amp > 0:
            scaled = [s * (peak / max_amp) for s in scaled]
    quantised = [to_pcm16(s) for s in scaled]
    total = np.sum([q.astype(np.int32) for q in quantised], axis=0)
    if np.abs(total).max() > 32767:
        raise ValueError(
            "mix_sources: the mixture exceeds the 16-bit range; lower the "
            "gains or pass a peak"
        )
    return total.astype(np.int16), quantised
