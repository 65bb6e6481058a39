"""A module's inference calls replayed from CUDA graphs, one graph per input
shape, with input lengths rounded up to a few buckets.

A Mamba mask network on a few seconds of audio is bound by the host: each
of its layers launches a few small GPU kernels from Python, so the GPU
waits. Recording one call in a CUDA graph
(:func:`~speechbrain_mamba.utils.cuda_graphs.record_cuda_graph`) and
replaying it launches all of them at once: the same kernels on the same
memory, the same numbers. A graph is recorded for one input shape; inputs
of every length would need a graph each, so a module whose layers take
valid lengths (padded frames change no valid output) pads the time axis up
to :func:`bucket_length` and calls :class:`GraphedInference` with the
padded input and its lengths: every length of a bucket replays one graph.

:class:`GraphedInference` is for calls without autograd (the caller
decides when it applies; the training forward and backward are recorded by
:mod:`speechbrain_mamba.utils.graphed_training`). It keys its graphs by the
inputs' shapes, dtypes and device, the autocast state and inference mode,
records at most ``max_graphs`` of them (later keys run eagerly) in one
memory pool, and copies each call's inputs into the graph's own input
buffers before a replay. Graphs read the module's parameters by address:
in-place updates (``load_state_dict``, an optimizer step) are seen by the
next replay; a parameter or buffer replaced by another tensor
(``module.weight = nn.Parameter(...)``, ``module.half()``) is noticed at
the next call, which drops every graph and records again (a module that
could not be recorded is then tried again too). While forward hooks watch a
sub-module (which a replay would not run), calls are eager. Calls must not
run concurrently (e.g. from two threads): they share the input buffers.

Author
------
speechbrain-mamba developers
"""

import contextlib
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch
from torch import nn

from speechbrain_mamba.utils.cuda_graphs import record_cuda_graph

logger = logging.getLogger(__name__)


def forward_hooks_watch(module: nn.Module) -> bool:
    """Whether module hooks (forward, forward-pre, backward, backward-pre)
    watch a sub-module of ``module`` (or every module, globally): a replayed
    graph would not run them, so such calls run eagerly and unpadded.

    Arguments
    ---------
    module : torch.nn.Module
        The module whose calls would be replayed (its own hooks run outside
        its forward and do not count).

    Returns
    -------
    bool
        True while a hook watches.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> forward_hooks_watch(net)
    False
    >>> handle = net[0].register_forward_hook(lambda m, i, o: None)
    >>> forward_hooks_watch(net)
    True
    >>> handle.remove()
    """
    hooks = torch.nn.modules.module
    if any(
        getattr(hooks, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    ):
        return True
    return any(
        index
        and (
            sub._forward_hooks
            or sub._forward_pre_hooks
            or sub._backward_hooks
            or sub._backward_pre_hooks
        )
        for index, sub in enumerate(module.modules())
    )


def bucket_length(length: int, mantissa_bits: int = 3) -> int:
    """The smallest bucket that holds ``length`` frames.

    Buckets are the numbers ``m * 2 ** e`` with ``m`` of ``mantissa_bits``
    + 1 bits (every length up to ``2 ** (mantissa_bits + 1)`` is a bucket
    of its own), so padding adds less than ``2 ** -mantissa_bits`` of the
    length (12.5 % with 3 bits) and an octave of lengths has
    ``2 ** mantissa_bits`` buckets.

    Arguments
    ---------
    length : int
        Number of frames (>= 1).
    mantissa_bits : int
        Buckets per octave, as a power of two.

    Returns
    -------
    int
        The bucket, ``>= length``.

    Example
    -------
    >>> [bucket_length(n) for n in (5, 16, 17, 1000, 1024, 1025)]
    [5, 16, 18, 1024, 1024, 1152]
    >>> all(bucket_length(n) < 1.125 * n for n in range(1, 5000))
    True
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if mantissa_bits < 0:
        raise ValueError(f"mantissa_bits must be >= 0, got {mantissa_bits}")
    step = 1 << max(0, length.bit_length() - (mantissa_bits + 1))
    return -(-length // step) * step


def autocast_state() -> Tuple[bool, Optional[torch.dtype]]:
    """CUDA autocast's state, part of every graph's key (a graph records
    the casts of the autocast it was recorded under).

    Returns
    -------
    enabled : bool
        Whether CUDA autocast is on.
    dtype : torch.dtype or None
        Its dtype when on.

    Example
    -------
    >>> autocast_state()
    (False, None)
    """
    enabled = torch.is_autocast_enabled("cuda")
    return enabled, torch.get_autocast_dtype("cuda") if enabled else None


_nesting = threading.local()


@contextlib.contextmanager
def outermost_graphed_call() -> Iterator[None]:
    """Marks the calls made inside as parts of a graphed call (recorded,
    warmed up or run eagerly in its place): modules inside that graph
    themselves call plainly, so that the outermost one records them.

    Example
    -------
    >>> inside_graphed_call()
    False
    >>> with outermost_graphed_call():
    ...     inside_graphed_call()
    True
    """
    _nesting.depth = getattr(_nesting, "depth", 0) + 1
    try:
        yield
    finally:
        _nesting.depth -= 1


def inside_graphed_call() -> bool:
    """Whether this thread is inside :func:`outermost_graphed_call`.

    Returns
    -------
    bool
        True inside.

    Example
    -------
    >>> inside_graphed_call()
    False
    """
    return getattr(_nesting, "depth", 0) > 0


class _Graph:
    """One recorded call: its input buffers, graph and output buffers."""

    def __init__(self, inputs, graph, output):
        self.inputs = inputs
        self.graph = graph
        self.output = output


class KeyedGraphs:
    """What :class:`GraphedInference` and
    :class:`~speechbrain_mamba.utils.graphed_training.GraphedTraining` keep
    alike: recordings by key (at most ``max_graphs``), one memory pool per
    device, the watched state of the module's tensors (a change drops every
    recording), and the keys whose recording failed.

    Arguments
    ---------
    function : callable
        The recorded function.
    module : torch.nn.Module
        Owner of the parameters and buffers ``function`` reads.
    max_graphs : int
        Most keys to record.
    warmup : int
        Eager calls before each recording.

    Example
    -------
    >>> graphs = KeyedGraphs(torch.relu, torch.nn.Identity(), 2, 1)
    >>> graphs.may_record(("key",)), graphs.num_graphs
    (True, 0)
    """

    #: Which calls the graphs record, for the log.
    kind = "CUDA"

    def __init__(
        self,
        function: Callable[..., Any],
        module: nn.Module,
        max_graphs: int,
        warmup: int,
    ):
        self.function = function
        self.module = module
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: Dict[Tuple, Any] = {}
        self._pools: Dict[torch.device, Tuple[int, int]] = {}
        self._state: Optional[List] = None
        self._unrecordable: Optional[str] = None
        self._out_of_memory: Set[Tuple] = set()

    @property
    def num_graphs(self) -> int:
        """Number of recorded keys."""
        return len(self._graphs)

    def clear(self) -> None:
        """Drops every recording (and, once no other reference is left,
        its memory) and forgets failed recordings."""
        self._graphs.clear()
        self._pools.clear()
        self._unrecordable = None
        self._out_of_memory.clear()

    def watch(self, state: List) -> None:
        """Drops every recording when the module's tensors changed.

        Arguments
        ---------
        state : list
            The module's tensors now (addresses and the like).
        """
        if state == self._state:
            return
        if self._graphs:
            logger.info(
                "parameters of %s were replaced: its %d %s graphs are "
                "recorded again",
                type(self.module).__name__,
                len(self._graphs),
                self.kind,
            )
        self.clear()
        self._state = state

    def may_record(self, key: Tuple) -> bool:
        """Whether an unrecorded key may be recorded now.

        Arguments
        ---------
        key : tuple
            The key.

        Returns
        -------
        bool
            False: the function is unrecordable, this key ran out of
            memory, or ``max_graphs`` are recorded.
        """
        return (
            self._unrecordable is None
            and key not in self._out_of_memory
            and len(self._graphs) < self.max_graphs
        )

    def pool(self, device: torch.device) -> Tuple[int, int]:
        """The memory pool of the recordings on ``device``.

        Arguments
        ---------
        device : torch.device
            A CUDA device.

        Returns
        -------
        tuple
            A ``torch.cuda.graph_pool_handle()``.
        """
        if device not in self._pools:
            self._pools[device] = torch.cuda.graph_pool_handle()
        return self._pools[device]

    def recording_failed(
        self, error: Exception, key: Tuple, device: torch.device
    ) -> None:
        """Remembers a failed recording: out of memory for this key only
        (a shorter input may fit), any other error for every key until the
        module's tensors change (e.g. a host synchronisation inside).

        Arguments
        ---------
        error : Exception
            What the recording raised.
        key : tuple
            The key being recorded.
        device : torch.device
            Its device.
        """
        torch.cuda.synchronize(device)
        if isinstance(error, torch.OutOfMemoryError):
            self._out_of_memory.add(key)
            torch.cuda.empty_cache()
            return
        self._unrecordable = str(error)
        logger.warning(
            "%s cannot be recorded in %s graphs (%s); it runs eagerly",
            type(self.module).__name__,
            self.kind,
            error,
        )

    def common_key(self) -> Tuple:
        """The part of every key besides the inputs: the autocast state and
        the training flag of every sub-module (dropout recorded in training
        mode must not serve evaluation).

        Returns
        -------
        tuple
            The key part.
        """
        return (
            autocast_state(),
            tuple(module.training for module in self.module.modules()),
        )


class GraphedInference(KeyedGraphs):
    """Calls ``function(*inputs)`` without autograd, replayed from a CUDA
    graph per input key on CUDA tensors.

    Arguments
    ---------
    function : callable
        Takes CUDA tensors and returns tensors computed from them and from
        ``module``'s parameters and buffers, with no host synchronisation
        (no ``.item()``, no value-dependent Python branch).
    module : torch.nn.Module
        Owner of the parameters and buffers ``function`` reads (watched for
        replaced tensors).
    max_graphs : int
        Most keys to record; the calls of other keys run eagerly.
    warmup : int
        Eager calls before each recording.

    Example
    -------
    >>> layer = torch.nn.Linear(4, 4)
    >>> graphed = GraphedInference(layer, layer)
    >>> x = torch.randn(2, 4)
    >>> torch.equal(graphed(x), layer(x))  # on CPU: a plain call
    True
    >>> graphed.num_graphs
    0
    """

    kind = "inference CUDA"

    def __init__(
        self,
        function: Callable[..., Any],
        module: nn.Module,
        max_graphs: int = 16,
        warmup: int = 2,
    ):
        if max_graphs < 0:
            raise ValueError(f"max_graphs must be >= 0, got {max_graphs}")
        super().__init__(function, module, max_graphs, warmup)

    def _module_state(self) -> Optional[List[int]]:
        """The addresses of the module's parameters and buffers, or None
        while forward hooks watch a sub-module (e.g. a
        :class:`~speechbrain_mamba.utils.layer_capture.LayerCapture`),
        which a replay would not run. One pass over the sub-modules."""
        if forward_hooks_watch(self.module):
            return None
        addresses = []
        for module in self.module.modules():
            for tensors in (module._parameters, module._buffers):
                for tensor in tensors.values():
                    if tensor is not None:
                        addresses.append(tensor.data_ptr())
        return addresses

    def _key(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple:
        return (
            tuple((t.shape, t.dtype, t.device) for t in inputs),
            torch.is_inference_mode_enabled(),
            *self.common_key(),
        )

    def _record(self, inputs: Tuple[torch.Tensor, ...], key: Tuple):
        device = inputs[0].device
        enabled, dtype = autocast_state()
        static = tuple(t.detach().clone() for t in inputs)
        try:
            # no autocast cast cache: the graph records the weight casts
            with (
                torch.cuda.device(device),
                torch.autocast(
                    "cuda", dtype=dtype, enabled=enabled, cache_enabled=False
                ),
            ):
                graph, output = record_cuda_graph(
                    lambda: self.function(*static),
                    warmup=self.warmup,
                    pool=self.pool(device),
                    # data loader threads may pin memory meanwhile
                    capture_error_mode="thread_local",
                )
        except RuntimeError as error:  # out of memory included
            self.recording_failed(error, key, device)
            return None
        recorded = _Graph(static, graph, output)
        self._graphs[key] = recorded
        logger.info(
            "recorded %s for inputs %s in CUDA graph %d",
            type(self.module).__name__,
            [tuple(t.shape) for t in inputs],
            len(self._graphs),
        )
        return recorded

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Runs ``function(*inputs)``, from a graph where one applies.

        Arguments
        ---------
        *inputs : torch.Tensor
            The function's arguments.

        Returns
        -------
        object
            The function's output. A replayed output lives in the graph's
            buffers, which the next call of the same key overwrites: copy
            what is kept.
        """
        if (
            not inputs[0].is_cuda
            or torch.cuda.is_current_stream_capturing()
            or inside_graphed_call()
        ):
            return self.function(*inputs)
        return self._call(inputs)

    def _call(self, inputs: Tuple[torch.Tensor, ...]) -> Any:
        state = self._module_state()
        if state is None:
            return self.function(*inputs)
        self.watch(state)
        key = self._key(inputs)
        recorded = self._graphs.get(key)
        if recorded is None:
            if not self.may_record(key):
                return self.function(*inputs)
            # modules inside call plainly while this one records them
            with torch.no_grad(), outermost_graphed_call():
                recorded = self._record(inputs, key)
            if recorded is None:
                return self.function(*inputs)
        for buffer, value in zip(recorded.inputs, inputs):
            buffer.copy_(value)
        recorded.graph.replay()
        return recorded.output
