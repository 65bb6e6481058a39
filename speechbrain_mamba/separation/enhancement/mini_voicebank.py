"""A small VoiceBank-DEMAND style corpus for speech enhancement, made from
espeak-ng speech and synthetic noise.

The real corpus (Valentini-Botinhao et al., 2016) pairs clean VCTK
utterances with noisy versions: 28 training speakers, noise added at 0, 5,
10 and 15 dB SNR; 2 test speakers (p232, p257) with other noise types at
2.5, 7.5, 12.5 and 17.5 dB. This builder writes the same layout (16 kHz,
like the usual downsampled copy)::

    out_dir/clean_trainset_28spk_wav/p226_001.wav ...
    out_dir/noisy_trainset_28spk_wav/p226_001.wav ...
    out_dir/clean_testset_wav/p232_001.wav ...
    out_dir/noisy_testset_wav/p232_001.wav ...
    out_dir/trainset_28spk_txt/p226_001.txt ...      (transcripts)
    out_dir/testset_txt/p232_001.txt ...
    out_dir/log_trainset_28spk.txt, log_testset.txt  (ID noise SNR)

with the espeak-ng pseudo-speakers of :mod:`speechbrain_mamba.data.
mini_corpus` renamed to VoiceBank speaker IDs (the training speakers include
p226 and p287, the usual validation speakers) and synthetic noises instead
of DEMAND recordings: white, pink, brown, mains hum and amplitude-modulated
pink noise for training; speech-shaped noise and babble made of other
espeak-ng sentences for testing. The SNR is computed on the active level of
the speech. Files are 16-bit PCM; ``noisy = clean + noise`` before
quantisation. The same seed gives the same files. The corpus is built in a
temporary folder and moved into place; a marker file records the
parameters and the files written (with their SHA-256), so a second call
with the same parameters returns at once, and a rebuild replaces an older
corpus only if the folder holds nothing else: files the builder did not
write are never deleted (the build stops with an error naming them), and
of two builds of other parameters into one folder at the same time the
later one stops with an error (:mod:`speechbrain_mamba.data.corpus_folder`,
shared with :mod:`speechbrain_mamba.data.mini_corpus`).

Command line::

    python -m speechbrain_mamba.separation.enhancement.mini_voicebank \
        --out DIR [-n 120]

Author
------
speechbrain-mamba developers
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from speechbrain_mamba.data.corpus_folder import (
    CorpusGenerator,
    build_corpus_folder,
)
from speechbrain_mamba.data.espeak import (
    ESPEAK_SAMPLE_RATE,
    resample,
    synthesize,
    trim_silence,
)
from speechbrain_mamba.data.mini_corpus import PSEUDO_SPEAKERS
from speechbrain_mamba.data.mixing import active_level, to_pcm16
from speechbrain_mamba.data.sentences import SentenceGenerator
from speechbrain_mamba.utils.cli import non_negative_int, positive_int
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

MARKER_NAME = ".mini_voicebank.json"
VERSION = 1
#: The builder's name in the marker: its module path when VERSION 1 was
#: written, kept so that corpora built before enhancement moved into the
#: separation package are still recognised.
GENERATOR = "speechbrain_mamba.enhancement.mini_voicebank"
#: The builder as its markers record it.
_GENERATOR = CorpusGenerator(
    name=GENERATOR,
    version=VERSION,
    marker_name=MARKER_NAME,
    title="the mini VoiceBank builder",
    described=("seed", "num_utterances", "test_fraction", "max_words"),
)
SAMPLE_RATE = 16000
#: VoiceBank speaker IDs given to the training / test pseudo-speakers.
TRAIN_SPEAKERS = (
    "p226",
    "p287",
    "p227",
    "p228",
    "p230",
    "p231",
    "p233",
    "p236",
    "p239",
    "p243",
)
TEST_SPEAKERS = ("p232", "p257")
TRAIN_NOISES = ("white", "pink", "brown", "hum", "modulated")
TEST_NOISES = ("speech_shaped", "babble")
TRAIN_SNRS = (0.0, 5.0, 10.0, 15.0)
TEST_SNRS = (2.5, 7.5, 12.5, 17.5)
FOLDERS = {
    "train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
    "test": ("clean_testset_wav", "noisy_testset_wav"),
}
TEXT_FOLDERS = {"train": "trainset_28spk_txt", "test": "testset_txt"}
LOG_FILES = {"train": "log_trainset_28spk.txt", "test": "log_testset.txt"}


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with a 1/f^exponent power spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def make_noise(
    kind: str,
    n: int,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    babble: Optional[Sequence[np.ndarray]] = None,
) -> np.ndarray:
    """A synthetic noise signal with unit RMS.

    Arguments
    ---------
    kind : str
        One of :data:`TRAIN_NOISES` + :data:`TEST_NOISES`.
    n : int
        Number of samples.
    rng : numpy.random.Generator
        Random source.
    sample_rate : int
        Sample rate (hum frequency, modulation rate, filters).
    babble : sequence of numpy.ndarray, optional
        Speech signals summed into babble noise (needed for ``"babble"``).

    Returns
    -------
    numpy.ndarray
        ``[n]`` float64.

    Example
    -------
    >>> x = make_noise("pink", 16000, np.random.default_rng(0))
    >>> x.shape, round(float(np.sqrt(np.mean(x ** 2))), 3)
    ((16000,), 1.0)
    """
    t = np.arange(n) / sample_rate
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = _colored(rng, n, 1.0)
    elif kind == "brown":
        noise = _colored(rng, n, 2.0)
    elif kind == "hum":
        base = rng.choice([50.0, 60.0])
        noise = sum(
            np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) / k
            for k in range(1, 8)
        )
        noise = noise + 0.1 * rng.standard_normal(n)
    elif kind == "modulated":
        rate = rng.uniform(0.5, 4.0)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6))
        noise = _colored(rng, n, 1.0) * envelope
    elif kind == "speech_shaped":
        # white noise through a speech-like spectral tilt (peak near 500 Hz)
        white = rng.standard_normal(n)
        pole = np.exp(-2 * np.pi * 500.0 / sample_rate)
        noise = lfilter([1.0, -1.0], [1.0, -2 * pole * 0.9, pole**2], white)
    elif kind == "babble":
        if not babble:
            raise ValueError("babble noise needs speech signals")
        noise = np.zeros(n)
        for speech in babble:
            start = int(rng.integers(0, max(1, len(speech))))
            looped = np.resize(np.roll(speech, -start), n)
            noise += looped / (np.sqrt(np.mean(speech**2)) + 1e-12)
    else:
        raise ValueError(
            f"unknown noise {kind!r}; expected one of "
            f"{TRAIN_NOISES + TEST_NOISES}"
        )
    noise = np.asarray(noise, dtype=np.float64)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def add_noise(
    clean: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int
) -> np.ndarray:
    """Scales ``noise`` so that the active level of ``clean`` is ``snr_db``
    above the RMS of the noise, and returns ``clean + noise``.

    Arguments
    ---------
    clean : numpy.ndarray
        Speech.
    noise : numpy.ndarray
        Noise of the same length.
    snr_db : float
        Target SNR in dB.
    sample_rate : int
        Sample rate (active level frames).

    Returns
    -------
    numpy.ndarray
        The noisy signal.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> s = np.sin(np.arange(16000) / 5.0)
    >>> noisy = add_noise(s, rng.standard_normal(16000), 10.0, 16000)
    >>> def rms(x):
    ...     return np.sqrt(np.mean(x**2))
    >>> round(float(20 * np.log10(rms(s) / rms(noisy - s))), 1)
    10.0
    """
    if clean.shape != noise.shape:
        raise ValueError(
            f"clean {clean.shape} and noise {noise.shape} differ in length"
        )
    level = active_level(clean, sample_rate)
    noise_rms = np.sqrt(np.mean(noise**2)) + 1e-12
    return clean + noise * (level / noise_rms) * 10 ** (-snr_db / 20.0)


def _render(text, speaker, speed, pitch, peak_db, binary) -> np.ndarray:
    wav = synthesize(
        text, voice=speaker.voice, speed=speed, pitch=pitch, binary=binary
    )
    wav = trim_silence(wav, ESPEAK_SAMPLE_RATE)
    pad = np.zeros(int(0.15 * ESPEAK_SAMPLE_RATE))
    wav = np.concatenate([pad, wav, pad])
    wav = resample(wav, ESPEAK_SAMPLE_RATE, SAMPLE_RATE)
    return wav * 10 ** (peak_db / 20) / (np.abs(wav).max() + 1e-12)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fout:
        fout.write(text)


def build_voicebank(
    out_dir: PathLike,
    seed: int = 0,
    num_utterances: int = 120,
    test_fraction: float = 0.2,
    force: bool = False,
    espeak: Optional[str] = None,
    max_words: int = 8,
) -> Path:
    """Builds the mini VoiceBank-DEMAND corpus (see the module docstring).

    Arguments
    ---------
    out_dir : str or os.PathLike
        Corpus root (a recipe's ``data_folder``).
    seed : int
        Seed of every random choice.
    num_utterances : int
        Utterances over train and test (at least 4).
    test_fraction : float
        Share of test utterances.
    force : bool
        Rebuild even when the folder holds this corpus already (files the
        builder did not write are never deleted: a folder holding any is
        refused with ``FileExistsError``).
    espeak : str, optional
        espeak-ng executable.
    max_words : int
        Longest sentence (words).

    Returns
    -------
    pathlib.Path
        ``out_dir``, resolved.

    Example
    -------
    >>> out = getfixture("tmp_path") / "voicebank"
    >>> root = build_voicebank(out, num_utterances=4)
    >>> sorted(p.name for p in (root / "noisy_testset_wav").iterdir())
    ['p232_001.wav', 'p257_001.wav']
    """
    if num_utterances < 4:
        raise ValueError(
            f"num_utterances must be at least 4, got {num_utterances}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1), got {test_fraction}"
        )
    n_test = max(2, int(round(num_utterances * test_fraction)))
    n_train = num_utterances - n_test
    if n_train < 2:
        raise ValueError(
            f"too few utterances left for training: {num_utterances} "
            f"utterances with test_fraction {test_fraction} leave {n_train}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5642]))
    sentences = SentenceGenerator(rng, 4, max_words)
    train_voices = [s for s in PSEUDO_SPEAKERS if s.subset == "train"]
    test_voices = [s for s in PSEUDO_SPEAKERS if s.subset == "test"]
    plan = []  # (subset, speaker id, voice, index, text, noise, snr, ...)
    for subset, count, voices, ids, noises, snrs in (
        (
            "train",
            n_train,
            train_voices,
            TRAIN_SPEAKERS,
            TRAIN_NOISES,
            TRAIN_SNRS,
        ),
        ("test", n_test, test_voices, TEST_SPEAKERS, TEST_NOISES, TEST_SNRS),
    ):
        counters = {}
        for k in range(count):
            slot = k % len(ids)
            voice, spk = voices[slot % len(voices)], ids[slot]
            counters[spk] = counters.get(spk, 0) + 1
            plan.append(
                {
                    "subset": subset,
                    "id": f"{spk}_{counters[spk]:03d}",
                    "voice": voice,
                    "text": sentences.sentence().normalized,
                    "noise": noises[int(rng.integers(len(noises)))],
                    "snr": float(snrs[int(rng.integers(len(snrs)))]),
                    "speed": int(
                        rng.integers(voice.speed[0], voice.speed[1] + 1)
                    ),
                    "pitch": int(
                        np.clip(voice.pitch + rng.integers(-4, 5), 0, 99)
                    ),
                    "peak_db": float(rng.uniform(-10.0, -3.0)),
                    "noise_seed": int(rng.integers(2**31)),
                }
            )
    babble_texts = [sentences.sentence().normalized for _ in range(4)]

    def write(tmp: Path, final: Path, binary: str) -> int:
        for subset in FOLDERS:
            for name in FOLDERS[subset] + (TEXT_FOLDERS[subset],):
                (tmp / name).mkdir()
        babble = [
            _render(
                text, test_voices[i % len(test_voices)], 170, 50, -6.0, binary
            )
            for i, text in enumerate(babble_texts)
        ]
        logs = {"train": [], "test": []}
        for item in plan:
            clean = _render(
                item["text"],
                item["voice"],
                item["speed"],
                item["pitch"],
                item["peak_db"],
                binary,
            )
            noise_rng = np.random.default_rng(item["noise_seed"])
            noise = make_noise(
                item["noise"], len(clean), noise_rng, babble=babble
            )
            noisy = add_noise(clean, noise, item["snr"], SAMPLE_RATE)
            peak = np.abs(noisy).max()
            if peak > 0.99:  # keep both files unclipped, same gain
                clean, noisy = clean * 0.99 / peak, noisy * 0.99 / peak
            clean_dir, noisy_dir = FOLDERS[item["subset"]]
            for folder, signal in ((clean_dir, clean), (noisy_dir, noisy)):
                sf.write(
                    str(tmp / folder / f"{item['id']}.wav"),
                    to_pcm16(signal),
                    SAMPLE_RATE,
                    subtype="PCM_16",
                )
            _write_text(
                tmp / TEXT_FOLDERS[item["subset"]] / f"{item['id']}.txt",
                item["text"] + "\n",
            )
            logs[item["subset"]].append(
                f"{item['id']} {item['noise']} {item['snr']:g}"
            )
        for subset, lines in logs.items():
            _write_text(tmp / LOG_FILES[subset], "\n".join(lines) + "\n")
        logger.info(
            "mini VoiceBank: %d train / %d test utterances", n_train, n_test
        )
        return 3 * len(plan) + len(LOG_FILES)

    params = {
        "seed": int(seed),
        "num_utterances": int(num_utterances),
        "test_fraction": float(test_fraction),
        "max_words": int(max_words),
    }
    return build_corpus_folder(
        out_dir, _GENERATOR, params, force, espeak, write, "mini VoiceBank"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point.

    Arguments
    ---------
    argv : sequence of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 1 on a clear error (message printed).

    Example
    -------
    >>> main(["--out", "unused", "-n", "3"])
    1
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.separation.enhancement."
        "mini_voicebank",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", required=True, help="corpus folder")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (>= 0)"
    )
    parser.add_argument(
        "-n",
        "--num-utterances",
        type=positive_int,
        default=120,
        help="utterances over train and test (at least 4; default 120)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if up to date (files the builder did not write "
        "are never deleted: a folder holding any is refused)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO)
    try:
        folder = build_voicebank(
            args.out, args.seed, args.num_utterances, force=args.force
        )
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
