"""A module's training forward and backward replayed from CUDA graphs.

A Mamba mask network on short inputs is bound by the host: dozens of layers,
each a few GPU kernels launched from Python, and autograd's bookkeeping in
between, so the GPU waits. The forward and the backward of such a call can
each be recorded once per input key in a CUDA graph and replayed: one
launch each, the same kernels, the same numbers.

:class:`GraphedTraining` calls ``function(*inputs)`` with autograd: the
forward graph's output is returned through an autograd node whose backward
replays the backward graph and hands the gradients of the differentiable
inputs and of ``module``'s trainable parameters to autograd, which
accumulates them into ``.grad`` as after an eager backward (hooks on the
parameters and gradient accumulation work as usual).

- Keys are the inputs' shapes, dtypes, devices and ``requires_grad``, the
  autocast state and the training flag of every sub-module; at most
  ``max_graphs`` are
  recorded (later keys run eagerly). Callers with variable lengths pad them
  up to a few buckets first
  (:class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
- Memory: every graph is recorded into one memory pool per device, so the
  activations of a forward graph (read by its backward graph) share memory
  with those of the other keys: about one eager step's activations in all,
  plus each key's input and output buffers. The parameter gradients are
  written into one set of buffers shared by every key. This is safe because
  a replayed forward's backward runs before the next replay: a call made
  while an earlier replay still waits for its backward (two forwards, then
  the backwards) runs eagerly instead.
- The module is watched like by
  :class:`~speechbrain_mamba.utils.graphed_inference.GraphedInference`:
  in-place updates (optimizer steps, ``load_state_dict``) are read by the
  next replay; replaced parameters or a changed ``requires_grad`` drop the
  graphs; forward hooks on a sub-module, CPU tensors, a host
  synchronisation inside the function (then never tried again) or several
  processes (DDP, whose gradient buckets are not recorded) mean eager calls.

Author
------
speechbrain-mamba developers
"""

import contextlib
import logging
import weakref
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from speechbrain_mamba.utils.cuda_graphs import capturing, side_stream
from speechbrain_mamba.utils.graphed_inference import (
    KeyedGraphs,
    autocast_state,
    forward_hooks_watch,
    inside_graphed_call,
    outermost_graphed_call,
)

logger = logging.getLogger(__name__)


def _several_processes() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


@contextlib.contextmanager
def _fresh_leaves(
    module: nn.Module, params: Tuple[nn.Parameter, ...]
) -> Iterator[Tuple[torch.Tensor, ...]]:
    """Swaps ``params`` in ``module`` for new leaf tensors on the same
    memory while recording: autograd then makes new gradient-accumulator
    nodes on the recording stream, instead of reaching nodes of an earlier
    step that a kept tensor holds (made on another stream, which would
    make autograd synchronise with it and break the capture)."""
    leaves = {id(p): p.detach().requires_grad_() for p in params}
    swapped = [
        (sub, name, p)
        for sub in module.modules()
        for name, p in sub._parameters.items()
        if p is not None and id(p) in leaves
    ]
    for sub, name, p in swapped:
        sub._parameters[name] = leaves[id(p)]
    try:
        yield tuple(leaves[id(p)] for p in params)
    finally:
        for sub, name, p in swapped:
            sub._parameters[name] = p


class _Recorded:
    """One key: input buffers, the two graphs, output and gradient
    buffers."""

    def __init__(self, inputs, forward, backward, output, grad_output, grads):
        self.inputs = inputs
        self.forward = forward
        self.backward = backward
        self.output = output
        self.grad_output = grad_output
        self.grads = grads


class _AwaitingBackward:
    """Marks a replayed forward whose backward has not run yet."""

    done = False


class _Replay(torch.autograd.Function):
    """Replays a recorded forward; its backward replays the backward."""

    @staticmethod
    def forward(ctx, recorded, token, *tensors):
        for buffer, value in zip(recorded.inputs, tensors):
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        recorded.forward.replay()
        ctx.recorded = recorded
        ctx.token = token
        return recorded.output.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if ctx.token.done:
            raise RuntimeError(
                "the backward of a forward replayed from a CUDA graph runs "
                "once (retain_graph=True and a second backward would read "
                "activations that later replays overwrite); set "
                "cuda_graphs=False on the module to backpropagate twice"
            )
        recorded = ctx.recorded
        recorded.grad_output.copy_(grad)
        recorded.backward.replay()
        ctx.token.done = True
        # fresh tensors (one multi-tensor copy): the buffers are overwritten
        # by the next replay, so neither .grad nor autograd.grad's results
        # may be the buffers themselves
        grads = [g for g in recorded.grads if g is not None]
        copies = iter(torch._foreach_mul(grads, 1.0) if grads else [])
        return (None, None) + tuple(
            None if g is None else next(copies) for g in recorded.grads
        )


class GraphedTraining(KeyedGraphs):
    """Calls ``function(*inputs)`` with autograd, the forward and backward
    replayed from CUDA graphs, a pair per input key.

    Arguments
    ---------
    function : callable
        Takes tensors and returns one tensor computed from them and from
        ``module``'s parameters and buffers, with no host synchronisation.
        A module can be given alone (``GraphedTraining(module)``).
    module : torch.nn.Module, optional
        Owner of the parameters ``function`` reads and trains; defaults to
        ``function`` itself.
    max_graphs : int
        Most keys to record; calls of other keys run eagerly.
    warmup : int
        Eager forward + backward passes before each recording.

    Example
    -------
    >>> layer = torch.nn.Linear(4, 4)
    >>> graphed = GraphedTraining(layer)
    >>> x = torch.randn(2, 4)
    >>> torch.equal(graphed(x), layer(x))  # on CPU: a plain call
    True
    >>> graphed.num_graphs
    0
    """

    kind = "training CUDA"

    def __init__(
        self,
        function: Callable[..., torch.Tensor],
        module: Optional[nn.Module] = None,
        max_graphs: int = 4,
        warmup: int = 3,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        if module is None:
            if not isinstance(function, nn.Module):
                raise ValueError("give the module whose parameters it trains")
            module = function
        super().__init__(function, module, max_graphs, warmup)
        self._grad_buffers: Optional[Tuple[torch.Tensor, ...]] = None
        self._params: Tuple[nn.Parameter, ...] = ()
        self._awaiting: Optional[weakref.ref] = None

    def clear(self) -> None:
        """Drops every graph and its memory (once no output of a replay is
        referenced any more) and forgets failed recordings."""
        super().clear()
        self._grad_buffers = None
        self._awaiting = None

    def _module_state(self) -> Optional[List]:
        """Addresses and ``requires_grad`` of the module's tensors."""
        state = []
        for module in self.module.modules():
            for tensor in module._parameters.values():
                if tensor is not None:
                    state.append(
                        (id(tensor), tensor.data_ptr(), tensor.requires_grad)
                    )
            for tensor in module._buffers.values():
                if tensor is not None:
                    state.append(tensor.data_ptr())
        return state

    def applies(self, *inputs: torch.Tensor) -> bool:
        """Whether a call with these inputs can replay graphs (recorded or
        to record): CUDA inputs, gradients needed, no forward hook, one
        process, the function recordable.

        Arguments
        ---------
        *inputs : torch.Tensor
            The function's arguments.

        Returns
        -------
        bool
            False: the call is a plain (eager) call.
        """
        return (
            self._unrecordable is None
            and inputs[0].is_cuda
            and torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
            and not isinstance(self.module, nn.parallel.DistributedDataParallel)
            and not _several_processes()
            and not forward_hooks_watch(self.module)
        )

    def _key(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple:
        return (
            tuple(
                (t.shape, t.dtype, t.device, t.requires_grad) for t in inputs
            ),
            *self.common_key(),
        )

    def _gradient_buffers(self, params) -> Tuple[torch.Tensor, ...]:
        if self._grad_buffers is None:
            self._grad_buffers = tuple(
                torch.empty_like(p, memory_format=torch.preserve_format)
                for p in params
            )
        return self._grad_buffers

    def _record(self, inputs: Tuple[torch.Tensor, ...], key: Tuple):
        device = inputs[0].device
        enabled, dtype = autocast_state()
        params = tuple(p for p in self.module.parameters() if p.requires_grad)
        static = tuple(
            t.detach().clone().requires_grad_(t.requires_grad) for t in inputs
        )
        static_wanted = tuple(t for t in static if t.requires_grad)
        pool = self.pool(device)
        try:
            with (
                torch.cuda.device(device),
                # no autocast cast cache: the graphs record the weight casts
                torch.autocast(
                    "cuda", dtype=dtype, enabled=enabled, cache_enabled=False
                ),
            ):
                side = side_stream()
                side.wait_stream(torch.cuda.current_stream())
                with (
                    torch.cuda.stream(side),
                    _fresh_leaves(self.module, params) as leaves,
                ):
                    for _ in range(self.warmup):
                        out = self.function(*static)
                        torch.autograd.grad(
                            out,
                            static_wanted + leaves,
                            torch.ones_like(out),
                            allow_unused=True,
                        )
                        del out
                torch.cuda.current_stream().wait_stream(side)
                forward = torch.cuda.CUDAGraph()
                with (
                    _fresh_leaves(self.module, params) as leaves,
                    capturing(forward, pool, "thread_local"),
                ):
                    out = self.function(*static)
                if not isinstance(out, torch.Tensor) or not out.requires_grad:
                    raise RuntimeError(
                        "the function must return one tensor that needs "
                        "gradients"
                    )
                grad_output = torch.empty_like(out)
                shared = self._gradient_buffers(params)
                backward = torch.cuda.CUDAGraph()
                with capturing(backward, pool, "thread_local"):
                    grads = torch.autograd.grad(
                        out,
                        static_wanted + leaves,
                        grad_output,
                        allow_unused=True,
                    )
                    param_grads = grads[len(grads) - len(params) :]
                    used = [
                        (buffer, grad)
                        for buffer, grad in zip(shared, param_grads)
                        if grad is not None
                    ]
                    if used:
                        torch._foreach_copy_(*map(list, zip(*used)))
        except RuntimeError as error:  # out of memory included
            self.recording_failed(error, key, device)
            return None
        # gradients handed to autograd: one per input (None where it needs
        # none), then the shared buffer of each parameter (None if unused)
        grads_in = iter(grads)
        input_grads = tuple(
            next(grads_in) if t.requires_grad else None for t in static
        )
        param_grads = tuple(
            buffer if grad is not None else None
            for buffer, grad in zip(shared, param_grads)
        )
        recorded = _Recorded(
            static,
            forward,
            backward,
            out.detach(),
            grad_output,
            input_grads + param_grads,
        )
        # the forward's activations go back to the pool
        del out, grads, used, leaves
        self._params = params
        self._graphs[key] = recorded
        logger.info(
            "recorded the training forward and backward of %s for inputs "
            "%s in CUDA graph %d",
            type(self.module).__name__,
            [tuple(t.shape) for t in inputs],
            len(self._graphs),
        )
        return recorded

    def _awaiting_backward(self) -> bool:
        token = None if self._awaiting is None else self._awaiting()
        return token is not None and not token.done

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Runs ``function(*inputs)``, replayed from graphs where they
        apply.

        Arguments
        ---------
        *inputs : torch.Tensor
            The function's arguments.

        Returns
        -------
        torch.Tensor
            The function's output. A replayed output lives in the graph's
            memory, which the next replay (of any key: they share one pool)
            overwrites: copy what is kept beyond the training step
            (:class:`~speechbrain_mamba.utils.bucketed_graphs.
            BucketedGraphs` returns copies).
        """
        if inside_graphed_call() or not self.applies(*inputs):
            return self.function(*inputs)
        return self._call(inputs)

    def _call(self, inputs: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        self.watch(self._module_state())
        if self._awaiting_backward():
            return self.function(*inputs)  # a replay's backward is pending
        key = self._key(inputs)
        recorded = self._graphs.get(key)
        if recorded is None:
            if not self.may_record(key):
                return self.function(*inputs)
            # modules inside call plainly while this one records them
            with outermost_graphed_call():
                recorded = self._record(inputs, key)
            if recorded is None:
                return self.function(*inputs)
        token = _AwaitingBackward()
        self._awaiting = weakref.ref(token)
        return _Replay.apply(recorded, token, *inputs, *self._params)
