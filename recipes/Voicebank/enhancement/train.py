#!/usr/bin/env python3
"""Speech enhancement on VoiceBank-DEMAND with Mamba-TasNet (one output):
noisy -> clean, SI-SNR training, test metrics PESQ (wideband), STOI, SI-SNR
and SI-SNR improvement in ``<output_folder>/test_results.csv``.

Usage::

    python train.py hparams/mamba_tasnet_S.yaml --data_folder /data/VoiceBank
    torchrun --nproc_per_node=4 train.py hparams/mamba_tasnet_S.yaml \\
        --data_folder /data/VoiceBank

A small corpus with the same layout::

    python -m speechbrain_mamba.separation.enhancement.mini_voicebank \
        --out /data/mini_vb

The training loop is the separation recipe's with ``num_spks: 1``, the
VoiceBank data preparation and enhancement test metrics of
:mod:`speechbrain_mamba.separation.enhancement`. Rerunning the same command
resumes from the last checkpoint.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (before speechbrain: torchaudio shim)
from speechbrain_mamba.separation.enhancement.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:])
