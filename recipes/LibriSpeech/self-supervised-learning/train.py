#!/usr/bin/env python3
"""HuBERT-style pretraining of a Mamba (or Transformer) encoder on
LibriSpeech: data preparation, k-means targets, masked prediction, export of
the best model to ``<output_folder>/ssl_model.ckpt``.

Run on one device::

    python train.py hparams/pretrain_bimamba.yaml --data_folder DATA

or with DDP::

    torchrun --nproc_per_node=4 train.py hparams/pretrain_bimamba.yaml \
        --data_folder /path/LibriSpeech

Rerunning the same command resumes from where it stopped. The code lives in
:mod:`speechbrain_mamba.ssl`.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (must precede speechbrain imports)
from speechbrain_mamba.ssl.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], "pretrain")
