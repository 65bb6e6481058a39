"""A sequence module's calls replayed from CUDA graphs by the module
itself, training and inference, with the time axis padded up to a few
buckets.

The Mamba models of this package are bound by the host on the inputs users
train on (a few seconds): each layer launches several small GPU kernels
from Python and the GPU waits. Replaying recorded CUDA graphs removes that
cost, but a graph holds one input shape, and SpeechBrain batches have
every length. The Mamba stacks take valid lengths and their padded frames
change no valid output, so a module can pad the time axis up to
:func:`~speechbrain_mamba.utils.graphed_inference.bucket_length` (less
than 12.5 % more frames), call the recorded graph of that bucket with the
lengths of the valid frames, and cut the output back: the same values as
its plain call, at the host cost of a replay. :class:`BucketedGraphs` does
this for a module's ``function(x, lengths, *more)``:

- with autograd (training): through
  :class:`~speechbrain_mamba.utils.graphed_training.GraphedTraining`
  (forward and backward replayed);
- without (``eval()`` with ``torch.no_grad``, ``torch.inference_mode``,
  frozen parameters): through
  :class:`~speechbrain_mamba.utils.graphed_inference.GraphedInference`;
- plainly on CPU, while tracing or compiling, inside another module's
  graphed call (the outer one records this module in its graph) or while
  forward hooks watch a sub-module.

Inside unmodified SpeechBrain (its ``Brain.fit_batch`` and inference
classes) this needs no option: the module decides.

Author
------
speechbrain-mamba developers
"""

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mamba.utils.graphed_inference import (
    GraphedInference,
    bucket_length,
    forward_hooks_watch,
    inside_graphed_call,
)
from speechbrain_mamba.utils.graphed_training import GraphedTraining


def pad_to_bucket(
    x: torch.Tensor, lengths: Optional[torch.Tensor], time_dim: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pads ``x`` with zeros along ``time_dim`` up to its bucket, and gives
    the relative lengths of the same valid frames in the padded length.

    Arguments
    ---------
    x : torch.Tensor
        A batch, ``[batch, ...]`` with time along ``time_dim``.
    lengths : torch.Tensor, optional
        Relative lengths in (0, 1] (SpeechBrain's convention), ``[batch]``;
        None: every item is whole.
    time_dim : int
        The time axis of ``x`` (>= 1).

    Returns
    -------
    padded : torch.Tensor
        ``x`` with ``bucket_length(time)`` frames.
    padded_lengths : torch.Tensor
        float32 relative lengths of the valid frames in ``padded``.

    Example
    -------
    >>> x = torch.ones(2, 17, 3)
    >>> padded, lengths = pad_to_bucket(x, torch.tensor([1.0, 0.5]), 1)
    >>> padded.shape, padded[:, 17:].abs().sum().item()
    (torch.Size([2, 18, 3]), 0.0)
    >>> (lengths * 18).round().tolist()  # 17 and round(8.5) frames
    [17.0, 8.0]
    """
    # here, not at the top: speechbrain_mamba.nnet imports this module
    from speechbrain_mamba.nnet.padding import lengths_to_frames

    batch, time = x.shape[0], x.shape[time_dim]
    frames = lengths_to_frames(lengths, batch, time)
    bucket = bucket_length(time)
    if frames is None:
        padded_lengths = torch.full(
            (batch,), time / bucket, device=x.device, dtype=torch.float32
        )
    else:
        padded_lengths = frames.to(x.device, torch.float32) / bucket
    if bucket > time:
        after_time = x.dim() - 1 - (time_dim % x.dim())
        x = F.pad(x, (0, 0) * after_time + (0, bucket - time))
    return x, padded_lengths


class BucketedGraphs:
    """Calls ``function(x, lengths, *more)`` on the bucket-padded input,
    replayed from CUDA graphs, training or inference.

    Arguments
    ---------
    function : callable
        ``function(x, lengths, *more) -> tensor``: ``x`` has time along
        ``time_dim``, ``lengths`` are relative lengths (float32, ``[B]``)
        whose padded frames change no valid output, ``more`` are tensors
        of fixed shapes (e.g. a condition per item). No host
        synchronisation inside.
    module : torch.nn.Module
        Owner of the parameters and buffers ``function`` reads.
    time_dim : int
        Time axis of ``x``.
    output_time_dim : int
        Time axis of the output (cut back to the input's length).
    max_graphs : int
        Most inference graphs kept (one per batch size, bucket, dtype and
        autocast); other calls run eagerly.
    max_training_graphs : int
        Most training (forward + backward) graph pairs kept; they share
        one memory pool for activations and one set of parameter-gradient
        buffers.

    Example
    -------
    >>> stack = torch.nn.Linear(3, 3)
    >>> graphs = BucketedGraphs(lambda x, lengths: stack(x), stack, 1, 1)
    >>> x = torch.randn(2, 17, 3)
    >>> torch.equal(graphs(x, None), stack(x))  # CPU: the plain call
    True
    """

    def __init__(
        self,
        function: Callable[..., torch.Tensor],
        module: nn.Module,
        time_dim: int,
        output_time_dim: int,
        max_graphs: int = 16,
        max_training_graphs: int = 8,
    ):
        if max_graphs < 0:
            raise ValueError(f"max_graphs must be >= 0, got {max_graphs}")
        if max_training_graphs < 0:
            raise ValueError(
                f"max_training_graphs must be >= 0, got {max_training_graphs}"
            )
        self.function = function
        self.module = module
        self.time_dim = time_dim
        self.output_time_dim = output_time_dim
        self.max_graphs = max_graphs
        self.max_training_graphs = max_training_graphs
        self._inference: Optional[GraphedInference] = None
        self._training: Optional[GraphedTraining] = None

    @property
    def num_graphs(self) -> int:
        """Recorded inference graphs plus training graph pairs."""
        return sum(
            graphs.num_graphs
            for graphs in (self._inference, self._training)
            if graphs is not None
        )

    def clear(self) -> None:
        """Drops every graph."""
        self._inference = None
        self._training = None

    def mode(self, x: torch.Tensor) -> Optional[str]:
        """How a call with input ``x`` runs now.

        Arguments
        ---------
        x : torch.Tensor
            The input.

        Returns
        -------
        str or None
            ``"train"`` (graphs with autograd), ``"infer"`` (graphs without)
            or None (the plain call).

        Example
        -------
        >>> graphs = BucketedGraphs(torch.relu, torch.nn.Identity(), 1, 1)
        >>> graphs.mode(torch.zeros(1, 4)) is None  # CPU
        True
        """
        if not x.is_cuda or inside_graphed_call():
            return None
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        if torch.cuda.is_current_stream_capturing():
            return None
        if forward_hooks_watch(self.module):
            return None  # hooks (e.g. layer capture) see the plain call
        parameter = next(self.module.parameters(), None)
        if parameter is not None and parameter.device != x.device:
            return None  # e.g. a replica of another device's module
        if torch.is_grad_enabled() and (
            x.requires_grad
            or any(p.requires_grad for p in self.module.parameters())
        ):
            return "train" if self.max_training_graphs else None
        return "infer" if self.max_graphs else None

    def __call__(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor],
        *more: torch.Tensor,
    ) -> torch.Tensor:
        """The function's output for ``x`` (cut to its length): replayed
        where :meth:`mode` allows, else the plain call.

        Arguments
        ---------
        x : torch.Tensor
            The input, time along ``time_dim``.
        lengths : torch.Tensor, optional
            Relative lengths ``[B]``.
        *more : torch.Tensor
            Further arguments of the function.

        Returns
        -------
        torch.Tensor
            The function's output, a tensor of its own (not a graph
            buffer).
        """
        mode = self.mode(x)
        if mode is None:
            return self.function(x, lengths, *more)
        time = x.shape[self.time_dim]
        padded, padded_lengths = pad_to_bucket(x, lengths, self.time_dim)
        if mode == "train":
            if self._training is None:
                self._training = GraphedTraining(
                    self.function,
                    self.module,
                    max_graphs=self.max_training_graphs,
                )
            graphs = self._training
        else:
            if self._inference is None:
                self._inference = GraphedInference(
                    self.function, self.module, max_graphs=self.max_graphs
                )
            graphs = self._inference
        output = graphs(padded, padded_lengths, *more)
        # a replay's buffer is overwritten by the next replay: a copy
        return output.narrow(self.output_time_dim, 0, time).clone(
            memory_format=torch.contiguous_format
        )

    def padded_call(
        self,
        x: torch.Tensor,
        lengths: Optional[torch.Tensor],
        *more: torch.Tensor,
    ) -> torch.Tensor:
        """The eager call that the graphs record: ``x`` padded up to its
        bucket, then the output cut back (what tests compare with the plain
        call).

        Arguments
        ---------
        x : torch.Tensor
            The input, time along ``time_dim``.
        lengths : torch.Tensor, optional
            Relative lengths ``[B]``.
        *more : torch.Tensor
            Further arguments of the function.

        Returns
        -------
        torch.Tensor
            The function's output cut to the input's length.

        Example
        -------
        >>> graphs = BucketedGraphs(
        ...     lambda x, lengths: x.cumsum(1), torch.nn.Identity(), 1, 1
        ... )
        >>> x = torch.randn(2, 17, 3)
        >>> torch.allclose(graphs.padded_call(x, None), x.cumsum(1))
        True
        """
        time = x.shape[self.time_dim]
        padded, padded_lengths = pad_to_bucket(x, lengths, self.time_dim)
        output = self.function(padded, padded_lengths, *more)
        return output.narrow(self.output_time_dim, 0, time)


class SelfGraphedModule(nn.Module):
    """Base of the modules that replay their own calls from
    :class:`BucketedGraphs` (the ``cuda_graphs`` option of Mamba-TasNet's
    mask network, the Mamba stacks and the ConMamba encoder).

    A subclass calls :meth:`init_cuda_graphs` in its constructor and, in
    ``forward``, ``self.cuda_graph_calls(function, time_dim,
    output_time_dim)(x, lengths, ...)`` where :meth:`uses_cuda_graphs` says
    so. Copies and pickles leave the graphs out.

    Example
    -------
    >>> class Cumulative(SelfGraphedModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.init_cuda_graphs(True, 4, 4)
    ...     def forward(self, x):
    ...         calls = self.cuda_graph_calls(self._sum, 1, 1)
    ...         return calls(x, None) if self.uses_cuda_graphs() else x
    ...     def _sum(self, x, lengths):
    ...         return x.cumsum(1)
    >>> Cumulative()(torch.ones(1, 3)).tolist()  # CPU: the plain call
    [[1.0, 2.0, 3.0]]
    """

    def init_cuda_graphs(
        self,
        cuda_graphs: bool,
        max_cuda_graphs: int,
        max_training_graphs: int,
        plain_training: bool = False,
    ) -> None:
        """Stores and checks the options.

        Arguments
        ---------
        cuda_graphs : bool
            Whether calls on CUDA replay graphs.
        max_cuda_graphs : int
            Most inference graphs kept.
        max_training_graphs : int
            Most training graph pairs kept.
        plain_training : bool
            Training calls are plain: the module draws random numbers on
            the host (stochastic depth, layer drop) or recomputes in its
            backward (gradient checkpointing).
        """
        for name, value in (
            ("max_cuda_graphs", max_cuda_graphs),
            ("max_training_graphs", max_training_graphs),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.cuda_graphs = cuda_graphs
        self.max_cuda_graphs = max_cuda_graphs
        self.max_training_graphs = max_training_graphs
        self._plain_training = plain_training
        self._graphed: Optional[BucketedGraphs] = None

    def uses_cuda_graphs(self) -> bool:
        """Whether this call may replay graphs (the option is on, and not
        a training call that must be plain).

        Returns
        -------
        bool
            False: the plain call.
        """
        return self.cuda_graphs and not (self.training and self._plain_training)

    def cuda_graph_calls(
        self,
        function: Callable[..., torch.Tensor],
        time_dim: int,
        output_time_dim: int,
    ) -> BucketedGraphs:
        """The module's :class:`BucketedGraphs` (made at the first call).

        Arguments
        ---------
        function : callable
            The module's padded-length call, ``function(x, lengths, ...)``.
        time_dim : int
            Time axis of ``x``.
        output_time_dim : int
            Time axis of the output.

        Returns
        -------
        BucketedGraphs
            Call it with ``(x, lengths, ...)``.
        """
        if self._graphed is None:
            self._graphed = BucketedGraphs(
                function,
                self,
                time_dim=time_dim,
                output_time_dim=output_time_dim,
                max_graphs=self.max_cuda_graphs,
                max_training_graphs=self.max_training_graphs,
            )
        return self._graphed

    @property
    def num_cuda_graphs(self) -> int:
        """Number of recorded CUDA graphs (inference graphs plus training
        forward + backward pairs)."""
        return 0 if self._graphed is None else self._graphed.num_graphs

    def drop_cuda_graphs(self) -> None:
        """Forgets every recorded graph; their memory is freed once no
        output of a replay is referenced any more (the next calls record
        again)."""
        self._graphed = None

    def _replicate_for_data_parallel(self):
        """Replicas made by ``nn.DataParallel`` at every step call plainly:
        their parameters are copies on other devices, new at each step."""
        replica = super()._replicate_for_data_parallel()
        replica._graphed = None
        replica.cuda_graphs = False
        return replica

    def __getstate__(self):
        """Copies and pickles leave the CUDA graphs out."""
        state = self.__dict__.copy()
        state["_graphed"] = None
        return state


def self_graphed_modules(model: nn.Module) -> List[SelfGraphedModule]:
    """The sub-modules of ``model`` (itself included) that record their
    own CUDA graphs, e.g. to switch their ``cuda_graphs`` option.

    Arguments
    ---------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    list of SelfGraphedModule
        In ``model.modules()`` order.

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> model = nn.Sequential(MambaStack(8, 1, d_state=4), nn.Linear(8, 8))
    >>> [type(m).__name__ for m in self_graphed_modules(model)]
    ['MambaStack']
    """
    return [m for m in model.modules() if isinstance(m, SelfGraphedModule)]
