"""VALL-M's AR decoding step replayed from a CUDA graph.

The decoding state of a Mamba AR model has a fixed size (a conv window and
an SSM state per layer) and its fused decoding step
(:mod:`speechbrain_mamba.ops.triton.mamba_step`) updates it in place, so one
step can be recorded once in a CUDA graph and replayed for every token: one
launch per token instead of one per kernel, the same kernels and numbers.
A Transformer's key/value cache grows at every step, which a recorded graph
cannot follow; such models (and Mamba models off the fused path) are
stepped eagerly.

Author
------
speechbrain-mamba developers
"""

from typing import List, Optional

import torch

from speechbrain_mamba.lobes.tts.ar import ARDecodingState, CodecAR
from speechbrain_mamba.utils.cuda_graphs import record_cuda_graph


def _state_tensors(state: ARDecodingState) -> List[torch.Tensor]:
    tensors = [state.next_position]
    for cache in state.cache:
        tensors += [cache.conv, cache.ssm]
    return tensors


def graph_applies(ar: CodecAR, state: ARDecodingState) -> bool:
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


class GraphedARStep:
    """``ar.step(tokens, state)`` recorded once in a CUDA graph.

    Recording runs two warm-up steps on a copy-and-restore of the state, so
    the state is unchanged when the object is made; each call then copies
    the tokens into the graph's input, replays it (the state advances in
    place) and returns the graph's logits buffer, which the next call
    overwrites.

    Arguments
    ---------
    ar : CodecAR
        An AR model for which :func:`graph_applies` holds.
    state : ARDecodingState
        Its decoding state; the graph reads and updates these tensors.
    tokens : torch.Tensor
        [batch] long tokens of the shape the steps will take.

    Example
    -------
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              nhead=2, backbone="mamba").eval()
    >>> if torch.cuda.is_available():
    ...     ar = ar.cuda()
    ...     with torch.no_grad():
    ...         _, state = ar.start(
    ...             torch.tensor([[1, 2]], device="cuda"),
    ...             torch.tensor([2], device="cuda"),
    ...             torch.tensor([[3]], device="cuda"),
    ...             torch.tensor([1], device="cuda"))
    ...         step = GraphedARStep(ar, state, torch.tensor([4]).cuda())
    ...         logits = step(torch.tensor([4], device="cuda"))
    """

    def __init__(
        self, ar: CodecAR, state: ARDecodingState, tokens: torch.Tensor
    ):
        if not graph_applies(ar, state):
            raise ValueError(
                "the AR step can be replayed from a CUDA graph only for a "
                "Mamba backbone on the fused decoding kernels (CUDA, no "
                "gradient, batch <= 8, backend auto/triton)"
            )
        self.tokens = tokens.detach().clone()
        enabled = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        autocast = dict(
            device_type="cuda",
            dtype=dtype,
            enabled=enabled,
            cache_enabled=False,  # casts are recorded as kernels
        )
        tensors = _state_tensors(state)
        saved = [t.clone() for t in tensors]

        def step():
            with torch.autocast(**autocast):
                return ar.step(self.tokens, state)

        def restore_state():  # the warm-up steps advanced it
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)

        # the warm-up compiles the kernels outside the capture
        self.graph, self.logits = record_cuda_graph(
            step, warmup=2, after_warmup=restore_state
        )

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decoding step.

        Arguments
        ---------
        tokens : torch.Tensor
            [batch] long, the last token of each item.

        Returns
        -------
        torch.Tensor
            [batch, codebook_size + 1] logits (the graph's buffer).
        """
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits


def make_step(
    ar: CodecAR, state: ARDecodingState, tokens: torch.Tensor, graphed: bool
) -> Optional[GraphedARStep]:
    """A graphed step when asked for and possible, else None (eager).

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    state : ARDecodingState
        Its decoding state.
    tokens : torch.Tensor
        Tokens of the steps' shape.
    graphed : bool
        Whether a CUDA graph is wanted.

    Returns
    -------
    GraphedARStep or None

    Example
    -------
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              nhead=2).eval()
    >>> _, state = ar.start(torch.tensor([[1, 2]]), torch.tensor([2]),
    ...                     torch.tensor([[3]]), torch.tensor([1]))
    >>> make_step(ar, state, torch.tensor([4]), graphed=True) is None
    True
    """
    if graphed and graph_applies(ar, state):
        return GraphedARStep(ar, state, tokens)
    return None
