#!/usr/bin/env python3
"""LibriSpeech CTC ASR recipe (Conformer and ConMamba encoders, characters).

Run on one device::

    python train.py hparams/conmamba_large.yaml --data_folder /path/LibriSpeech

or with DDP::

    torchrun --nproc_per_node=4 train.py hparams/conmamba_large.yaml \
        --data_folder /path/LibriSpeech

Rerunning the same command resumes from the last checkpoint. The Brain
classes and the driver live in :mod:`speechbrain_mamba.asr`.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (must precede speechbrain imports)
from speechbrain_mamba.asr.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], "ctc")
