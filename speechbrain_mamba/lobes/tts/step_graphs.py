"""VALL-M's AR decoding step replayed from CUDA graphs that the model
records by itself.

The decoding state of a Mamba AR model has a fixed size (a conv window and
an SSM state per layer, and the next audio position) and its fused decoding
step (:mod:`speechbrain_mamba.ops.triton.mamba_step`) updates it in place,
so one step can be recorded once in a CUDA graph and replayed for every
token: one launch per token instead of about a hundred, the same kernels
and numbers. :class:`ARStepGraphs` is what
:meth:`~speechbrain_mamba.lobes.tts.ar.CodecAR.step` calls (its
``cuda_graphs`` option), so that a plain ``ar.step(tokens, state)`` from
any decoding loop replays a graph.

A graph reads and writes fixed tensors. A recording therefore owns static
copies of the state tensors, and the first step of a state copies the
state's values into them and *binds* the state to them
(:func:`bind_state`: its attributes then are the static tensors), so the
following steps of the same generation replay with no copy at all. When
another state is stepped (two generations interleaved, or the new tensors
of ``state.reorder(...)`` for beams), the previously bound state first gets
private clones of the values it holds (:func:`release_state`): two live
states never share storage. Each replay returns a copy of the logits.

A Transformer's key/value cache grows at every step, which a recorded
graph cannot follow; such models (and Mamba models off the fused path:
CPU, gradients, batches over the fused kernels' limit) step plainly.

Author
------
speechbrain-mamba developers
"""

import contextlib
import dataclasses
import weakref
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from speechbrain_mamba.utils.graphed_inference import (
    GraphedInference,
    inside_graphed_call,
    outermost_graphed_call,
)


def _slots(state: Any) -> List[Tuple[Any, str]]:
    """(holder, attribute) of every tensor of a Mamba decoding state:
    ``next_position``, then ``conv`` and ``ssm`` of each layer's cache."""
    slots = [(state, "next_position")]
    for cache in state.cache:
        slots += [(cache, "conv"), (cache, "ssm")]
    return slots


def state_tensors(state: Any) -> List[torch.Tensor]:
    """The tensors of a Mamba decoding state, in a fixed order.

    Arguments
    ---------
    state : ARDecodingState
        A state whose cache is a list of
        :class:`~speechbrain_mamba.nnet.cache.MambaCache`.

    Returns
    -------
    list of torch.Tensor
        ``next_position``, then ``conv`` and ``ssm`` of each layer.

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import ARDecodingState
    >>> from speechbrain_mamba.nnet.cache import MambaCache
    >>> state = ARDecodingState(
    ...     [MambaCache(torch.zeros(1, 4, 3), torch.ones(1, 4, 2))],
    ...     torch.tensor([5]))
    >>> [tuple(t.shape) for t in state_tensors(state)]
    [(1,), (1, 4, 3), (1, 4, 2)]
    """
    return [getattr(holder, name) for holder, name in _slots(state)]


def holds(state: Any, static: Sequence[torch.Tensor]) -> bool:
    """Whether ``state`` is bound to ``static``: each of its tensors is the
    static tensor itself.

    Arguments
    ---------
    state : ARDecodingState
        A Mamba decoding state.
    static : sequence of torch.Tensor
        A recording's static tensors, in :func:`state_tensors` order.

    Returns
    -------
    bool

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import ARDecodingState
    >>> from speechbrain_mamba.nnet.cache import MambaCache
    >>> state = ARDecodingState(
    ...     [MambaCache(torch.zeros(1, 4, 3), torch.ones(1, 4, 2))],
    ...     torch.tensor([5]))
    >>> holds(state, state_tensors(state)), holds(state, [])
    (True, False)
    """
    slots = _slots(state)
    return len(slots) == len(static) and all(
        getattr(holder, name) is tensor
        for (holder, name), tensor in zip(slots, static)
    )


def release_state(state: Any, static: Sequence[torch.Tensor]) -> None:
    """Gives ``state`` private clones of the static tensors it holds (the
    values stay), so that binding another state to ``static`` leaves it
    unchanged.

    Arguments
    ---------
    state : ARDecodingState
        A state that may hold some of ``static``.
    static : sequence of torch.Tensor
        A recording's static tensors.

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import ARDecodingState
    >>> from speechbrain_mamba.nnet.cache import MambaCache
    >>> static = [torch.tensor([5]), torch.zeros(1, 4, 3), torch.ones(1, 4, 2)]
    >>> state = ARDecodingState([MambaCache(static[1], static[2])], static[0])
    >>> release_state(state, static)
    >>> holds(state, static), state.next_position.tolist()
    (False, [5])
    """
    ids = {id(tensor) for tensor in static}
    for holder, name in _slots(state):
        tensor = getattr(holder, name)
        if id(tensor) in ids:
            setattr(holder, name, tensor.clone())


def bind_state(
    state: Any,
    static: Sequence[torch.Tensor],
    previous: Optional[Any] = None,
) -> None:
    """Binds ``state`` to a recording's static tensors: the previous owner
    gets private clones of them (:func:`release_state`), then the state's
    values are copied into them (one ``_foreach_copy_``) and its attributes
    set to them, so that replays update the state in place.

    Arguments
    ---------
    state : ARDecodingState
        The state to bind (its values are kept).
    static : sequence of torch.Tensor
        The recording's static tensors, in :func:`state_tensors` order, of
        the state's shapes and dtypes.
    previous : ARDecodingState, optional
        The state bound to ``static`` until now.

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import ARDecodingState
    >>> from speechbrain_mamba.nnet.cache import MambaCache
    >>> def new_state(value):
    ...     conv = torch.full((1, 4, 3), value)
    ...     cache = MambaCache(conv, torch.zeros(1, 4, 2))
    ...     return ARDecodingState([cache], torch.tensor([value]))
    >>> static = state_tensors(new_state(0))
    >>> a, b = new_state(1), new_state(2)
    >>> bind_state(a, static)
    >>> bind_state(b, static, previous=a)
    >>> holds(b, static), a.next_position.tolist(), b.next_position.tolist()
    (True, [1], [2])
    """
    if previous is not None and previous is not state:
        release_state(previous, static)
    slots = _slots(state)
    if len(slots) != len(static):
        raise ValueError(
            f"the decoding state has {len(slots)} tensors, the recording "
            f"{len(static)}"
        )
    values = [getattr(holder, name) for holder, name in slots]
    torch._foreach_copy_(list(static), values)
    for (holder, name), tensor in zip(slots, static):
        setattr(holder, name, tensor)


def graph_applies(ar: nn.Module, state: Any) -> bool:
    """Whether ``ar``'s decoding steps can be replayed from a CUDA graph:
    a Mamba backbone stepping on the fused kernels (CUDA, no gradient,
    small batch, backend "auto" or "triton").

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    state : ARDecodingState
        Its decoding state (from ``ar.start``).

    Returns
    -------
    bool

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import CodecAR
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              nhead=2, backbone="mamba").eval()
    >>> _, state = ar.start(torch.tensor([[1, 2]]), torch.tensor([2]),
    ...                     torch.tensor([[3]]), torch.tensor([1]))
    >>> graph_applies(ar, state)  # CPU
    False
    """
    if ar.backbone_type != "mamba" or not state.next_position.is_cuda:
        return False
    probe = torch.empty(
        state.next_position.shape[0],
        1,
        ar.backbone.d_model,
        device=state.next_position.device,
    )
    return ar.backbone.fused_step_applies(probe, None, state.cache)


class ARStepGraphs(GraphedInference):
    """``ar.step(tokens, state)`` replayed from CUDA graphs, one per key
    (batch size, device, the state's shapes and dtypes, autocast state,
    inference mode and training flags), at most ``max_graphs`` keys (other
    calls are plain).

    A call is plain on CPU, while a stream is being captured, inside
    another graphed call, while forward hooks watch a sub-module of ``ar``
    and where :func:`graph_applies` does not hold. Replaced parameters
    (``ar.half()``, a new ``nn.Parameter``) drop every recording; in-place
    updates (``load_state_dict``) are read by the next replay.

    Arguments
    ---------
    ar : CodecAR
        A Mamba AR model; its ``_plain_step(tokens, state)`` is recorded.
    max_graphs : int
        Most keys to record.
    warmup : int
        Plain steps (on the static copies) before each recording.

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import CodecAR
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              backbone="mamba").eval()
    >>> _, state = ar.start(torch.tensor([[1, 2]]), torch.tensor([2]),
    ...                     torch.tensor([[3]]), torch.tensor([1]))
    >>> graphs = ARStepGraphs(ar, max_graphs=2)
    >>> logits = graphs(torch.tensor([4]), state)  # CPU: the plain step
    >>> logits.shape, graphs.num_graphs, state.next_position.tolist()
    (torch.Size([1, 17]), 0, [3])
    """

    kind = "AR step CUDA"

    def __init__(self, ar: nn.Module, max_graphs: int = 16, warmup: int = 2):
        # recorded: the step over the flat tensors of a private state
        super().__init__(self._step_over, ar, max_graphs, warmup)
        self._template: Any = None

    def _step_over(
        self, tokens: torch.Tensor, *tensors: torch.Tensor
    ) -> torch.Tensor:
        """The plain step of a state made like the one being recorded,
        holding ``tensors`` (the recording's static copies)."""
        template = self._template
        private = dataclasses.replace(
            template, cache=[dataclasses.replace(c) for c in template.cache]
        )
        for (holder, name), tensor in zip(_slots(private), tensors):
            setattr(holder, name, tensor)
        return self.module._plain_step(tokens, private)

    def _key(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple:
        tokens, state = inputs
        return (
            (tokens.shape, tokens.dtype, tokens.device),
            tuple((t.shape, t.dtype) for t in state_tensors(state)),
            torch.is_inference_mode_enabled(),
            *self.common_key(),
        )

    def __call__(self, tokens: torch.Tensor, state: Any) -> torch.Tensor:
        """One decoding step, replayed where it applies.

        Arguments
        ---------
        tokens : torch.Tensor
            [batch] long, the last token of each item.
        state : ARDecodingState
            Updated in place (bound to the recording's tensors).

        Returns
        -------
        torch.Tensor
            The logits, a tensor of its own.
        """
        if (
            not tokens.is_cuda
            or torch.cuda.is_current_stream_capturing()
            or inside_graphed_call()
        ):
            return self.module._plain_step(tokens, state)
        module_state = self._module_state()
        if module_state is None or not graph_applies(self.module, state):
            return self.module._plain_step(tokens, state)
        self.watch(module_state)
        key = self._key((tokens, state))
        recorded = self._graphs.get(key)
        if recorded is None:
            if not self.may_record(key):
                return self.module._plain_step(tokens, state)
            self._template = state
            try:
                # modules inside call plainly while this one records them
                with torch.no_grad(), outermost_graphed_call():
                    inputs = (tokens, *state_tensors(state))
                    recorded = self._record(inputs, key)
            finally:
                self._template = None
            if recorded is None:
                return self.module._plain_step(tokens, state)
            recorded.owner = None
        static = recorded.inputs[1:]
        if not holds(state, static):
            previous = None if recorded.owner is None else recorded.owner()
            bind_state(state, static, previous)
            recorded.owner = weakref.ref(state)
        recorded.inputs[0].copy_(tokens)
        recorded.graph.replay()
        # a fresh tensor: the next replay overwrites the graph's buffer
        return recorded.output.clone()


@contextlib.contextmanager
def step_graphs_switched(ar: nn.Module, enabled: Optional[bool]) -> Iterator:
    """Switches the AR model's own step graphs (its ``cuda_graphs`` option)
    on or off inside the block; None leaves the model's choice.

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    enabled : bool, optional
        True: replay where possible; False: plain steps; None: as the
        model's ``cuda_graphs`` option says.

    Example
    -------
    >>> from speechbrain_mamba.lobes.tts.ar import CodecAR
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              backbone="mamba")
    >>> with step_graphs_switched(ar, False):
    ...     inside = ar.cuda_graphs
    >>> inside, ar.cuda_graphs
    (False, True)
    """
    if enabled is None:
        yield
        return
    saved = ar.cuda_graphs
    ar.cuda_graphs = enabled
    try:
        yield
    finally:
        ar.cuda_graphs = saved
