"""Values derived once per tensor (speechbrain_mamba.utils.per_tensor_cache)
and the numbers of valid frames every layer of a model derives from the same
relative lengths."""

import collections
import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from speechbrain_mamba.nnet import MambaStack, padding
from speechbrain_mamba.ops.triton.bidirectional_scan import kernel_lengths
from speechbrain_mamba.utils import per_tensor_cache
from speechbrain_mamba.utils.per_tensor_cache import (
    cached_per_tensor,
    cached_while_unchanged,
)


class CountOps(TorchDispatchMode):
    """Counts the ATen operations run inside it."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_derived_once_per_tensor_and_key_until_modified():
    calls = collections.Counter()

    def scaled(factor):
        def derive(t):
            calls[factor] += 1
            return t * factor

        return derive

    lengths = torch.tensor([1.0, 0.5])
    other = torch.tensor([1.0, 0.5])
    twice = cached_per_tensor(lengths, 2, scaled(2))
    assert cached_per_tensor(lengths, 2, scaled(2)) is twice
    assert cached_per_tensor(lengths, 3, scaled(3)).tolist() == [3.0, 1.5]
    # an equal but different tensor has its own values
    assert cached_per_tensor(other, 2, scaled(2)) is not twice
    assert calls == {2: 2, 3: 1}
    lengths[1] = 0.25  # in place: every value of it is derived again
    assert cached_per_tensor(lengths, 2, scaled(2)).tolist() == [2.0, 0.5]
    assert cached_per_tensor(lengths, 3, scaled(3)).tolist() == [3.0, 0.75]
    assert calls == {2: 3, 3: 2}


def test_freed_tensors_are_forgotten_and_inference_tensors_not_kept():
    lengths = torch.tensor([1.0])
    cached_per_tensor(lengths, "k", lambda t: t + 1)
    assert id(lengths) in per_tensor_cache._DERIVED
    tensor_id = id(lengths)
    del lengths
    gc.collect()
    assert tensor_id not in per_tensor_cache._DERIVED
    calls = []
    with torch.inference_mode():
        frozen = torch.tensor([1.0])
        for _ in range(2):
            cached_per_tensor(frozen, "k", calls.append)
    assert len(calls) == 2 and id(frozen) not in per_tensor_cache._DERIVED


def test_a_stack_derives_the_frames_once_with_the_same_outputs(monkeypatch):
    """Every layer of a MambaStack (4 blocks, bidirectional) gets the same
    relative lengths: the frames are computed by the first call only, and
    the outputs equal those of a stack that recomputes them per layer."""
    torch.manual_seed(0)
    stack = MambaStack(16, 4, d_state=4, backend="torch")
    x = torch.randn(2, 9, 16)
    lengths = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        counter = CountOps()
        with counter:
            out = stack(x, lengths)
        assert counter.counts["round"] == 1
        counter = CountOps()
        with counter:
            again = stack(x, lengths)
        assert counter.counts["round"] == 0
        monkeypatch.setattr(
            padding, "cached_per_tensor", lambda t, key, derive: derive(t)
        )
        counter = CountOps()
        with counter:
            plain = stack(x, lengths)
        assert counter.counts["round"] > 4
    assert torch.equal(out, again) and torch.equal(out, plain)
    assert plain[1, 5:].abs().sum() == 0  # 0.6 * 9 frames: 5 valid


def test_kept_while_unchanged_sees_new_data_and_conversions():
    """A parameter given new data (``param.data = ...``, what ``module.to``
    does) keeps its identity and version counter: the value is derived
    again all the same; ``forget`` drops what an owner kept."""
    from speechbrain_mamba.utils.per_tensor_cache import (
        cached_while_unchanged,
        forget,
    )

    layer = torch.nn.Linear(2, 2)

    def kept():
        return cached_while_unchanged(
            layer, "neg", [layer.weight], lambda: -layer.weight.detach()
        )

    first = kept()
    weight, version = layer.weight, layer.weight._version
    layer.weight.data = layer.weight.data + 1.0
    assert layer.weight is weight and layer.weight._version == version
    torch.testing.assert_close(kept(), first - 1.0)
    layer.double()
    assert layer.weight is weight and kept().dtype == torch.float64
    assert kept() is kept()
    again = kept()
    forget(layer)
    assert kept() is not again


def test_inference_mode_values_and_self_references_are_not_kept():
    """A value derived in inference mode is an inference tensor, which
    autograd cannot save: a later training call with the same lengths
    gets a value of its own. A value that is the tensor itself (int32
    frames made int32) is not kept: it would keep its tensor alive."""

    class SavesFrames(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, frames):
            ctx.save_for_backward(frames)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2, None

    lengths = torch.tensor([1.0, 0.5])
    with torch.inference_mode():
        assert padding.lengths_to_frames(lengths, 2, 10).is_inference()
    frames = padding.lengths_to_frames(lengths, 2, 10)
    assert not frames.is_inference() and frames.tolist() == [10, 5]
    x = torch.ones(2, requires_grad=True)
    SavesFrames.apply(x, frames).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]

    frames = torch.tensor([9, 5], dtype=torch.int32)
    freed = weakref.ref(frames)
    assert kernel_lengths(frames) is frames
    del frames
    gc.collect()
    assert freed() is None


def test_kept_while_unchanged_sees_a_fused_optimizer_step():
    """A fused optimizer updates parameters without bumping their version
    counters: any optimizer step makes the kept value be derived again,
    also without a switch between training and evaluation."""
    layer = torch.nn.Linear(3, 3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)

    def negated():
        return -layer.weight.detach().clone()

    first = cached_while_unchanged(layer, "neg", [layer.weight], negated)
    version = layer.weight._version
    layer.weight.grad = torch.ones_like(layer.weight)
    optimizer.step()
    assert layer.weight._version == version  # invisible to the version
    again = cached_while_unchanged(layer, "neg", [layer.weight], negated)
    assert torch.equal(again, -layer.weight.detach())
    assert not torch.equal(again, first)
