"""Values derived from a tensor, computed once per tensor.

A model passes the same ``lengths`` tensor to every layer, and each layer
turns it into numbers of valid frames: five small operations (kernel
launches on a GPU) per layer and call, the same result every time.
:func:`cached_per_tensor` keeps what was derived from a tensor until the
tensor is modified in place or freed, so the first layer computes it and
the others reuse it. It computes afresh (and keeps nothing) while a CUDA
graph is being recorded, where a value kept from outside the recording
must not be read, under ``torch.compile``'s tracing, and for inference
tensors, which have no version counter to see in-place changes. Writes
that bump no version counter (through ``tensor.data``, a NumPy array
sharing the memory, a custom kernel) are not seen: relative lengths come
as new tensors per batch, or are written with ``copy_``, which is seen.

Author
------
speechbrain-mamba developers
"""

import weakref
from typing import Any, Callable, Dict, Hashable, Sequence, Tuple

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

#: id(tensor) -> (weak reference, version when derived, {key: value})
_DERIVED: Dict[int, Tuple[weakref.ref, int, Dict[Hashable, Any]]] = {}
#: Tensors remembered at most (the oldest are dropped beyond).
MAX_TENSORS = 256


def _capturing() -> bool:
    return (
        torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    )


def _forget(store: dict, tensor_id: int, reference: weakref.ref) -> None:
    """Drops a freed tensor's entry (unless the id was reused since)."""
    entry = store.get(tensor_id)
    if entry is not None and entry[0] is reference:
        del store[tensor_id]


def cached_per_tensor(
    tensor: torch.Tensor, key: Hashable, derive: Callable[[torch.Tensor], Any]
) -> Any:
    """``derive(tensor)``, computed once per tensor and key.

    The value is computed again after the tensor is modified in place (its
    version changes) and dropped when the tensor is freed. The caller must
    not modify the returned value in place: other callers share it. A value
    derived in inference mode (an inference tensor, which autograd cannot
    save) is only returned in inference mode. A value that is the tensor
    itself or a view of it is returned but not kept (it would keep the
    tensor alive).

    Arguments
    ---------
    tensor : torch.Tensor
        The tensor the value is derived from.
    key : hashable
        Names the derivation and its other arguments (one tensor can have
        several derived values).
    derive : callable
        Computes the value from the tensor.

    Returns
    -------
    object
        The derived value.

    Example
    -------
    >>> calls = []
    >>> def doubled(t):
    ...     calls.append(1)
    ...     return t * 2
    >>> lengths = torch.tensor([1.0, 0.5])
    >>> first = cached_per_tensor(lengths, "doubled", doubled)
    >>> cached_per_tensor(lengths, "doubled", doubled) is first
    True
    >>> lengths.mul_(0.5)  # modified in place: derived again
    tensor([0.5000, 0.2500])
    >>> cached_per_tensor(lengths, "doubled", doubled).tolist()
    [1.0, 0.5]
    >>> len(calls)
    2
    """
    if _capturing() or tensor.is_inference() or torch.compiler.is_compiling():
        return derive(tensor)
    tensor_id = id(tensor)
    entry = _DERIVED.get(tensor_id)
    if entry is None or entry[0]() is not tensor or entry[1] != tensor._version:
        if len(_DERIVED) >= MAX_TENSORS:
            # pop: another thread (DataParallel) may drop the same one
            _DERIVED.pop(next(iter(_DERIVED), None), None)
        # the store is bound now: at interpreter exit the module's globals
        # may be gone when the last tensors are freed
        reference = weakref.ref(
            tensor,
            lambda ref, i=tensor_id, store=_DERIVED: _forget(store, i, ref),
        )
        entry = (reference, tensor._version, {})
        _DERIVED[tensor_id] = entry
    values = entry[2]
    key = (key, torch.is_inference_mode_enabled())
    if key not in values:
        value = derive(tensor)
        if value is tensor or getattr(value, "_base", None) is tensor:
            return value
        values[key] = value
    return values[key]


#: owner -> {key: (tensors, signature, value)}
_OWNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

#: Steps taken by any torch.optim optimizer in this process: part of every
#: signature of :func:`cached_while_unchanged`, since fused optimizers
#: update parameters without bumping their version counters.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def cached_while_unchanged(
    owner: object,
    key: Hashable,
    tensors: Sequence[torch.Tensor],
    derive: Callable[[], Any],
) -> Any:
    """``derive()``, computed again only when one of ``tensors`` changed.

    For values a module derives from its parameters at every call (a
    block-diagonal weight, ``-exp(A_log)``, a weight cast to the autocast
    dtype) while no gradient is needed: the value is kept for ``owner``
    (dropped with it, never pickled with it) until one of the tensors is
    modified in place (an optimizer step, ``load_state_dict``), replaced
    by another tensor or given new data (``param.data = ...``, which
    ``module.to`` does; identity and version stay, the storage, dtype or
    device change), or until any ``torch.optim`` optimizer takes a step
    (fused optimizers bump no version counter). Other writes that bump no
    version counter cannot be seen: in place through ``param.data`` (e.g.
    a hand-written moving average) or by a custom kernel; the owner calls
    :func:`forget` where those may have happened (Mamba layers: when
    switched between training and evaluation). The tensors are held,
    not weakly referenced: ``torch.utils.swap_tensors`` (``module.to``
    with ``torch.__future__.set_swap_module_params_on_conversion``) refuses
    tensors with weak references. As :func:`cached_per_tensor`, it
    computes afresh and keeps nothing during CUDA-graph capture or
    ``torch.compile``'s tracing. The caller must not use it where
    gradients must flow through the value, nor modify the value in place.

    Arguments
    ---------
    owner : object
        What the value belongs to (a module; weakly referenced).
    key : hashable
        Names the value and whatever else it depends on (e.g. a dtype).
    tensors : sequence of torch.Tensor
        The tensors the value is derived from.
    derive : callable
        Computes the value (no arguments).

    Returns
    -------
    object
        The derived value.

    Example
    -------
    >>> layer = torch.nn.Linear(2, 2)
    >>> def negated():
    ...     return -layer.weight.detach()
    >>> first = cached_while_unchanged(layer, "neg", [layer.weight], negated)
    >>> cached_while_unchanged(layer, "neg", [layer.weight], negated) is first
    True
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(1.0)  # an optimizer step: derived again
    ...     again = cached_while_unchanged(
    ...         layer, "neg", [layer.weight], negated
    ...     )
    >>> torch.equal(again, first - 1.0)
    True
    """
    if _capturing() or torch.compiler.is_compiling():
        return derive()
    signature = (_OPTIMIZER_STEPS[0],) + tuple(
        (t._version, t.data_ptr(), t.dtype, t.device, t.shape, t.stride())
        for t in tensors
    )
    store = _OWNED.setdefault(owner, {})
    entry = store.get(key)
    if (
        entry is not None
        and entry[1] == signature
        and len(entry[0]) == len(tensors)
        and all(kept is t for kept, t in zip(entry[0], tensors))
    ):
        return entry[2]
    value = derive()
    store[key] = (tuple(tensors), signature, value)
    return value


def forget(owner: object) -> None:
    """Drops every value :func:`cached_while_unchanged` keeps for
    ``owner``.

    Arguments
    ---------
    owner : object
        What the values belong to.

    Example
    -------
    >>> layer = torch.nn.Linear(2, 2)
    >>> def copied():
    ...     return layer.weight.detach().clone()
    >>> first = cached_while_unchanged(layer, "w", [layer.weight], copied)
    >>> forget(layer)
    >>> cached_while_unchanged(layer, "w", [layer.weight], copied) is first
    False
    """
    _OWNED.pop(owner, None)
