#!/usr/bin/env python3
"""Recipe for training speech separation on Libri2Mix (8 or 16 kHz, min or
max mode) with Mamba-TasNet, DPMamba or SepFormer (see hparams/).

The recipe itself (data preparation, training, test-stage metrics) lives in
:mod:`speechbrain_mamba.separation.recipe`, shared with the other
separation recipes of speechbrain-mamba.

Usage::

    python train.py hparams/mamba_tasnet_S.yaml --data_folder /data/Libri2Mix
    torchrun --nproc_per_node=4 train.py hparams/mamba_tasnet_S.yaml \\
        --data_folder /data/Libri2Mix

Authors
-------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (before speechbrain: torchaudio shim)
from speechbrain_mamba.separation.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:])
