"""speechbrain-mamba: Mamba (selective state space) models for SpeechBrain.

torchaudio is importable next to a CPU build of PyTorch even where its
native extension cannot load: the installed package does this at start-up
for any script (the ``speechbrain_mamba.pth`` hook, see
``_speechbrain_mamba_startup``), and importing this package does it too (for
a source tree that is not installed; see
:mod:`speechbrain_mamba.utils.torchaudio_compat`), so that ``import
speechbrain`` works.
"""

from speechbrain_mamba.utils.torchaudio_compat import import_torchaudio

import_torchaudio()

__version__ = "0.1.0"

__all__ = ["__version__"]
