#!/usr/bin/env python3
"""LibriTTS zero-shot TTS recipe: VALL-E (Transformer) and VALL-M (Mamba)
codec language models on EnCodec tokens.

Run on one device::

    python train.py hparams/vallm.yaml --data_folder /path/LibriTTS

or with DDP::

    torchrun --nproc_per_node=4 train.py hparams/valle.yaml \
        --data_folder /path/LibriTTS

The first run prepares the manifests, phonemises the transcripts and
extracts the codec tokens (once, resumable); rerunning the same command
resumes training from the last checkpoint. Export the trained models with
``python -m speechbrain_mamba.tts.export OUTPUT_FOLDER HUB_FOLDER``.

Author
------
speechbrain-mamba developers
"""

import sys

import speechbrain_mamba  # noqa: F401  (must precede speechbrain imports)
from speechbrain_mamba.tts.recipe import run_recipe

if __name__ == "__main__":
    run_recipe(sys.argv[1:])
