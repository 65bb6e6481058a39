"""Mamba layers for speech: Mamba, BiMamba, CrossMamba, blocks and stacks.

Every layer takes ``[batch, time, d_model]`` and optional SpeechBrain
relative lengths, runs on CPU in pure PyTorch and on NVIDIA GPUs with the
mamba_ssm kernels with the same weights.
"""

from speechbrain_mamba.nnet.bimamba import BiMamba
from speechbrain_mamba.nnet.blocks import DropPath, MambaBlock, MambaStack
from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.nnet.cross_mamba import CrossMamba
from speechbrain_mamba.nnet.init import DeltaProjection, reset_mamba_parameters
from speechbrain_mamba.nnet.mamba import Mamba
from speechbrain_mamba.nnet.norm import RMSNorm

__all__ = [
    "BiMamba",
    "CrossMamba",
    "DeltaProjection",
    "DropPath",
    "Mamba",
    "MambaBlock",
    "MambaCache",
    "MambaStack",
    "RMSNorm",
    "reset_mamba_parameters",
]
