"""Recording a call in a CUDA graph: the call runs a few times on a side
stream first (kernels are compiled, the caching allocator settles, lazy
initialisation happens outside the capture), then once inside the capture.
Replaying the graph runs the same kernels on the same memory: the inputs
the call read must be updated in place, and its outputs are overwritten by
every replay.

Used by the AR decoding step of VALL-M
(:mod:`speechbrain_mamba.lobes.tts.step_graphs`) and the graphed timings of
the efficiency study (:mod:`speechbrain_mamba.benchmarks.efficiency`) and
the inference calls of :mod:`speechbrain_mamba.utils.graphed_inference`;
the training forward and backward of a module are recorded by
:mod:`speechbrain_mamba.utils.graphed_training`.

Author
------
speechbrain-mamba developers
"""

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

_side_streams: Dict[int, "torch.cuda.Stream"] = {}


def side_stream() -> "torch.cuda.Stream":
    """The stream on which recordings of the current device warm up: one
    per device, reused (each new stream would get cuBLAS workspaces of its
    own, tens of MB that stay allocated).

    Returns
    -------
    torch.cuda.Stream
        A stream of the current CUDA device.

    Example
    -------
    >>> if torch.cuda.is_available():
    ...     assert side_stream() is side_stream()
    """
    device = torch.cuda.current_device()
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]


def record_cuda_graph(
    call: Callable[[], Any],
    warmup: int = 3,
    after_warmup: Optional[Callable[[], None]] = None,
    pool: Optional[Tuple[int, int]] = None,
    capture_error_mode: str = "global",
) -> Tuple["torch.cuda.CUDAGraph", Any]:
    """Warms ``call`` up on a side stream, then records one call of it.

    Arguments
    ---------
    call : callable
        Takes no argument; reads and writes CUDA tensors that outlive it.
    warmup : int
        Eager calls before the capture.
    after_warmup : callable, optional
        Runs between the warm-up and the capture, e.g. to restore a state
        the warm-up calls changed in place.
    pool : tuple, optional
        A memory pool (``torch.cuda.graph_pool_handle()``) shared with
        other graphs that are never replayed concurrently with this one.
    capture_error_mode : str
        Which CUDA calls made during the capture fail: those of any thread
        (``"global"``) or of this one (``"thread_local"``, e.g. where a data
        loader thread pins memory meanwhile).

    Returns
    -------
    graph : torch.cuda.CUDAGraph
        ``graph.replay()`` runs the recorded call again.
    output
        What the recorded call returned (the graph's buffers).

    Example
    -------
    >>> def replayed_after_update():
    ...     x = torch.ones(3, device="cuda")
    ...     graph, y = record_cuda_graph(lambda: x * 2)
    ...     _ = x.fill_(5.0)  # the input, updated in place
    ...     graph.replay()
    ...     return y.tolist()
    >>> if torch.cuda.is_available():
    ...     assert replayed_after_update() == [10.0, 10.0, 10.0]
    """
    stream = side_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    if after_warmup is not None:
        after_warmup()
    graph = torch.cuda.CUDAGraph()
    with capturing(graph, pool, capture_error_mode):
        output = call()
    return graph, output


@contextlib.contextmanager
def capturing(
    graph: "torch.cuda.CUDAGraph",
    pool: Optional[Tuple[int, int]] = None,
    capture_error_mode: str = "global",
) -> Iterator[None]:
    """``torch.cuda.graph`` on this device's :func:`side_stream`, which
    leaves the process usable when the capture fails.

    A failed capture (e.g. a host synchronisation inside) raises from
    ``torch.cuda.graph``'s exit before it restores the current stream and
    before the CUDA random generator leaves its capture state (every later
    random draw would then fail). Here the stream is restored and a
    trivial graph is captured after a failure, whose normal end resets the
    generator; the error is raised again.

    Arguments
    ---------
    graph : torch.cuda.CUDAGraph
        The graph to record into.
    pool : tuple, optional
        Memory pool shared with other graphs.
    capture_error_mode : str
        As for ``torch.cuda.graph``.

    Example
    -------
    >>> def failed_then_random():
    ...     try:
    ...         with capturing(torch.cuda.CUDAGraph()):
    ...             torch.ones(1, device="cuda").item()  # not capturable
    ...     except RuntimeError:
    ...         pass
    ...     return torch.rand(1, device="cuda").shape
    >>> if torch.cuda.is_available():
    ...     assert failed_then_random() == (1,)
    """
    stream = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(
            graph,
            pool=pool,
            stream=side_stream(),
            capture_error_mode=capture_error_mode,
        ):
            yield
    except BaseException:
        torch.cuda.set_stream(stream)
        try:
            torch.cuda.synchronize()
        except RuntimeError:
            pass
        reset = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(reset, stream=side_stream()):
                torch.zeros(1, device=stream.device)
        except RuntimeError:
            pass
        finally:
            torch.cuda.set_stream(stream)
        raise
