"""Speech separation demo: the shipped Mamba-TasNet separates unseen
speakers, then the recipe trains a small one from scratch on CPU.

The demo

1. builds a mini WSJ0-2mix corpus (Festival voices recorded from real
   speakers and espeak-ng voices, in the WSJ0-2mix folder layout; see
   :mod:`speechbrain_mamba.data.mini_corpus`); its test mixtures use only
   voices the shipped model never heard;
2. loads the shipped Mamba-TasNet S
   (:data:`speechbrain_mamba.separation.pretrained.MINI_WSJ0MIX_MODEL`)
   with SpeechBrain's own ``SepformerSeparation`` and separates the test
   mixtures, printing SI-SNRi / SDRi / PESQ / STOI and writing the wavs and
   a spectrogram of one mixture and its estimates;
3. trains a small Mamba-TasNet from scratch with the WSJ0Mix recipe
   (:mod:`speechbrain_mamba.separation.recipe`) on the corpus's training
   mixtures for a short wall-clock budget, with SpeechBrain's progress bar,
   and prints how its loss fell.

Command line::

    python -m speechbrain_mamba.demo.separation [--out DIR] [--seed S]
        [--num-test N] [--train-minutes M] [--model HUB_FOLDER] [--smoke]

``--smoke`` runs a seconds-long version (two test mixtures, a tiny model
trained for a few steps) that checks the pipeline, not the quality.

Author
------
speechbrain-mamba developers
"""

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from speechbrain_mamba.utils.atomic import atomic_write_text

#: The demo's hyperparameters (the WSJ0Mix recipe, sized for a CPU).
DEMO_YAML = """\
# Speech separation demo (speechbrain_mamba.demo.separation)
seed: 0
__set_seed: !apply:speechbrain.utils.seed_everything [!ref <seed>]

data_folder: !PLACEHOLDER
output_folder: !PLACEHOLDER
save_folder: !ref <output_folder>/save
train_log: !ref <output_folder>/train_log.txt
train_data: !ref <save_folder>/wsj_tr.csv
valid_data: !ref <save_folder>/wsj_cv.csv
test_data: !ref <save_folder>/wsj_tt.csv
test_results_file: !ref <output_folder>/test_results.csv
prepare_data: !name:speechbrain_mamba.separation.prepare.prepare_wsj0mix
    data_folder: !ref <data_folder>
    save_folder: !ref <save_folder>
    num_spks: !ref <num_spks>
    sample_rate: !ref <sample_rate>

train_limit: null
valid_limit: null
test_limit: null
num_spks: 2
sample_rate: 8000
precision: fp32
noprogressbar: False
save_audio: False
n_audio_to_save: 0
compute_pesq: False
compute_stoi: True

number_of_epochs: 1000
train_time_budget_s: 180
lr: 0.003
clip_grad_norm: 5
loss_upper_lim: 999999
threshold_byloss: True
threshold: -40
limit_training_signal_len: True
training_signal_len: 8000
use_speedperturb: False
dynamic_mixing: False

train_dataloader_opts:
    batch_size: 1
    num_workers: 0
    shuffle: True
eval_dataloader_opts:
    batch_size: 1
    num_workers: 0

N_encoder_out: 256
out_channels: 64
kernel_size: 32
kernel_stride: 16
num_layers: 2
d_state: 16

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>
MaskNet: !new:speechbrain_mamba.lobes.mamba_tasnet.MambaTasNetMaskNet
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <out_channels>
    num_layers: !ref <num_layers>
    num_spks: !ref <num_spks>
    d_state: !ref <d_state>
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False

optimizer: !name:torch.optim.Adam
    lr: !ref <lr>
loss: !name:speechbrain.nnet.losses.get_si_snr_with_pitwrapper
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <number_of_epochs>
modules:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>
checkpointer: !new:speechbrain_mamba.utils.checkpoints.CompleteCheckpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
        counter: !ref <epoch_counter>
train_logger: !new:speechbrain.utils.train_logger.FileTrainLogger
    save_file: !ref <train_log>
"""

#: Logging: warnings on the console, everything in <experiment>/log.txt.
LOG_CONFIG = """\
version: 1
disable_existing_loggers: False
formatters:
  simple:
    format: "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
handlers:
  console:
    class: logging.StreamHandler
    level: WARNING
    formatter: simple
    stream: ext://sys.stderr
  file_handler:
    class: logging.FileHandler
    level: DEBUG
    formatter: simple
    filename: log.txt
    encoding: utf8
root:
  level: DEBUG
  handlers: [console, file_handler]
"""

#: Overrides of the seconds-long smoke run (tiny model, a few steps).
SMOKE = {
    "N_encoder_out": 16,
    "out_channels": 16,
    "num_layers": 1,
    "train_limit": 2,
    "valid_limit": 1,
    "test_limit": 1,
    "compute_stoi": False,
}

#: Mixtures per epoch of the training demo (short epochs: the loss of each
#: one is printed) and the mixtures it validates and tests on.
TRAIN_DEMO = {"train_limit": 40, "valid_limit": 4, "test_limit": 4}


def _bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // total
    print(
        f"\r  separating [{'#' * filled}{'.' * (width - filled)}] "
        f"{done}/{total}",
        end="\n" if done == total else "",
        flush=True,
    )


def plot_spectrograms(
    path: Path, mixture: Path, estimates: Sequence[Path], title: str
) -> Path:
    """Writes a PNG of the spectrograms of a mixture and its estimates.

    Arguments
    ---------
    path : pathlib.Path
        PNG to write (atomically).
    mixture : pathlib.Path
        Mixture wav.
    estimates : sequence of pathlib.Path
        Estimated source wavs.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.

    Example
    -------
    >>> import numpy as np, soundfile as sf
    >>> tmp = getfixture("tmp_path")
    >>> t = np.arange(8000) / 8000
    >>> for name, f in (("m", 300), ("a", 300), ("b", 900)):
    ...     sf.write(tmp / f"{name}.wav", np.sin(2 * np.pi * f * t) / 4, 8000)
    >>> png = plot_spectrograms(tmp / "s.png", tmp / "m.wav",
    ...                         [tmp / "a.wav", tmp / "b.wav"], "test")
    >>> png.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import soundfile as sf

    from speechbrain_mamba.utils.atomic import atomic_target

    files = [mixture, *estimates]
    labels = ["mixture"] + [f"estimate {i + 1}" for i in range(len(estimates))]
    fig, axes = plt.subplots(len(files), 1, figsize=(8, 2.2 * len(files)))
    top = None
    with np.errstate(divide="ignore"):  # silent frames: log of zero
        for ax, file, label in zip(axes, files, labels):
            wav, rate = sf.read(str(file), dtype="float32")
            wav = wav + 1e-6  # no log of zero in silent frames
            if top is None:  # one colour scale: the mixture's 70 dB range
                spec = ax.specgram(wav, NFFT=256, Fs=rate, noverlap=192)[0]
                top = 10 * np.log10(spec.max())
                ax.clear()
            ax.specgram(
                wav,
                NFFT=256,
                Fs=rate,
                noverlap=192,
                cmap="magma",
                vmin=top - 70,
                vmax=top,
            )
            ax.set_ylabel(f"{label}\nHz")
    axes[0].set_title(title)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def separate_held_out(
    corpus: Path, out: Path, model: Path, num_test: int, perceptual: bool
) -> dict:
    """Separates the corpus's test mixtures with the hub model ``model``.

    Returns the average metrics, the number of mixtures and the files."""
    from speechbrain_mamba.separation.metrics import METRICS
    from speechbrain_mamba.separation.pretrained import (
        load_separator,
        score_separator,
        split_mixtures,
    )
    from speechbrain_mamba.separation.results import average_row

    mixtures = split_mixtures(corpus, "tt")[:num_test]
    separator = load_separator(model, savedir=out / "pretrained_model")
    audio = out / "separated"
    print(
        f"Separating {len(mixtures)} held-out mixtures (voices the model "
        f"never heard) with {model.name} on CPU ...",
        flush=True,
    )
    rows = score_separator(
        separator,
        mixtures,
        audio,
        compute_pesq=perceptual,
        compute_stoi=perceptual,
        progress=_bar,
    )
    first = mixtures[0].stem
    png = plot_spectrograms(
        out / "spectrogram.png",
        audio / f"{first}_mix.wav",
        [audio / f"{first}_s{i}_hat.wav" for i in (1, 2)],
        f"{first}: mixture and the two separated speakers",
    )
    return {
        "model": model.name,
        "test": average_row(rows, ("seconds", *METRICS)),
        "num_test": len(rows),
        "num_params": sum(p.numel() for p in separator.mods.parameters()),
        "audio_folder": audio,
        "results_file": audio / "results.csv",
        "spectrogram": png,
    }


def train_from_scratch(
    corpus: Path, out: Path, minutes: float, seed: int, smoke: bool
) -> dict:
    """Trains the small demo Mamba-TasNet with the WSJ0Mix recipe.

    Returns the train loss of every epoch, the steps and the folder."""
    from speechbrain_mamba.separation.recipe import train_and_test

    exp = out / ("smoke" if smoke else "training")
    hparams_file = atomic_write_text(exp / "demo.yaml", DEMO_YAML)
    log_config = atomic_write_text(exp / "log-config.yaml", LOG_CONFIG)
    overrides = {
        "data_folder": str(corpus),
        "output_folder": str(exp),
        "seed": seed,
        "train_time_budget_s": float(minutes) * 60,
        **(SMOKE if smoke else TRAIN_DEMO),
    }
    run_opts = {
        "device": "cpu",
        "noprogressbar": smoke,
        "log_config": str(log_config),
    }
    print(
        f"\nTraining a small Mamba-TasNet from scratch on CPU for "
        f"{minutes:g} min (WSJ0Mix recipe; log: {exp / 'train_log.txt'}):",
        flush=True,
    )
    brain = train_and_test(hparams_file, overrides, run_opts)
    losses = [
        float(m.group(1))
        for m in re.finditer(
            r"train loss: (-?[0-9.e+-]+)",
            (exp / "train_log.txt").read_text(encoding="utf-8"),
        )
    ]
    return {"losses": losses, "steps": brain.optimizer_step, "folder": exp}


def run_demo(
    out_dir: str = "results/demo_separation",
    seed: int = 1,
    num_test: int = 24,
    train_minutes: float = 1.0,
    model: Optional[str] = None,
    smoke: bool = False,
) -> dict:
    """Builds the corpus, separates its held-out mixtures with the shipped
    model, then trains a small model from scratch.

    Arguments
    ---------
    out_dir : str
        Output folder (corpus, separated wavs, spectrogram, training run).
    seed : int
        Seed of the corpus and of the training.
    num_test : int
        Held-out test mixtures to separate (the corpus holds 7 times as
        many mixtures: 5 parts training, 1 validation, 1 test).
    train_minutes : float
        Wall-clock budget of the training demo.
    model : str, optional
        Hub folder to separate with (default: the shipped Mamba-TasNet S).
    smoke : bool
        Seconds-long check of the pipeline.

    Returns
    -------
    dict
        ``test`` (average metrics of the shipped model), ``num_test``,
        ``num_params``, ``audio_folder``, ``results_file``,
        ``spectrogram``, ``training`` (``losses`` per epoch, ``steps``,
        ``folder``).
    """
    from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
    from speechbrain_mamba.separation.pretrained import MINI_WSJ0MIX_MODEL

    if num_test < 1:
        raise ValueError(f"num_test must be at least 1, got {num_test}")
    out = Path(out_dir).resolve()
    model = Path(model) if model else MINI_WSJ0MIX_MODEL
    if smoke:
        num_test = min(num_test, 2)
    print(f"Building the mini WSJ0-2mix corpus in {out / 'corpus'} ...")
    corpus = build_wsj0_2mix(
        out / "corpus" / "wsj0-2mix", seed=seed, num_utterances=7 * num_test
    )
    summary = separate_held_out(corpus, out, model, num_test, not smoke)
    print(format_summary(summary), flush=True)
    summary["training"] = train_from_scratch(
        corpus, out, 0.05 if smoke else train_minutes, seed, smoke
    )
    print(format_training(summary["training"]), flush=True)
    return summary


def format_summary(summary: dict) -> str:
    """Result lines of the shipped model on the held-out mixtures.

    Arguments
    ---------
    summary : dict
        Output of :func:`run_demo` (or :func:`separate_held_out`).

    Returns
    -------
    str
        Text to print.

    Example
    -------
    >>> s = {"model": "my_model", "test": {"si-snr_i": 10.0, "sdr_i": 10.5,
    ...      "si-snr": 10.0, "sdr": 10.2, "pesq": 1.9, "stoi": 0.88},
    ...      "num_test": 24, "num_params": 7.9e6}
    >>> print(format_summary(s))
    my_model (7.9 M parameters), 24 held-out mixtures (unseen speakers):
      SI-SNRi = 10.00 dB, SDRi = 10.50 dB, PESQ = 1.90, STOI = 0.880
    """
    t = summary["test"]
    return "\n".join(
        [
            f"{summary['model']} ({summary['num_params'] / 1e6:.1f} M "
            f"parameters), {summary['num_test']} held-out mixtures "
            "(unseen speakers):",
            f"  SI-SNRi = {t['si-snr_i']:.2f} dB, SDRi = {t['sdr_i']:.2f} dB, "
            f"PESQ = {t['pesq']:.2f}, STOI = {t['stoi']:.3f}",
        ]
    )


def format_training(training: dict) -> str:
    """Result lines of the training demo.

    Arguments
    ---------
    training : dict
        ``training`` entry of :func:`run_demo`'s result.

    Returns
    -------
    str
        Text to print.

    Example
    -------
    >>> text = format_training({"losses": [12.0, 8.5, 6.1], "steps": 120,
    ...                         "folder": "f"})
    >>> text.split("; ")[1]
    'train loss (negative SI-SNR) per epoch: 12.00 -> 8.50 -> 6.10'
    """
    losses = " -> ".join(f"{v:.2f}" for v in training["losses"])
    return (
        f"Training: {training['steps']} steps, {len(training['losses'])} "
        f"epochs; train loss (negative SI-SNR) per epoch: {losses}"
    )


def format_next_steps(summary: dict, out: Path) -> str:
    """The closing lines: where the files are and what to run next.

    Arguments
    ---------
    summary : dict
        Output of :func:`run_demo`.
    out : pathlib.Path
        The demo's output folder.

    Returns
    -------
    str
        Text to print.

    Example
    -------
    >>> s = {"audio_folder": "o/separated", "results_file": "o/r.csv",
    ...      "spectrogram": "o/s.png", "training": {"folder": "o/t"}}
    >>> "o/separated" in format_next_steps(s, Path("o"))
    True
    """
    return "\n".join(
        [
            "",
            "Files:",
            f"  separated wavs:       {summary['audio_folder']}",
            f"  per-mixture metrics:  {summary['results_file']}",
            f"  spectrogram:          {summary['spectrogram']}",
            f"  training run:         {summary['training']['folder']}",
            "Next:",
            '  your own mixture:  python -c "import speechbrain_mamba; '
            "from speechbrain_mamba.separation.pretrained import "
            "load_separator; print(load_separator().separate_file("
            "'mix.wav').shape)\"",
            "  your own data:     python recipes/WSJ0Mix/separation/train.py "
            "recipes/WSJ0Mix/separation/hparams/mamba_tasnet_S.yaml "
            "--data_folder /data/wsj0-mix/2speakers",
            "  on a GPU:          add --device cuda (bf16 by default); see "
            "docs/separation.md",
        ]
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point.

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    from speechbrain_mamba.utils.cli import (
        non_negative_int,
        positive_float,
        positive_int,
    )

    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.demo.separation",
        description="Separate unseen speakers with the shipped Mamba-TasNet, "
        "then train a small one on CPU.",
    )
    parser.add_argument("--out", default="results/demo_separation")
    parser.add_argument("--seed", type=non_negative_int, default=1)
    parser.add_argument(
        "--num-test", type=positive_int, default=24, help="mixtures to separate"
    )
    parser.add_argument(
        "--train-minutes",
        type=positive_float,
        default=1.0,
        help="training demo budget",
    )
    parser.add_argument("--model", help="hub folder (default: shipped model)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run_demo(
        args.out,
        seed=args.seed,
        num_test=args.num_test,
        train_minutes=args.train_minutes,
        model=args.model,
        smoke=args.smoke,
    )
    print(format_next_steps(summary, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
