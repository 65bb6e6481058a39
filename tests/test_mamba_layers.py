"""Behaviour of Mamba, BiMamba, CrossMamba, blocks and stacks that users
rely on: checkpoint layout, initialisation, padding, equality with a plain
reference, recurrent decoding, streaming, bad input, mixed precision."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference_mamba import reference_bimamba, reference_mamba

from speechbrain_mamba.nnet import (
    BiMamba,
    CrossMamba,
    Mamba,
    MambaStack,
    reset_mamba_parameters,
)
from speechbrain_mamba.ops import numba_math, numba_scan

RTOL, ATOL = 6e-4, 2e-3


def mamba_ssm_layout(d_model, d_state=16, d_conv=4, expand=2):
    """Names and shapes of mamba_ssm.modules.mamba_simple.Mamba."""
    d_inner = expand * d_model
    rank = math.ceil(d_model / 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_mamba_state_dict_matches_mamba_ssm_layout():
    assert shapes(Mamba(40)) == mamba_ssm_layout(40)
    assert shapes(Mamba(64, d_state=8, d_conv=3, expand=1)) == (
        mamba_ssm_layout(64, 8, 3, 1)
    )


def test_bimamba_state_dict_matches_vision_mamba_v2_layout():
    expected = mamba_ssm_layout(32)
    for name in [
        "conv1d.weight",
        "conv1d.bias",
        "x_proj.weight",
        "dt_proj.weight",
        "dt_proj.bias",
        "D",
    ]:
        module, _, param = name.rpartition(".")
        key = f"{module}_b.{param}" if module else f"{param}_b"
        expected[key] = expected[name]
    expected["A_b_log"] = expected["A_log"]
    assert shapes(BiMamba(32)) == expected


def test_crossmamba_has_mamba_parameters():
    assert shapes(CrossMamba(24)) == mamba_ssm_layout(24)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_initialisation_matches_mamba(cls):
    layer = cls(48, d_state=8, dt_min=0.002, dt_max=0.05)
    for suffix in layer.directions:
        dt = F.softplus(getattr(layer, f"dt_proj{suffix}").bias)
        assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
        # log-uniform spread, not a constant
        assert dt.std() > 0.005
        A_name = "A_log" if suffix == "" else "A_b_log"
        expected = torch.log(torch.arange(1, 9.0)).expand(96, 8)
        assert torch.equal(getattr(layer, A_name), expected)
        assert torch.equal(getattr(layer, f"D{suffix}"), torch.ones(96))
        bound = getattr(layer, f"dt_proj{suffix}").weight.abs().max()
        assert bound <= layer.dt_rank**-0.5


def test_mamba_init_survives_generic_reinitialisation():
    stack = MambaStack(32, num_layers=2, d_state=4)
    # what SpeechBrain's separation recipe does: reset every submodule
    for module in stack.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for layer in stack.layers:
        dt = F.softplus(layer.mixer.dt_proj_b.bias)
        assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    # what TransformerASR._init_params does: xavier on every 2-D tensor
    for p in stack.parameters():
        if p.dim() > 1:
            torch.nn.init.xavier_normal_(p)
    assert reset_mamba_parameters(stack) == 2
    expected = torch.log(torch.arange(1, 5.0)).expand(64, 4)
    for layer in stack.layers:
        assert torch.equal(layer.mixer.A_log, expected)
        assert torch.equal(layer.mixer.A_b_log, expected)


def random_mamba_weights(layer):
    """Perturb D and A so that tests exercise non-trivial values."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("D") or "A_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return layer


@pytest.mark.parametrize(
    "cls, reference", [(Mamba, reference_mamba), (BiMamba, reference_bimamba)]
)
def test_layer_equals_plain_reference_outputs_and_gradients(cls, reference):
    layer = random_mamba_weights(cls(16, d_state=8, backend="torch"))
    x = torch.randn(2, 37, 16, requires_grad=True)
    y = layer(x)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    x_grad = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    y_ref = reference(layer, x)
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(x_grad, x.grad, rtol=RTOL, atol=ATOL)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(
            grads[name], p.grad, rtol=RTOL, atol=ATOL, msg=name
        )


@pytest.mark.skipif(not numba_scan.available(), reason="numba not installed")
@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_numba_inference_equals_torch_path(cls, monkeypatch):
    layer = random_mamba_weights(cls(24, d_state=8)).eval()
    x = torch.randn(3, 70, 24)
    lengths = torch.tensor([1.0, 0.5, 0.8])
    with torch.no_grad():
        fast = layer(x, lengths)
        monkeypatch.setenv("SBMAMBA_NUMBA", "0")
        numba_math.load.cache_clear()
        try:
            slow = layer(x, lengths)
        finally:
            monkeypatch.delenv("SBMAMBA_NUMBA")
            numba_math.load.cache_clear()
    torch.testing.assert_close(fast, slow, rtol=RTOL, atol=ATOL)


def padded_batch(lengths_in_frames, d_model, time):
    x = torch.randn(len(lengths_in_frames), time, d_model)
    lengths = torch.tensor([n / time for n in lengths_in_frames])
    return x, lengths


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
@pytest.mark.parametrize("grad", [False, True])
def test_padded_batch_equals_items_alone(cls, grad):
    layer = random_mamba_weights(cls(16, d_state=8))
    frames = [40, 23, 1, 31]
    x, lengths = padded_batch(frames, 16, 40)
    with torch.set_grad_enabled(grad):
        y = layer(x, lengths)
        for i, n in enumerate(frames):
            alone = layer(x[i : i + 1, :n])
            torch.testing.assert_close(y[i, :n], alone[0], rtol=RTOL, atol=ATOL)
            assert torch.all(y[i, n:] == 0)


def test_bimamba_backward_direction_ignores_padding_values():
    layer = random_mamba_weights(BiMamba(16, d_state=8))
    x, lengths = padded_batch([30, 12], 16, 30)
    y1 = layer(x, lengths)
    x2 = x.clone()
    x2[1, 12:] = 1e3 * torch.randn(18, 16)  # garbage in the padding
    y2 = layer(x2, lengths)
    torch.testing.assert_close(y1, y2)
    # ...whereas the original whole-sequence flip would see the padding
    whole_flip = layer(x2[1:])[0, :12]
    assert not torch.allclose(whole_flip, y1[1, :12], atol=1e-3)


def test_bimamba_combine_modes():
    layer = random_mamba_weights(BiMamba(16, d_state=4, combine="sum"))
    x = torch.randn(1, 9, 16)
    torch.testing.assert_close(
        layer(x), reference_bimamba(layer, x), rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match="combine"):
        BiMamba(16, combine="max")


def test_crossmamba_equals_mamba_over_concatenation():
    layer = random_mamba_weights(CrossMamba(16, d_state=8))
    memory, target = torch.randn(2, 11, 16), torch.randn(2, 6, 16)
    joined = Mamba.forward(layer, torch.cat([memory, target], 1))
    torch.testing.assert_close(
        layer(target, memory), joined[:, 11:], rtol=RTOL, atol=ATOL
    )


def test_crossmamba_padded_batch_equals_items_alone():
    layer = random_mamba_weights(CrossMamba(16, d_state=8))
    memory_frames, target_frames = [11, 4, 7], [6, 6, 2]
    memory, memory_lengths = padded_batch(memory_frames, 16, 11)
    target, target_lengths = padded_batch(target_frames, 16, 6)
    memory[1, 4:] = 100.0  # padding must not reach the target
    y = layer(target, memory, target_lengths, memory_lengths)
    for i, (m, t) in enumerate(zip(memory_frames, target_frames)):
        alone = layer(target[i : i + 1, :t], memory[i : i + 1, :m])
        torch.testing.assert_close(y[i, :t], alone[0], rtol=RTOL, atol=ATOL)
        assert torch.all(y[i, t:] == 0)


def test_mamba_step_by_step_equals_full_forward():
    layer = random_mamba_weights(Mamba(16, d_state=8)).eval()
    x = torch.randn(2, 25, 16)
    cache = layer.init_cache(2)
    with torch.no_grad():
        steps = [layer(x[:, t : t + 1], cache=cache) for t in range(25)]
        full = layer(x)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=RTOL, atol=ATOL)
    assert cache.ssm.dtype == torch.float32


def test_crossmamba_cached_decoding_equals_full_forward():
    layer = random_mamba_weights(CrossMamba(16, d_state=8)).eval()
    memory_frames = [9, 5]
    memory, memory_lengths = padded_batch(memory_frames, 16, 9)
    target = torch.randn(2, 7, 16)
    with torch.no_grad():
        full = layer(target, memory, memory_lengths=memory_lengths)
        cache = layer.init_cache(2)
        steps = [
            layer(target[:, t : t + 1], memory, None, memory_lengths, cache)
            for t in range(7)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=RTOL, atol=ATOL)


def test_cache_reorder_follows_beams():
    layer = random_mamba_weights(Mamba(16, d_state=8)).eval()
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        cache = layer.init_cache(2)
        layer(x[:, :6], cache=cache)
        cache = cache.reorder(torch.tensor([1, 1, 0]))
        continued = layer(x[[1, 1, 0], 6:], cache=cache)
        full = layer(x[[1, 1, 0]])
    torch.testing.assert_close(continued, full[:, 6:], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("grad", [False, True])
def test_stack_chunked_streaming_equals_full_forward(grad):
    stack = MambaStack(16, num_layers=3, bidirectional=False, d_state=8)
    x = torch.randn(2, 50, 16)
    with torch.set_grad_enabled(grad):
        full = stack(x)
        for sizes in ([1] * 5 + [45], [17, 3, 30], [50], [4] * 12 + [2]):
            cache = stack.init_cache(2)
            chunks = [stack(c, cache=cache) for c in x.split(sizes, dim=1)]
            torch.testing.assert_close(
                torch.cat(chunks, 1), full, rtol=RTOL, atol=ATOL
            )


def test_streaming_with_padded_chunks_keeps_state_at_true_end():
    layer = random_mamba_weights(Mamba(16, d_state=8)).eval()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        cache = layer.init_cache(2)
        # item 1 has only 5 valid frames in the first chunk
        layer(x[:, :8], lengths=torch.tensor([1.0, 5 / 8]), cache=cache)
        second = layer(x[:, 8:], cache=cache)
        alone = layer(torch.cat([x[1:, :5], x[1:, 8:]], 1))
    torch.testing.assert_close(second[1], alone[0, 5:], rtol=RTOL, atol=ATOL)


def test_bidirectional_stack_refuses_cache():
    with pytest.raises(ValueError, match="no recurrent cache"):
        MambaStack(16, num_layers=1, bidirectional=True).init_cache(1)


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_stack_padding_and_layernorm(cls):
    stack = MambaStack(
        16, 2, bidirectional=cls is BiMamba, norm="layernorm", d_state=4
    )
    x, lengths = padded_batch([20, 9], 16, 20)
    y = stack(x, lengths)
    torch.testing.assert_close(
        y[1, :9], stack(x[1:, :9])[0], rtol=RTOL, atol=ATOL
    )
    assert torch.all(y[1, 9:] == 0)
    assert isinstance(stack.layers[0].norm, torch.nn.LayerNorm)


def test_drop_path_changes_training_output_only():
    stack = MambaStack(16, 2, drop_path=0.5, d_state=4)
    x = torch.randn(8, 5, 16)
    stack.eval()
    torch.testing.assert_close(stack(x), stack(x))
    stack.train()
    torch.manual_seed(1)
    a = stack(x)
    torch.manual_seed(2)
    b = stack(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m(torch.randn(5, 16)), "must be \\[batch, time"),
        (lambda m: m(torch.randn(2, 5, 8)), "feature size 8"),
        (lambda m: m(torch.randint(0, 3, (2, 5, 16))), "floating-point"),
        (
            lambda m: m(torch.randn(2, 5, 16), torch.tensor([1.0, 0.0])),
            "\\(0, 1\\]",
        ),
        (
            lambda m: m(torch.randn(2, 5, 16), torch.tensor([1.0, 1.5])),
            "\\(0, 1\\]",
        ),
        (
            lambda m: m(torch.randn(2, 5, 16), torch.tensor([1.0])),
            "shape \\[batch=2\\]",
        ),
        (
            lambda m: m(torch.randn(2, 5, 16), torch.tensor([5, 3])),
            "relative lengths",
        ),
    ],
)
@pytest.mark.parametrize("cls", [Mamba, BiMamba])
def test_bad_input_raises_clear_errors(cls, call, match):
    with pytest.raises(ValueError, match=match):
        call(cls(16, d_state=4))


def test_bad_construction_raises_clear_errors():
    with pytest.raises(ValueError, match="too large for the mamba_ssm"):
        Mamba(16, d_state=512, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        Mamba(16, backend="tensorrt")
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        Mamba(0)
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(16, dt_init="xavier")
    with pytest.raises(ValueError, match="batch size"):
        layer = Mamba(16)
        layer(torch.randn(3, 2, 16), cache=layer.init_cache(2))


def test_large_d_state_on_torch_path_equals_reference():
    """d_state beyond mamba_ssm's limit of 256: the default backend takes
    the PyTorch path, with the reference's outputs and gradients."""
    layer = random_mamba_weights(Mamba(8, d_state=300))
    x = torch.randn(2, 6, 8, requires_grad=True)
    y = layer(x)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    x_grad, x.grad = x.grad.clone(), None
    layer.zero_grad()
    y_ref = reference_mamba(layer, x)
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(x_grad, x.grad, rtol=RTOL, atol=ATOL)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(
            grads[name], p.grad, rtol=RTOL, atol=ATOL, msg=name
        )


def test_cuda_backend_without_kernels_is_a_clear_error(monkeypatch):
    from speechbrain_mamba.ops import backend

    monkeypatch.setattr(backend, "cuda_kernels", lambda: None)
    layer = Mamba(16, backend="cuda")
    with pytest.raises(ImportError, match="pip install speechbrain-mamba"):
        layer(torch.randn(1, 3, 16))
    monkeypatch.setenv("SBMAMBA_BACKEND", "torch")
    assert layer(torch.randn(1, 3, 16)).shape == (1, 3, 16)
    monkeypatch.setenv("SBMAMBA_BACKEND", "cuda")
    with pytest.raises(ImportError, match="mamba_ssm"):
        Mamba(16)(torch.randn(1, 3, 16))
    monkeypatch.setenv("SBMAMBA_BACKEND", "fast")
    with pytest.raises(ValueError, match="SBMAMBA_BACKEND"):
        Mamba(16)(torch.randn(1, 3, 16))


def test_auto_backend_takes_triton_on_cuda(monkeypatch):
    """Full-sequence calls of BiMamba and unidirectional layers: "auto"
    takes the Triton kernels for CUDA tensors of any size, with or without
    mamba_ssm (measured faster and smaller everywhere), mamba_ssm's only
    where Triton is missing; CPU tensors stay on PyTorch; "triton" insists
    on Triton, "cuda" on mamba_ssm, "torch" on PyTorch."""
    from types import SimpleNamespace

    from speechbrain_mamba.ops import backend
    from speechbrain_mamba.ops.triton import bidirectional_scan

    monkeypatch.delenv("SBMAMBA_BACKEND", raising=False)
    monkeypatch.setattr(bidirectional_scan, "available", lambda: True)
    on_cpu = torch.zeros(2, 50, 8)
    for kernels in (None, object()):
        monkeypatch.setattr(backend, "cuda_kernels", lambda k=kernels: k)
        for frames in (2, 50, 20000):
            on_gpu = SimpleNamespace(is_cuda=True, shape=(2, frames, 8))
            assert backend.sequence_path("auto", on_gpu, 16) == "triton"
            assert backend.sequence_path("triton", on_gpu, 16) == "triton"
            assert backend.sequence_path("torch", on_gpu, 16) == "torch"
            # beyond mamba_ssm's largest state too
            assert backend.sequence_path("auto", on_gpu, 512) == "triton"
        assert backend.sequence_path("auto", on_cpu, 16) == "torch"
    assert backend.sequence_path("cuda", on_gpu, 16) == "mamba_ssm"
    # a GPU without Triton: mamba_ssm's kernels, else PyTorch
    monkeypatch.setattr(bidirectional_scan, "available", lambda: False)
    assert backend.sequence_path("auto", on_gpu, 16) == "mamba_ssm"
    monkeypatch.setattr(backend, "cuda_kernels", lambda: None)
    assert backend.sequence_path("auto", on_gpu, 16) == "torch"


@pytest.mark.parametrize("cls", [Mamba, BiMamba])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_runs_and_stays_close(cls, dtype):
    layer = random_mamba_weights(cls(32, d_state=8))
    x = torch.randn(2, 40, 32)
    reference = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        y.float().sum().backward()
    assert y.dtype == dtype
    assert torch.isfinite(y.float()).all()
    rel = (y.float() - reference).norm() / reference.norm()
    assert rel < 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    stack = MambaStack(16, num_layers=2, d_state=4)
    x = torch.randn(2, 12, 16)
    lengths = torch.tensor([1.0, 0.5])
    stack(x, lengths).pow(2).sum().backward()
    expected = [p.grad.clone() for p in stack.parameters()]
    stack.zero_grad()
    stack.gradient_checkpointing = True
    stack(x, lengths).pow(2).sum().backward()
    for g_ref, p in zip(expected, stack.parameters()):
        torch.testing.assert_close(p.grad, g_ref, rtol=RTOL, atol=ATOL)
