"""A module's training forward and backward replayed from CUDA graphs.

A Mamba mask network on short inputs is bound by the host: dozens of layers,
each a few GPU kernels launched from Python, and autograd's bookkeeping in
between, so the GPU waits. Where the training inputs have recurring shapes
(the separation recipes crop every training mixture to the same number of
samples), the forward and backward of such a module can each be recorded
once per shape in a CUDA graph (``torch.cuda.make_graphed_callables``) and
replayed: one launch each, the same kernels, the same numbers.

:class:`GraphedTraining` wraps a module without becoming its owner: the
module stays where it is (checkpoints, optimizer and ``self.modules`` of a
SpeechBrain ``Brain`` are unchanged) and the wrapper is called in its place
in the training forward. It records a graph for each new (shape, dtype,
autocast) key, up to ``max_graphs`` of them, and calls the module eagerly in
every other case: evaluation mode, no gradient, CPU tensors, a module
wrapped in ``DistributedDataParallel`` (its gradient hooks run during
backward), more shapes than allowed, or a module that cannot be recorded
(e.g. one that copies from host memory in its forward; it is then never
tried again). The outputs of a replay live in the graph's own memory and are
overwritten by the next replay of the same graph: use them within the
training step.

Author
------
speechbrain-mamba developers
"""

import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _Forward(nn.Module):
    """A module of its own around ``module.forward`` (recording a module
    replaces its ``forward``; this keeps the wrapped module untouched)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calls the wrapped module."""
        return self.module(x)


class GraphedTraining:
    """Calls ``module(x)`` in training through CUDA graphs of its forward
    and backward, one pair per input shape.

    Arguments
    ---------
    module : torch.nn.Module
        A module of one tensor argument returning one tensor, with no
        host synchronisation in its forward or backward (e.g. a Mamba-TasNet
        or DPMamba mask network).
    max_graphs : int
        Most input keys (shape, dtype, autocast) to record; later keys run
        eagerly (each graph keeps its activations' memory).
    warmup : int
        Eager forward + backward passes before each recording.

    Example
    -------
    >>> layer = torch.nn.Linear(4, 4)
    >>> graphed = GraphedTraining(layer)
    >>> y = graphed(torch.randn(2, 4))  # on CPU: a plain call
    >>> graphed.num_graphs
    0
    """

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 3):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.module = module
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: Dict[Tuple, nn.Module] = {}
        self._unrecordable: Optional[str] = None

    @property
    def num_graphs(self) -> int:
        """Number of recorded graphs (forward + backward pairs)."""
        return len(self._graphs)

    def _applies(self, x: torch.Tensor) -> bool:
        return (
            self._unrecordable is None
            and self.module.training
            and torch.is_grad_enabled()
            and x.is_cuda
            and not isinstance(self.module, nn.parallel.DistributedDataParallel)
        )

    @staticmethod
    def _key(x: torch.Tensor) -> Tuple:
        enabled = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if enabled else None
        return tuple(x.shape), x.dtype, x.requires_grad, enabled, dtype

    def _record(self, x: torch.Tensor, key: Tuple) -> Optional[nn.Module]:
        _, _, _, enabled, dtype = key
        sample = x.detach().clone().requires_grad_(x.requires_grad)
        forward = _Forward(self.module)
        try:
            # graphs take no autocast cast cache: casts are recorded as kernels
            with torch.autocast(
                "cuda", dtype=dtype, enabled=enabled, cache_enabled=False
            ):
                graphed = torch.cuda.make_graphed_callables(
                    forward, (sample,), num_warmup_iters=self.warmup
                )
        except (RuntimeError, torch.OutOfMemoryError) as err:
            self._unrecordable = str(err)
            logger.warning(
                "%s cannot be recorded in a CUDA graph (%s); it runs eagerly",
                type(self.module).__name__,
                err,
            )
            torch.cuda.synchronize()
            return None
        self._graphs[key] = graphed
        logger.info(
            "recorded %s for input %s in CUDA graph %d",
            type(self.module).__name__,
            tuple(x.shape),
            len(self._graphs),
        )
        return graphed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the module on ``x`` (replayed from a graph in training).

        Arguments
        ---------
        x : torch.Tensor
            The module's input.

        Returns
        -------
        torch.Tensor
            The module's output.
        """
        if not self._applies(x):
            return self.module(x)
        key = self._key(x)
        graphed = self._graphs.get(key)
        if graphed is None:
            if len(self._graphs) >= self.max_graphs:
                return self.module(x)
            graphed = self._record(x, key)
            if graphed is None:
                return self.module(x)
        return graphed(x)
