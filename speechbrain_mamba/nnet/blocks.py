"""Pre-norm residual Mamba blocks and stacks.

The block follows mamba_ssm's ``Block`` convention (attribute names ``norm``
and ``mixer``; it passes the residual stream alongside the hidden states):

    residual = hidden + residual
    hidden = mixer(norm(residual))

and a stack ends with ``norm_f(hidden + residual)``. This is the building
block of Mamba-TasNet, DPMamba and the Mamba language models.

Author
------
speechbrain-mamba developers
"""

from typing import List, Optional, Tuple

import torch
import torch.utils.checkpoint
from torch import nn

from speechbrain_mamba.nnet.bimamba import BiMamba
from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.nnet.mamba import Mamba
from speechbrain_mamba.nnet.norm import RMSNorm
from speechbrain_mamba.nnet.padding import (
    check_sequence_input,
    lengths_to_frames,
    zero_padding,
)
from speechbrain_mamba.ops.backend import fused_add_norm, fused_step_applies
from speechbrain_mamba.ops.triton import mamba_step
from speechbrain_mamba.utils.bucketed_graphs import SelfGraphedModule

NORMS = ("rmsnorm", "layernorm")


def make_norm(norm: str, d_model: int, eps: float) -> nn.Module:
    """Builds an RMSNorm or LayerNorm.

    Arguments
    ---------
    norm : str
        "rmsnorm" or "layernorm".
    d_model : int
        Feature size.
    eps : float
        Numerical epsilon.

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> norm = make_norm("layernorm", 8, 1e-5)
    >>> type(norm).__name__, norm.normalized_shape, norm.eps
    ('LayerNorm', (8,), 1e-05)
    """
    if norm == "rmsnorm":
        return RMSNorm(d_model, eps=eps)
    if norm == "layernorm":
        return nn.LayerNorm(d_model, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _plain_norm_dtype(norm: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype ``norm(x.to(norm.weight.dtype))`` returns: the weight's,
    or fp32 for a LayerNorm under autocast (which runs it in fp32)."""
    if isinstance(norm, nn.LayerNorm) and torch.is_autocast_enabled(
        x.device.type
    ):
        return torch.float32
    return norm.weight.dtype


def _fused_add_norm(norm: nn.Module, backend: str, hidden, residual):
    """The fused add + norm kernel for this call (None: plain path), see
    :func:`speechbrain_mamba.ops.backend.fused_add_norm`."""
    if not isinstance(norm, (RMSNorm, nn.LayerNorm)):
        return None
    return fused_add_norm(
        backend, hidden, residual, getattr(norm, "weight", None)
    )


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples.

    Arguments
    ---------
    drop_prob : float
        Probability to drop the branch of a sample while training.

    Example
    -------
    >>> drop = DropPath(0.5).eval()
    >>> x = torch.ones(4, 3, 2)
    >>> torch.equal(drop(x), x)
    True
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drops (and rescales) whole samples of x while training."""
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, device=x.device, dtype=x.dtype)
        return x * mask.bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return f"drop_prob={self.drop_prob}"


class MambaBlock(nn.Module):
    """Pre-norm residual block around a Mamba or BiMamba mixer.

    Arguments
    ---------
    d_model : int
        Feature size.
    bidirectional : bool
        BiMamba mixer (True) or unidirectional Mamba (False).
    norm : str
        "rmsnorm" or "layernorm".
    norm_eps : float
        Epsilon of the norm.
    residual_in_fp32 : bool
        Keep the residual stream in fp32 (useful under autocast).
    drop_path : float
        Stochastic-depth probability of the mixer branch.
    **mixer_kwargs
        Arguments of the mixer (d_state, d_conv, expand, backend, ...).

    Example
    -------
    >>> block = MambaBlock(16, bidirectional=True, d_state=4)
    >>> hidden, residual = block(torch.randn(2, 10, 16))
    >>> hidden.shape, residual.shape
    (torch.Size([2, 10, 16]), torch.Size([2, 10, 16]))
    """

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = True,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        **mixer_kwargs,
    ):
        super().__init__()
        self.d_model = d_model
        self.bidirectional = bidirectional
        self.residual_in_fp32 = residual_in_fp32
        self.norm = make_norm(norm, d_model, norm_eps)
        mixer_class = BiMamba if bidirectional else Mamba
        self.mixer = mixer_class(d_model, **mixer_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
        cache: Optional[MambaCache] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Adds hidden to the residual stream and runs the mixer on it.

        Arguments
        ---------
        hidden : torch.Tensor
            Output of the previous block (or the input), [batch, time, d].
        residual : torch.Tensor, optional
            Residual stream so far (None for the first block).
        lengths : torch.Tensor, optional
            Relative lengths in (0, 1], [batch].
        cache : MambaCache, optional
            Recurrent state of a unidirectional mixer.

        Returns
        -------
        hidden : torch.Tensor
            The mixer output, [batch, time, d].
        residual : torch.Tensor
            The updated residual stream (fp32 if residual_in_fp32).
        """
        add_norm = _fused_add_norm(
            self.norm, self.mixer.backend, hidden, residual
        )
        if add_norm is not None:
            # one Triton kernel for the residual add and the norm, which
            # keeps only the new residual stream for backward
            weight = self.norm.weight
            out_dtype = _plain_norm_dtype(self.norm, hidden)
            autocast = torch.get_autocast_dtype("cuda")
            if (
                cache is None
                and hidden.is_cuda
                and torch.is_autocast_enabled("cuda")
                and weight.dtype in (torch.float32, autocast)
            ):
                # the mixer's first operation (in_proj) casts its input to
                # the autocast dtype: writing that dtype gives the same
                # numbers in half the bytes
                out_dtype = autocast
            normed, residual = add_norm(
                hidden,
                weight,
                getattr(self.norm, "bias", None),
                residual=residual,
                eps=self.norm.eps,
                residual_in_fp32=self.residual_in_fp32,
                is_rms_norm=isinstance(self.norm, RMSNorm),
                out_dtype=out_dtype,
            )
        else:
            residual = hidden if residual is None else residual + hidden
            if self.residual_in_fp32:
                residual = residual.float()
            normed = self.norm(residual.to(self.norm.weight.dtype))
        if cache is not None:
            hidden = self.mixer(normed, lengths=lengths, cache=cache)
        else:
            hidden = self.mixer(normed, lengths=lengths)
        return self.drop_path(hidden), residual


class MambaStack(SelfGraphedModule):
    """A stack of pre-norm residual Mamba blocks with a final norm.

    A unidirectional stack decoding one frame at a time through its cache
    on a GPU (no gradient, backend "auto" or "triton") runs each block as
    two fused Triton kernels
    (:mod:`~speechbrain_mamba.ops.triton.mamba_step`): the step is then
    bound by the weights it reads, not by kernel launches, and can be
    recorded in a CUDA graph.

    Arguments
    ---------
    d_model : int
        Feature size.
    num_layers : int
        Number of blocks.
    bidirectional : bool
        BiMamba (True) or unidirectional Mamba (False) mixers.
    norm : str
        "rmsnorm" or "layernorm".
    norm_eps : float
        Epsilon of the norms.
    residual_in_fp32 : bool
        Keep the residual stream in fp32.
    drop_path : float
        Stochastic depth, increased linearly from 0 to this value over
        the blocks.
    final_norm : bool
        Apply ``norm_f`` at the end (Identity otherwise).
    gradient_checkpointing : bool
        While training, keep only each block's inputs and recompute the
        block in the backward pass (much less memory, ~30% more time).
    cuda_graphs : bool
        Calls without a cache on CUDA replay CUDA graphs the stack records
        itself (training forward + backward, and inference), one per
        (batch, bucket of the length, dtype, autocast) key: the time axis
        is padded by less than 12.5 % and the lengths passed on, so outputs
        and gradients are those of the plain call, without the host's
        per-kernel launch cost (see
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
        Off by default: models that contain a stack and record their own
        graphs (Mamba-TasNet's mask network) turn it on at their level;
        the VALL-M models turn it on for their stacks. Plain calls while
        training with ``drop_path`` or ``gradient_checkpointing``.
    max_cuda_graphs : int
        Most inference graphs kept (other keys run eagerly).
    max_training_graphs : int
        Most training graph pairs kept; they share one memory pool.
    **mixer_kwargs
        Arguments of the mixers (d_state, d_conv, expand, backend, ...).

    Example
    -------
    >>> stack = MambaStack(16, num_layers=2, bidirectional=False, d_state=4)
    >>> x = torch.randn(1, 20, 16)
    >>> cache = stack.init_cache(1)
    >>> chunks = [stack(c, cache=cache) for c in x.split([7, 13], dim=1)]
    >>> torch.allclose(torch.cat(chunks, 1), stack(x), atol=1e-5)
    True
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        bidirectional: bool = True,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        final_norm: bool = True,
        gradient_checkpointing: bool = False,
        cuda_graphs: bool = False,
        max_cuda_graphs: int = 16,
        max_training_graphs: int = 16,
        **mixer_kwargs,
    ):
        super().__init__()
        self.init_cuda_graphs(
            cuda_graphs,
            max_cuda_graphs,
            max_training_graphs,
            plain_training=drop_path > 0 or gradient_checkpointing,
        )
        self.gradient_checkpointing = gradient_checkpointing
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.d_model = d_model
        self.bidirectional = bidirectional
        rates = torch.linspace(0, drop_path, num_layers).tolist()
        self.layers = nn.ModuleList(
            MambaBlock(
                d_model,
                bidirectional=bidirectional,
                norm=norm,
                norm_eps=norm_eps,
                residual_in_fp32=residual_in_fp32,
                drop_path=rate,
                layer_idx=index,
                **mixer_kwargs,
            )
            for index, rate in enumerate(rates)
        )
        self.norm_f = (
            make_norm(norm, d_model, norm_eps) if final_norm else nn.Identity()
        )

    def init_cache(self, batch_size: int, **kwargs) -> List[MambaCache]:
        """One recurrent cache per block (unidirectional stacks only).

        Arguments
        ---------
        batch_size : int
            Number of sequences.
        **kwargs
            device / dtype for :meth:`Mamba.init_cache`.

        Returns
        -------
        list of MambaCache
        """
        return [
            layer.mixer.init_cache(batch_size, **kwargs)
            for layer in self.layers
        ]

    def fused_step_applies(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor],
        cache: Optional[List[MambaCache]],
    ) -> bool:
        """Whether ``forward(x, lengths, cache)`` would run as one decoding
        step on the fused Triton kernels (see
        :func:`~speechbrain_mamba.ops.backend.fused_step_applies`;
        also: a unidirectional stack, no active stochastic depth).

        Arguments
        ---------
        x : torch.Tensor
            The step's input [batch, 1, d_model].
        lengths : torch.Tensor, optional
            As in :meth:`forward`.
        cache : list of MambaCache, optional
            As in :meth:`forward`.

        Returns
        -------
        bool

        Example
        -------
        >>> stack = MambaStack(8, 2, bidirectional=False).eval()
        >>> cache = stack.init_cache(1)
        >>> stack.fused_step_applies(torch.zeros(1, 1, 8), None, cache)  # CPU
        False
        """
        if cache is None or self.bidirectional:  # every training call
            return False
        if self.training and any(
            layer.drop_path.drop_prob > 0 for layer in self.layers
        ):
            return False
        return fused_step_applies(
            x, lengths, cache, self.layers[0].mixer.backend, self.parameters()
        )

    def _fused_step(
        self, x: torch.Tensor, cache: List[MambaCache]
    ) -> torch.Tensor:
        """One decoding step through the fused Triton kernels (two per
        block; see :mod:`speechbrain_mamba.ops.triton.mamba_step`)."""
        # a copy: the kernels add every block's output to it in place
        residual = x[:, 0].to(torch.float32, copy=True).contiguous()
        projection = mamba_step.projection_buffer(
            x.shape[0], self.layers[0].mixer, x.device, len(self.layers)
        )
        for index, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            mamba_step.mamba_block_step(
                residual,
                layer.norm,
                layer.mixer,
                layer_cache,
                projection[index],
            )
        weight = getattr(self.norm_f, "weight", None)
        if weight is not None:
            residual = residual.to(weight.dtype)
        return self.norm_f(residual).to(x.dtype)[:, None]

    def forward(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        cache: Optional[List[MambaCache]] = None,
    ) -> torch.Tensor:
        """Runs the stack.

        Arguments
        ---------
        x : torch.Tensor
            [batch, time, d_model].
        lengths : torch.Tensor, optional
            Relative lengths in (0, 1], [batch]. Padded output frames are 0.
        cache : list of MambaCache, optional
            From :meth:`init_cache`; continues from and updates the state
            (chunked streaming of a unidirectional stack).

        Returns
        -------
        torch.Tensor
            [batch, time, d_model], dtype of x.
        """
        check_sequence_input(x, self.d_model)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(
                f"cache has {len(cache)} entries for {len(self.layers)} layers"
            )
        if self.fused_step_applies(x, lengths, cache):
            return self._fused_step(x, cache)
        if cache is None and self.uses_cuda_graphs():
            calls = self.cuda_graph_calls(self._run, 1, 1)
            return calls(x, lengths)
        return self._run(x, lengths, cache)

    def _run(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor],
        cache: Optional[List[MambaCache]] = None,
    ) -> torch.Tensor:
        """The blocks and the final norm (a checked input)."""
        frames = lengths_to_frames(lengths, x.shape[0], x.shape[1], x.device)
        hidden, residual = x, None
        checkpointed = (
            self.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and cache is None
        )
        for index, layer in enumerate(self.layers):
            if checkpointed:
                hidden, residual = torch.utils.checkpoint.checkpoint(
                    layer, hidden, residual, lengths, use_reentrant=False
                )
                continue
            hidden, residual = layer(
                hidden,
                residual,
                lengths=lengths,
                cache=None if cache is None else cache[index],
            )
        add_norm = _fused_add_norm(
            self.norm_f, self.layers[-1].mixer.backend, hidden, residual
        )
        if add_norm is not None:
            out_dtype = _plain_norm_dtype(self.norm_f, hidden)
            if out_dtype == torch.float32:  # one rounding either way
                out_dtype = x.dtype
            normed, _ = add_norm(
                hidden,
                self.norm_f.weight,
                getattr(self.norm_f, "bias", None),
                residual=residual,
                eps=self.norm_f.eps,
                residual_in_fp32=False,
                is_rms_norm=isinstance(self.norm_f, RMSNorm),
                out_dtype=out_dtype,
            )
            return zero_padding(normed.to(x.dtype), frames)
        residual = residual + hidden
        weight = getattr(self.norm_f, "weight", None)
        if weight is not None:
            residual = residual.to(weight.dtype)
        return zero_padding(self.norm_f(residual).to(x.dtype), frames)
