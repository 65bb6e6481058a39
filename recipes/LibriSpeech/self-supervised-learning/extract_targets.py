#!/usr/bin/env python3
"""k-means target extraction for HuBERT-style pretraining (progress bars,
resumable): MFCC features (first iteration) or a layer of a pretrained model
(second iteration, ``--target_features layer --target_model FOLDER
--target_layer N``). ``train.py`` runs it too when the targets are missing;
run it alone to prepare targets on a separate machine::

    python extract_targets.py hparams/pretrain_bimamba.yaml \
        --data_folder /path/LibriSpeech

Writes ``<targets_folder>/{kmeans.pt,targets.json,<split>.km}``.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (must precede speechbrain imports)
from speechbrain_mamba.ssl.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], "extract")
