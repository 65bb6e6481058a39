"""Dual-path Mamba (DPMamba) intra/inter block for SpeechBrain's
``Dual_Path_Model``.

DPMamba (Jiang et al., 2024) is SepFormer's dual-path pipeline with the
intra-chunk and inter-chunk transformers replaced by bidirectional Mamba
stacks. :class:`DPMambaBlock` has the contract of SpeechBrain's
``SBTransformerBlock`` (``[B, L, N] -> [B, L, N]``, deep-copyable, first
arguments ``num_layers`` and ``d_model``), so SpeechBrain's own
``sepformer.yaml`` becomes DPMamba by replacing its two ``SBTransformerBlock``
entries.

Paper configurations (``Dual_Path_Model`` with ``K=250``, ``norm: ln``,
``linear_layer_after_inter_intra: False``; one Mamba block per intra/inter
model; parameter counts include encoder and decoder):

======  ========  =================  ==================  ======
size    d_model   dual-path layers   skip_around_intra   params
======  ========  =================  ==================  ======
XS      128       8                  False               2.3 M
S       256       8                  False               8.1 M
M       256       16                 True                15.9 M
L       512       16                 True                59.8 M
======  ========  =================  ==================  ======

Author
------
speechbrain-mamba developers
"""

import torch
import torch.nn as nn

from speechbrain_mamba.nnet import MambaStack


class DPMambaBlock(nn.Module):
    """Bidirectional Mamba stack used as intra- or inter-chunk model.

    Arguments
    ---------
    num_layers : int
        Number of pre-norm residual Mamba blocks.
    d_model : int
        Feature dimension ``N``.
    d_state : int
        SSM state size of each mixer.
    d_conv : int
        Kernel size of the mixers' depthwise convolution.
    expand : int
        Expansion factor of the mixers' inner width.
    bidirectional : bool
        If True, uses bidirectional ("bimamba v2") mixers.
    norm : str
        ``"rmsnorm"`` (paper) or ``"layernorm"``.
    norm_eps : float
        Epsilon of the normalisations.
    residual_in_fp32 : bool
        Keeps the residual stream in float32 under mixed precision.
    drop_path : float
        Stochastic-depth rate.
    final_norm : bool
        Applies a final normalisation after the last block (paper: True).
    **mixer_kwargs : dict
        Further arguments of :class:`speechbrain_mamba.nnet.Mamba`.

    Example
    -------
    >>> import copy
    >>> from speechbrain.lobes.models.dual_path import Dual_Path_Model
    >>> block = DPMambaBlock(1, 16)
    >>> block(torch.rand(4, 30, 16)).shape
    torch.Size([4, 30, 16])
    >>> masknet = Dual_Path_Model(
    ...     16, 16, block, copy.deepcopy(block), num_layers=2, K=10,
    ...     linear_layer_after_inter_intra=False,
    ... )
    >>> masknet(torch.rand(2, 16, 40)).shape
    torch.Size([2, 2, 16, 40])
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = True,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        final_norm: bool = True,
        **mixer_kwargs,
    ):
        super().__init__()
        self.d_model = d_model
        self.mdl = MambaStack(
            d_model,
            num_layers,
            bidirectional=bidirectional,
            norm=norm,
            norm_eps=norm_eps,
            residual_in_fp32=residual_in_fp32,
            drop_path=drop_path,
            final_norm=final_norm,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            **mixer_kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Processes a batch of chunks (or of chunk positions).

        Arguments
        ---------
        x : torch.Tensor
            ``[B, L, N]`` with ``N == d_model``.

        Returns
        -------
        torch.Tensor
            ``[B, L, N]``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"DPMambaBlock expects [B, L, {self.d_model}], "
                f"got shape {tuple(x.shape)}"
            )
        return self.mdl(x)
