"""Layer-wise capture of hidden states with forward hooks.

:class:`LayerCapture` hooks any set of sub-modules of a model (the layers of
a ConMamba / Conformer / Transformer encoder, the blocks of a MambaStack or
of a Mamba-TasNet mask network, the SSL encoder, ...), records what each one
returns during a forward pass and hands back, per layer, the valid frames
of the batch as one ``[N_valid_frames, D]`` tensor (padding removed with
SpeechBrain relative lengths).

Layers are chosen by exact module names, by a pattern over the dotted names
(``*`` matches one name component, ``**`` any number), or with ``"auto"``,
the children of the longest ``ModuleList`` whose name ends in ``layers``::

    with LayerCapture(encoder, "layers.*") as cap:
        encoder(x, src_key_padding_mask=mask)
    states = cap.valid_frames(lengths)   # list of [N_valid, D]

Outputs that are tuples use their first tensor, except the blocks of a
:class:`~speechbrain_mamba.nnet.MambaStack`, which return ``(hidden,
residual)``: their hidden state is ``hidden + residual`` (the residual stream
after the block).

Author
------
speechbrain-mamba developers
"""

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from speechbrain_mamba.nnet.padding import lengths_to_frames

LayerSpec = Union[str, Sequence[str]]
#: Ways of turning a tuple output into one tensor.
TUPLE_MODES = ("auto", "first", "sum")


def _pattern_regex(pattern: str) -> "re.Pattern":
    parts = []
    for token in re.split(r"(\*\*|\*)", pattern):
        if token == "**":
            parts.append(r".+")
        elif token == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(token))
    return re.compile("^" + "".join(parts) + "$")


def _layer_index(name: str) -> Tuple:
    """Sort key: numeric components compare as numbers."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")
    )


def find_layer_list(model: nn.Module) -> str:
    """Name of the longest ``ModuleList`` whose name ends in ``layers``.

    Arguments
    ---------
    model : torch.nn.Module
        The model to search.

    Returns
    -------
    str
        Its dotted name (``""`` when ``model`` itself is that list).

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> find_layer_list(MambaStack(8, 3, d_state=4))
    'layers'
    """
    best, best_len = None, 0
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and last.endswith("layers"):
            if len(module) > best_len:
                best, best_len = name, len(module)
    if best is None:
        raise ValueError(
            f"no ModuleList named '*layers' in {type(model).__name__}; "
            "give the layer names or a pattern such as 'encoder.blocks.*'"
        )
    return best


def resolve_layers(
    model: nn.Module, layers: LayerSpec = "auto"
) -> List[Tuple[str, nn.Module]]:
    """Finds the sub-modules to capture.

    Arguments
    ---------
    model : torch.nn.Module
        The model.
    layers : str or sequence of str
        ``"auto"``, a pattern (``"encoder.layers.*"``) or a list of exact
        module names.

    Returns
    -------
    list of (str, torch.nn.Module)
        Names and modules, in depth order (numeric order for indices).

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> [name for name, _ in resolve_layers(net, ["0", "2"])]
    ['0', '2']
    >>> [name for name, _ in resolve_layers(net, "*")]
    ['0', '1', '2']
    """
    modules = dict(model.named_modules())
    if isinstance(layers, str):
        if layers == "auto":
            prefix = find_layer_list(model)
            layers = f"{prefix}.*" if prefix else "*"
        regex = _pattern_regex(layers)
        names = sorted(
            (n for n in modules if n and regex.match(n)), key=_layer_index
        )
        if not names:
            raise ValueError(
                f"pattern {layers!r} matches no sub-module of "
                f"{type(model).__name__}"
            )
    else:
        names = list(layers)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"{type(model).__name__} has no sub-modules named {missing}"
            )
        if not names:
            raise ValueError("the list of layers is empty")
    return [(n, modules[n]) for n in names]


def _is_mamba_block(module: nn.Module) -> bool:
    from speechbrain_mamba.nnet.blocks import MambaBlock

    return isinstance(module, MambaBlock)


def output_to_tensor(
    output: Any, module: Optional[nn.Module] = None, mode: str = "auto"
) -> torch.Tensor:
    """The hidden-state tensor of a module's output.

    Arguments
    ---------
    output : torch.Tensor or tuple or list
        What the module returned.
    module : torch.nn.Module, optional
        The module (``"auto"`` sums ``(hidden, residual)`` of MambaBlock).
    mode : str
        ``"auto"``, ``"first"`` (first tensor of a tuple) or ``"sum"``
        (sum of the tensors of a tuple).

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> out = (torch.ones(1, 2, 3), None)
    >>> output_to_tensor(out).shape
    torch.Size([1, 2, 3])
    """
    if mode not in TUPLE_MODES:
        raise ValueError(f"mode must be one of {TUPLE_MODES}, got {mode!r}")
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, torch.Tensor)]
        if not tensors:
            raise ValueError("the layer returned a tuple without tensors")
        if mode == "auto":
            mode = (
                "sum"
                if module is not None and _is_mamba_block(module)
                else "first"
            )
        if mode == "sum":
            total = tensors[0].float()
            for t in tensors[1:]:
                total = total + t.float()
            return total.to(tensors[0].dtype)
        return tensors[0]
    raise ValueError(
        f"cannot capture a layer output of type {type(output).__name__}"
    )


def _first_tensor_arg(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    return None


def valid_frames(
    states: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
    channels_first: bool = False,
) -> torch.Tensor:
    """Concatenates the valid frames of a padded batch.

    Arguments
    ---------
    states : torch.Tensor
        ``[B, T, D]`` (or ``[B, D, T]`` with ``channels_first``).
    lengths : torch.Tensor, optional
        Relative lengths in (0, 1], ``[B]``; item b keeps
        ``round(lengths[b] * T)`` frames. None keeps every frame.
    channels_first : bool
        The states are ``[B, D, T]``.

    Returns
    -------
    torch.Tensor
        ``[sum of valid frames, D]``.

    Example
    -------
    >>> x = torch.arange(12.0).view(2, 3, 2)
    >>> valid_frames(x, torch.tensor([1.0, 1 / 3]))
    tensor([[0., 1.],
            [2., 3.],
            [4., 5.],
            [6., 7.]])
    """
    if states.dim() != 3:
        raise ValueError(
            "captured states must be [batch, time, features], got shape "
            f"{tuple(states.shape)}"
        )
    if channels_first:
        states = states.transpose(1, 2)
    batch, time = states.shape[:2]
    if lengths is None:
        return states.reshape(batch * time, -1)
    frames = lengths_to_frames(lengths.to(states.device), batch, time)
    mask = torch.arange(time, device=states.device)[None] < frames[:, None]
    return states[mask]


class LayerCapture:
    """Records the outputs (and optionally the input of the first layer) of
    chosen sub-modules during forward passes.

    Arguments
    ---------
    model : torch.nn.Module
        The model whose layers are captured.
    layers : str or sequence of str
        ``"auto"``, a pattern or exact names (see :func:`resolve_layers`).
    tuple_mode : str
        How a tuple output becomes a tensor (see :func:`output_to_tensor`).
    capture_input : bool
        Also record the input of the first layer (``self.input``).
    channels_first : bool
        The captured tensors are ``[B, D, T]``.
    detach : bool
        Store detached tensors (no autograd graph).
    to_cpu : bool
        Move the stored tensors to the CPU.

    Example
    -------
    >>> from speechbrain_mamba.nnet import MambaStack
    >>> stack = MambaStack(8, 3, d_state=4).eval()
    >>> x = torch.randn(2, 6, 8)
    >>> lengths = torch.tensor([1.0, 0.5])
    >>> with LayerCapture(stack, "layers.*", capture_input=True) as cap:
    ...     _ = stack(x, lengths=lengths)
    >>> [tuple(s.shape) for s in cap.valid_frames(lengths)]
    [(9, 8), (9, 8), (9, 8)]
    >>> cap.names
    ['layers.0', 'layers.1', 'layers.2']
    >>> cap.input_frames(lengths).shape
    torch.Size([9, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = "auto",
        tuple_mode: str = "auto",
        capture_input: bool = False,
        channels_first: bool = False,
        detach: bool = True,
        to_cpu: bool = False,
    ):
        if tuple_mode not in TUPLE_MODES:
            raise ValueError(
                f"tuple_mode must be one of {TUPLE_MODES}, got {tuple_mode!r}"
            )
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.names = [name for name, _ in self.layers]
        self.tuple_mode = tuple_mode
        self.capture_input = capture_input
        self.channels_first = channels_first
        self.detach = detach
        self.to_cpu = to_cpu
        self.outputs: List[List[torch.Tensor]] = [[] for _ in self.layers]
        self.inputs: List[torch.Tensor] = []
        self._handles: List[Any] = []

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.detach:
            tensor = tensor.detach()
        if self.to_cpu:
            tensor = tensor.cpu()
        return tensor

    def _output_hook(self, index: int) -> Callable:
        def hook(module, args, output):
            tensor = output_to_tensor(output, module, self.tuple_mode)
            self.outputs[index].append(self._store(tensor))

        return hook

    def _input_hook(self, module, args, kwargs):
        tensor = _first_tensor_arg(args, kwargs)
        if tensor is None:
            raise ValueError(
                f"the first captured layer ({self.names[0]}) received no "
                "tensor input"
            )
        self.inputs.append(self._store(tensor))

    def attach(self) -> "LayerCapture":
        """Registers the hooks (done by ``with``)."""
        if self._handles:
            return self
        for index, (_, module) in enumerate(self.layers):
            self._handles.append(
                module.register_forward_hook(self._output_hook(index))
            )
        if self.capture_input:
            self._handles.append(
                self.layers[0][1].register_forward_pre_hook(
                    self._input_hook, with_kwargs=True
                )
            )
        return self

    def remove(self) -> None:
        """Removes the hooks (done when leaving ``with``)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forgets what was recorded."""
        self.outputs = [[] for _ in self.layers]
        self.inputs = []

    def __enter__(self) -> "LayerCapture":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _last(self, records: List[torch.Tensor], name: str) -> torch.Tensor:
        if not records:
            raise RuntimeError(
                f"nothing was captured for {name}: run a forward pass inside "
                "the `with LayerCapture(...)` block (layers skipped by "
                "layer drop are not recorded)"
            )
        return records[-1]

    def states(self) -> List[torch.Tensor]:
        """The last padded output of every layer (``[B, T, D]``)."""
        return [
            self._last(records, name)
            for records, name in zip(self.outputs, self.names)
        ]

    def valid_frames(
        self, lengths: Optional[torch.Tensor] = None
    ) -> List[torch.Tensor]:
        """Valid frames of the last forward pass, one tensor per layer.

        Arguments
        ---------
        lengths : torch.Tensor, optional
            Relative lengths ``[B]`` of the batch (None: no padding).

        Returns
        -------
        list of torch.Tensor
            ``[N_valid, D]`` per layer (each layer's own frame rate).
        """
        return [
            valid_frames(s, lengths, self.channels_first) for s in self.states()
        ]

    def input_frames(
        self, lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Valid frames of the first layer's input (``capture_input``).

        Arguments
        ---------
        lengths : torch.Tensor, optional
            Relative lengths ``[B]``.

        Returns
        -------
        torch.Tensor
            ``[N_valid, D]``.
        """
        if not self.capture_input:
            raise RuntimeError(
                "create the LayerCapture with capture_input=True"
            )
        tensor = self._last(self.inputs, f"the input of {self.names[0]}")
        return valid_frames(tensor, lengths, self.channels_first)


def capture_layers(
    model: nn.Module,
    forward: Callable[[], Any],
    layers: LayerSpec = "auto",
    lengths: Optional[torch.Tensor] = None,
    **kwargs,
) -> Dict[str, torch.Tensor]:
    """Runs ``forward()`` once and returns each layer's valid frames.

    Arguments
    ---------
    model : torch.nn.Module
        The model whose layers are hooked.
    forward : callable
        Runs the forward pass (no arguments).
    layers : str or sequence of str
        Layers to capture (see :func:`resolve_layers`).
    lengths : torch.Tensor, optional
        Relative lengths of the batch.
    **kwargs
        Further :class:`LayerCapture` options.

    Returns
    -------
    dict
        Layer name -> ``[N_valid, D]`` tensor, in depth order.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    >>> x = torch.randn(2, 5, 4)
    >>> out = capture_layers(net, lambda: net(x), "*")
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'0': (10, 3), '1': (10, 2)}
    """
    with torch.no_grad(), LayerCapture(model, layers, **kwargs) as cap:
        forward()
    return dict(zip(cap.names, cap.valid_frames(lengths)))
