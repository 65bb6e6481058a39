"""A module's training forward and backward replayed from CUDA graphs.

A Mamba mask network on short inputs is bound by the host: dozens of layers,
each a few GPU kernels launched from Python, and autograd's bookkeeping in
between, so the GPU waits. The forward and the backward of such a call can
each be recorded once per input key in a CUDA graph and replayed: one
launch each, the same kernels, the same numbers.

:class:`GraphedTraining` calls ``function(*inputs)`` with autograd: the
forward graph's output is returned through an autograd node whose backward
replays the backward graph. The backward graph adds each trainable
parameter's gradient into one buffer per parameter, which becomes the
parameter's ``.grad``: a replayed step keeps no second copy of the
gradients (an eager step's memory), and accumulation over micro-batches,
``zero_grad`` either way, ``torch.autograd.grad``, ``backward(inputs=...)``,
parameters also used outside the function and gradient hooks on parameters
give eager's gradients (see :class:`GraphedTraining`).

- Keys are the inputs' shapes, dtypes, devices and ``requires_grad``, the
  autocast state and the training flag of every sub-module; at most
  ``max_graphs`` are
  recorded (later keys run eagerly). Callers with variable lengths pad them
  up to a few buckets first
  (:class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
- Memory: every graph is recorded into one memory pool per device, so the
  activations of a forward graph (read by its backward graph) share memory
  with those of the other keys: about one eager step's activations in all,
  plus each key's input and output buffers. Every key adds the parameter
  gradients into the same buffers, as they are computed (the gradients of
  all parameters never exist twice). This is safe because
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
import operator
import weakref
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
)

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


def _engine_wants(node: Any) -> Optional[bool]:
    """Whether the running backward accumulates into the gradient
    accumulator ``node``: True, False, or None where
    ``torch.autograd.grad`` returns the gradient."""
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError as error:
        if "autograd.grad" not in str(error):
            raise
        return None


def _place_gradients(
    nodes: Sequence[Any],
    params: Sequence[torch.Tensor],
    buffers: Sequence[torch.Tensor],
    replay: Callable[[], None],
) -> List[Optional[torch.Tensor]]:
    """Inside a backward: runs ``replay``, which adds each parameter's
    gradient into its buffer, and puts each gradient where this backward
    wants it, asking autograd's engine per parameter.

    - Accumulated into ``.grad`` (``backward()``, or ``inputs`` naming
      it): when ``.grad`` is the buffer, the replay's addition is the
      accumulation; when ``.grad`` is None, the buffer is zeroed first and
      becomes ``.grad``; another ``.grad`` tensor gets the gradient added
      in place. Autograd gets None (it must not add it again; gradient
      that reaches the parameter by other paths is still added by autograd
      afterwards, into that ``.grad``).
    - Wanted by ``torch.autograd.grad``, or accumulated into a parameter
      watched by gradient hooks: autograd gets a fresh copy (the buffer is
      overwritten by the next replay), and runs the hooks.
    - Not wanted: autograd gets None.

    A ``.grad`` that is the buffer keeps its value whenever this backward
    does not accumulate into it. Zeroing, copies and additions are one
    multi-tensor operation each.

    Arguments
    ---------
    nodes : sequence
        The parameters' gradient accumulators (autograd nodes), those that
        the calling backward's node feeds.
    params : sequence of torch.Tensor
        The parameters (leaves) that the replay gives gradients.
    buffers : sequence of torch.Tensor
        One per parameter: the memory ``replay`` adds its gradient into.
    replay : callable
        Adds each parameter's gradient into its buffer.

    Returns
    -------
    list
        Per parameter, what the calling backward returns to autograd:
        None, or a fresh tensor holding the gradient.

    Example
    -------
    >>> class Doubles(torch.autograd.Function):  # y = 2 w, "replayed"
    ...     @staticmethod
    ...     def forward(ctx, buffer, w):
    ...         ctx.buffer, ctx.w = buffer, w
    ...         return 2 * w
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         node = ctx.next_functions[1][0]  # w's accumulator
    ...         add = lambda: ctx.buffer.add_(2 * g)  # what the graph does
    ...         grads = _place_gradients([node], [ctx.w], [ctx.buffer], add)
    ...         return None, *grads
    >>> w, buffer = torch.ones(3, requires_grad=True), torch.empty(3)
    >>> Doubles.apply(buffer, w).sum().backward()
    >>> w.grad is buffer, w.grad.tolist()
    (True, [2.0, 2.0, 2.0])
    >>> Doubles.apply(buffer, w).sum().backward()  # accumulates
    >>> w.grad.tolist()
    [4.0, 4.0, 4.0]
    >>> (g,) = torch.autograd.grad(Doubles.apply(buffer, w).sum(), w)
    >>> g.tolist(), w.grad.tolist()  # .grad untouched
    ([2.0, 2.0, 2.0], [4.0, 4.0, 4.0])
    """
    try:
        wanted = list(map(torch._C._will_engine_execute_node, nodes))
    except RuntimeError as error:
        if "autograd.grad" not in str(error):
            raise
        wanted = [_engine_wants(node) for node in nodes]
    grads = [param.grad for param in params]
    hooked = [  # register_hook, register_post_accumulate_grad_hook
        bool(param._backward_hooks or param._post_accumulate_grad_hooks)
        for param in params
    ]
    if (
        all(wanted)
        and all(map(operator.is_, grads, buffers))
        and not any(hooked)
    ):  # accumulating into the buffers, as every step but the first
        replay()
        return [None] * len(params)
    saved, zeroed, handed = [], [], []
    adopted, added = [], []
    for index, (accumulates, hooks, param, grad, buffer) in enumerate(
        zip(wanted, hooked, params, grads, buffers)
    ):
        if accumulates and not hooks:
            if grad is not buffer:
                zeroed.append(buffer)
                if grad is None:
                    adopted.append((param, buffer))
                else:
                    added.append((grad, buffer))
            continue
        if grad is buffer:
            saved.append(buffer)
        if accumulates is not False:
            zeroed.append(buffer)
            handed.append(index)
    copies = torch._foreach_mul(saved, 1.0) if saved else []
    if zeroed:
        torch._foreach_zero_(zeroed)
    replay()
    result: List[Optional[torch.Tensor]] = [None] * len(params)
    if handed:
        fresh = torch._foreach_mul([buffers[i] for i in handed], 1.0)
        for index, grad in zip(handed, fresh):
            result[index] = grad
    if saved:
        torch._foreach_copy_(saved, copies)
    if added:
        torch._foreach_add_(*map(list, zip(*added)))
    for param, buffer in adopted:
        param.grad = buffer
    return result


def _drop_grad(tensor: torch.Tensor) -> None:
    """A post-accumulate-grad hook of the warm-up: forgets the gradient just
    accumulated (warm-up gradients are not kept)."""
    tensor.grad = None


def _mark_reached(reached: set, index: int) -> Callable:
    """A gradient hook that notes ``index`` when a gradient arrives (the
    engine calls hooks with None where an operation gives none)."""

    def hook(grad: Optional[torch.Tensor]) -> None:
        if grad is not None:
            reached.add(index)

    return hook


class _Recorded:
    """One key: input buffers, the two graphs, output buffer, and where
    the backward graph leaves the gradients."""

    def __init__(
        self, inputs, forward, backward, output, grad_output, input_grads, used
    ):
        self.inputs = inputs
        self.forward = forward
        self.backward = backward
        self.output = output
        self.grad_output = grad_output
        # per input: the graph's tensor holding its gradient, or None
        self.input_grads = input_grads
        # the parameters the backward graph adds a gradient to (index
        # among the parameters, parameter, buffer)
        self.used = tuple(index for index, _, _ in used)
        self.used_params = tuple(param for _, param, _ in used)
        self.used_buffers = tuple(buffer for _, _, buffer in used)
        self.nodes: Optional[Tuple[Any, ...]] = None  # their accumulators


class _AwaitingBackward:
    """Marks a replayed forward whose backward has not run yet."""

    done = False


class _Replay(torch.autograd.Function):
    """Replays a recorded forward; its backward replays the backward."""

    @staticmethod
    def forward(ctx, recorded, token, num_params, *tensors):
        for buffer, value in zip(recorded.inputs, tensors):
            if buffer.data_ptr() != value.data_ptr():
                buffer.copy_(value)
        recorded.forward.replay()
        ctx.recorded = recorded
        ctx.token = token
        ctx.num_params = num_params
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
        if recorded.nodes is None:  # the same while the parameters live
            first = len(recorded.inputs)
            recorded.nodes = tuple(
                ctx.next_functions[first + index][0] for index in recorded.used
            )
        placed = _place_gradients(
            recorded.nodes,
            recorded.used_params,
            recorded.used_buffers,
            recorded.backward.replay,
        )
        ctx.token.done = True
        # the inputs' gradients as fresh tensors (one multi-tensor copy):
        # the graph's are overwritten by the next replay
        wanted = [g for g in recorded.input_grads if g is not None]
        copies = iter(torch._foreach_mul(wanted, 1.0) if wanted else [])
        input_grads = tuple(
            None if g is None else next(copies) for g in recorded.input_grads
        )
        param_grads: List[Optional[torch.Tensor]] = [None] * ctx.num_params
        for index, param_grad in zip(recorded.used, placed):
            param_grads[index] = param_grad
        return (None, None, None) + input_grads + tuple(param_grads)


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

    Notes
    -----
    Where the replayed backward puts a parameter's gradient:

    - ``backward()`` (or ``inputs`` naming the parameter): when ``.grad`` is
      None (``zero_grad(set_to_none=True)``, which SpeechBrain's ``Brain``
      calls after each optimizer step), the parameter's buffer is zeroed and
      becomes ``.grad``; when ``.grad`` is the buffer (in-place
      ``zero_grad``, accumulation over micro-batches), the gradient is added
      to it; a ``.grad`` assigned since the recording gets the gradient
      added in place, as eagerly (the buffer then costs the parameters'
      bytes once more, until ``.grad`` is set to None). A ``.grad`` present
      at the first recording becomes the buffer.
    - ``torch.autograd.grad`` or a parameter watched by gradient hooks
      (``register_hook``, ``register_post_accumulate_grad_hook``): autograd
      gets a fresh copy of the gradient and runs the hooks as eagerly.
    - Gradient reaching the parameter outside the function (a parameter used
      there too) is added by autograd into ``.grad`` afterwards.

    The one difference from eager: after ``zero_grad(set_to_none=True)``
    the next backward gives the parameter the same ``.grad`` tensor again
    (eagerly a new one), so a reference to the old ``.grad`` kept by the
    caller sees the new gradient.

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
        """One buffer per parameter, shared by every key: its ``.grad``
        where it has one of the parameter's layout (no second copy of the
        gradients, e.g. while ``zero_grad(set_to_none=False)`` keeps them),
        else new memory."""
        if self._grad_buffers is None:
            buffers, taken = [], set()
            for param in params:
                grad = param.grad
                if (
                    grad is not None
                    and id(grad) not in taken
                    and grad.layout == torch.strided
                    and not grad.requires_grad
                    and grad.dtype == param.dtype
                    and grad.device == param.device
                    and grad.shape == param.shape
                    and grad.stride() == param.stride()
                ):
                    taken.add(id(grad))
                    buffers.append(grad)
                else:
                    buffers.append(
                        torch.empty_like(
                            param, memory_format=torch.preserve_format
                        )
                    )
            self._grad_buffers = tuple(buffers)
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
                    # each gradient is dropped once accumulated: no more
                    # memory than an eager step's
                    for leaf in leaves:
                        leaf.register_post_accumulate_grad_hook(_drop_grad)
                    for _ in range(self.warmup):
                        out = self.function(*static)
                        torch.autograd.backward(
                            out,
                            torch.ones_like(out),
                            inputs=static_wanted + leaves,
                        )
                        del out
                        for tensor in static_wanted:
                            tensor.grad = None
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
                # the backward adds each parameter's gradient into its
                # buffer as autograd produces it (AccumulateGrad adds in
                # place into a defined .grad), so the gradients of all
                # parameters never exist at once in the graph's memory;
                # the inputs' gradients stay in the graph's memory
                reached = set()
                for index, (leaf, buffer) in enumerate(zip(leaves, shared)):
                    leaf.grad = buffer
                    leaf.register_hook(_mark_reached(reached, index))
                backward = torch.cuda.CUDAGraph()
                with capturing(backward, pool, "thread_local"):
                    torch.autograd.backward(
                        out, grad_output, inputs=static_wanted + leaves
                    )
                moved = [
                    index
                    for index, (leaf, buffer) in enumerate(zip(leaves, shared))
                    if leaf.grad is not buffer
                    or leaf.grad.data_ptr() != buffer.data_ptr()
                ]
                if moved:
                    raise RuntimeError(
                        f"{len(moved)} parameter gradients were not added "
                        "in place into their buffers while recording the "
                        "backward"
                    )
        except RuntimeError as error:  # out of memory included
            self.recording_failed(error, key, device)
            return None
        recorded = _Recorded(
            static,
            forward,
            backward,
            out.detach(),
            grad_output,
            tuple(t.grad if t.requires_grad else None for t in static),
            [
                (index, param, buffer)
                for index, (param, buffer) in enumerate(zip(params, shared))
                if index in reached
            ],
        )
        # the forward's activations go back to the pool
        del out, leaves
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
        return _Replay.apply(
            recorded, token, len(self._params), *inputs, *self._params
        )
