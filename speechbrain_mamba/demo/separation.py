"""Speech separation demo: a small Mamba-TasNet trained on CPU in minutes.

The demo

1. builds the mini WSJ0-2mix corpus (speech synthesised by espeak-ng, in the
   WSJ0-2mix folder layout; see :mod:`speechbrain_mamba.data.mini_corpus`);
2. trains a small Mamba-TasNet on its training mixtures with the WSJ0Mix
   separation recipe (:mod:`speechbrain_mamba.separation.recipe`) on CPU,
   for a fixed wall-clock budget;
3. separates the held-out test mixtures (unseen speakers), prints SI-SNRi /
   SDRi (and SI-SNR, SDR, PESQ, STOI), and writes the separated wavs.

Command line::

    python -m speechbrain_mamba.demo.separation [--out DIR] [--minutes 3]
        [--smoke] [--num-utterances N] [--seed S]

``--smoke`` runs a seconds-long version (tiny corpus and model) that checks
the pipeline, not the quality.

Author
------
speechbrain-mamba developers
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from speechbrain_mamba.separation.io import atomic_write_text

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
noprogressbar: True
save_audio: True
n_audio_to_save: 100
compute_pesq: True
compute_stoi: True

number_of_epochs: 1000
train_time_budget_s: 180
lr: 0.003
clip_grad_norm: 5
loss_upper_lim: 999999
threshold_byloss: True
threshold: -40
limit_training_signal_len: True
training_signal_len: 4000
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

#: Overrides of the seconds-long smoke run.
SMOKE = {
    "N_encoder_out": 16,
    "out_channels": 16,
    "num_layers": 1,
    "train_limit": 2,
    "valid_limit": 1,
    "test_limit": 2,
    "n_audio_to_save": 2,
    "compute_pesq": False,
}


def run_demo(
    out_dir: str = "results/demo_separation",
    minutes: float = 3.0,
    smoke: bool = False,
    num_utterances: int = 140,
    seed: int = 0,
) -> dict:
    """Builds the corpus, trains, evaluates and writes the separated wavs.

    Arguments
    ---------
    out_dir : str
        Output folder (corpus, experiment, separated wavs).
    minutes : float
        Training wall-clock budget in minutes.
    smoke : bool
        Seconds-long check of the pipeline (tiny corpus and model).
    num_utterances : int
        Mixtures in the mini corpus (split 5:1:1 into train/valid/test).
    seed : int
        Seed of the corpus and of the training.

    Returns
    -------
    dict
        ``test`` (average metrics), ``valid`` (last validation stats),
        ``steps``, ``num_test``, ``audio_folder``, ``results_file``.
    """
    from speechbrain_mamba.data.mini_corpus import build_wsj0_2mix
    from speechbrain_mamba.separation.recipe import train_and_test
    from speechbrain_mamba.separation.results import read_results_csv

    out = Path(out_dir).resolve()
    if smoke:
        num_utterances = min(num_utterances, 14)
    corpus = build_wsj0_2mix(
        out / "corpus" / "wsj0-2mix", seed=seed, num_utterances=num_utterances
    )
    exp = out / ("smoke" if smoke else "mamba_tasnet")
    hparams_file = atomic_write_text(exp / "demo.yaml", DEMO_YAML)
    log_config = atomic_write_text(exp / "log-config.yaml", LOG_CONFIG)
    overrides = {
        "data_folder": str(corpus),
        "output_folder": str(exp),
        "seed": seed,
        "train_time_budget_s": float(minutes) * 60,
        **(SMOKE if smoke else {}),
    }
    run_opts = {
        "device": "cpu",
        "noprogressbar": True,
        "log_config": str(log_config),
    }
    print(
        f"Training Mamba-TasNet on CPU for {minutes:g} min "
        f"(log: {exp / 'log.txt'}) ...",
        flush=True,
    )
    brain = train_and_test(hparams_file, overrides, run_opts)
    results = read_results_csv(exp / "test_results.csv")
    return {
        "test": results["avg"],
        "valid": getattr(brain, "valid_stats", {}),
        "steps": brain.optimizer_step,
        "num_test": len(results) - 1,
        "num_params": sum(p.numel() for p in brain.modules.parameters()),
        "audio_folder": exp / "audio_results",
        "results_file": exp / "test_results.csv",
    }


def format_summary(summary: dict) -> str:
    """Human-readable result lines of :func:`run_demo`.

    Arguments
    ---------
    summary : dict
        Output of :func:`run_demo`.

    Returns
    -------
    str
        Text to print.

    Example
    -------
    >>> s = {"test": {"si-snr_i": 5.0, "sdr_i": 5.5, "si-snr": 5.0,
    ...      "sdr": 5.2, "pesq": 1.5, "stoi": 0.7}, "steps": 10,
    ...      "num_test": 2, "num_params": 1000, "audio_folder": "a",
    ...      "results_file": "r.csv", "valid": {}}
    >>> print(format_summary(s).splitlines()[2])
      SI-SNRi = 5.00 dB, SDRi = 5.50 dB
    """
    t = summary["test"]
    return "\n".join(
        [
            f"Mamba-TasNet ({summary['num_params'] / 1e3:.0f} k parameters) "
            f"trained for {summary['steps']} steps on CPU.",
            f"Held-out test mixtures (unseen speakers): {summary['num_test']}",
            f"  SI-SNRi = {t['si-snr_i']:.2f} dB, SDRi = {t['sdr_i']:.2f} dB",
            f"  SI-SNR = {t['si-snr']:.2f} dB, SDR = {t['sdr']:.2f} dB, "
            f"PESQ = {t['pesq']:.2f}, STOI = {t['stoi']:.3f}",
            f"Separated wavs: {summary['audio_folder']}",
            f"Per-utterance metrics: {summary['results_file']}",
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
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.demo.separation",
        description="Train a small Mamba-TasNet on CPU and separate speech.",
    )
    parser.add_argument("--out", default="results/demo_separation")
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="training time budget"
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run")
    parser.add_argument("--num-utterances", type=int, default=140)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run_demo(
        args.out,
        minutes=0.1 if args.smoke else args.minutes,
        smoke=args.smoke,
        num_utterances=args.num_utterances,
        seed=args.seed,
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
