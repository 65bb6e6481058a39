"""speechbrain-mamba: Mamba (selective state space) models for SpeechBrain.

Importing this package first makes torchaudio importable next to a CPU build
of PyTorch (see :mod:`speechbrain_mamba.utils.torchaudio_compat`), so that
``import speechbrain`` works afterwards.
"""

from speechbrain_mamba.utils.torchaudio_compat import import_torchaudio

import_torchaudio()

__version__ = "0.1.0"

__all__ = ["__version__"]
