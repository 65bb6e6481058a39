#!/usr/bin/env python3
"""CTC fine-tuning (characters) of an encoder pretrained with ``train.py``;
reports WER / CER on the test splits (``wer_<split>.txt``)::

    python finetune_ctc.py hparams/finetune_ctc.yaml \
        --data_folder /path/LibriSpeech \
        --pretrained_folder results/ssl/pretrain_bimamba/1234

The model options are read from the pretraining folder. Works with
``torchrun`` (DDP) and resumes when rerun.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (must precede speechbrain imports)
from speechbrain_mamba.ssl.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:], "finetune")
