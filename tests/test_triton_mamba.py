"""Unidirectional Mamba on the Triton kernels: the forward-only mode of the
bidirectional scan and convolution (``ScanInputs`` without backward B/C,
``causal_conv_silu``) against the loop-by-loop references, and the Mamba,
CrossMamba and MambaStack layers with backend "triton" against the
pure-PyTorch path and tests/reference_mamba.py: outputs and the gradients of
the input and of every parameter, padded items equal to the items alone. On
an NVIDIA GPU with Triton every test runs; on CPU the small ones run under
Triton's interpreter (``TRITON_INTERPRET=1``, chunks of 16 frames so that a
few dozen frames cross chunks), started by tests/test_triton_interpreted.py.
"""

import pytest
import torch
from reference_mamba import reference_mamba

from speechbrain_mamba.nnet import CrossMamba, Mamba, MambaStack
from speechbrain_mamba.ops.backend import sequence_path
from speechbrain_mamba.ops.triton import bidirectional_conv as conv_ops
from speechbrain_mamba.ops.triton import bidirectional_scan as scan_ops

INTERPRETED = scan_ops.interpreted()
DEVICE = "cpu" if INTERPRETED else "cuda"

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("true_fp32")]

RTOL, ATOL = 6e-4, 2e-3


@pytest.fixture(autouse=True)
def _short_chunks(monkeypatch):
    """Under the interpreter, chunks of 16 frames: a few dozen frames then
    cross chunks (and the carry kernel runs) at an affordable cost. The
    layers' own backend counts (no SBMAMBA_BACKEND override)."""
    monkeypatch.delenv("SBMAMBA_BACKEND", raising=False)
    if INTERPRETED:
        monkeypatch.setattr(scan_ops, "TRAINING_CHUNK", 16)
        monkeypatch.setattr(scan_ops, "SHORT_CHUNK", 16)


def forward_scan_inputs(batch, time, d_inner, d_state, lengths):
    """Leaves of a forward-only scan (B and C views of one x_proj output)."""
    torch.manual_seed(0)

    def make(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE) * scale).requires_grad_()

    return {
        "u": make(batch, time, d_inner),
        "delta_raw": make(batch, time, d_inner),
        "z": make(batch, time, d_inner),
        "A": (-torch.rand(d_inner, d_state, device=DEVICE) - 0.2)
        .mul(3)
        .requires_grad_(),
        "x_dbl": make(batch, time, 2 * d_state + 3),
        "D": make(d_inner),
        "delta_bias": make(d_inner, scale=0.5),
        "lengths": torch.tensor(lengths, device=DEVICE),
    }


def call(function, inputs, d_state):
    B, C = inputs["x_dbl"][..., 3:].split(d_state, -1)
    return function(
        scan_ops.ScanInputs(
            inputs["u"], inputs["delta_raw"], inputs["z"], inputs["A"], B, C,
            None, None, inputs["D"], inputs["delta_bias"], inputs["lengths"],
        )
    )  # fmt: skip


def leaves(inputs):
    return [t for t in inputs.values() if t.requires_grad]


@pytest.mark.parametrize(
    "time,lengths,d_inner,d_state",
    [
        (34, [34, 19], 8, 4),
        pytest.param(300, [300, 171, 64], 40, 16, marks=pytest.mark.gpu),
        pytest.param(700, [700, 3], 8, 8, marks=pytest.mark.gpu),
    ],
)
def test_forward_scan_equals_loop_reference(time, lengths, d_inner, d_state):
    """The training scan (output, gradients of every input) and the
    inference scan in forward-only mode."""
    inputs = forward_scan_inputs(len(lengths), time, d_inner, d_state, lengths)
    out = call(scan_ops.bidirectional_scan, inputs, d_state)
    ref = call(scan_ops.scan_reference, inputs, d_state)
    assert out.shape == (len(lengths), time, d_inner)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), leaves(inputs))
    ref_grads = torch.autograd.grad((ref * weights).sum(), leaves(inputs))
    for name, got, expected in zip(inputs, grads, ref_grads):
        torch.testing.assert_close(
            got, expected, rtol=RTOL, atol=ATOL, msg=name
        )
    with torch.no_grad():
        fast = call(scan_ops.bidirectional_scan_inference, inputs, d_state)
    torch.testing.assert_close(fast, ref, rtol=RTOL, atol=ATOL)


def test_causal_conv_is_the_forward_half_of_the_bidirectional_conv():
    """Same kernels: values and gradients equal the forward half of the
    bidirectional convolution's reference; odd time and channel counts."""
    torch.manual_seed(0)
    time, d = 37, 10
    xz = torch.randn(2, time, 2 * d, device=DEVICE, requires_grad=True)
    x = xz[..., :d]  # a strided view, as from the input projection
    weight = torch.randn(d, 1, 4, device=DEVICE, requires_grad=True)
    bias = torch.randn(d, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([time, 20], device=DEVICE)
    out = conv_ops.causal_conv_silu(x, weight, bias, lengths)
    ref = conv_ops.conv_reference(x, weight, bias, weight, bias, lengths)
    ref = ref[..., :d]
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad((out * dout).sum(), [xz, weight, bias])
    ref_grads = torch.autograd.grad((ref * dout).sum(), [xz, weight, bias])
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def perturbed(module):
    """Spread A and D away from their initial values (a stronger test)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("D") or name.endswith("A_log"):
                p.add_(0.3 * torch.randn_like(p))
    return module


def run(module, backend, inputs, lengths, forward):
    """Output and gradients (input(s) and every parameter) of one path."""
    module.zero_grad()
    for layer in module.modules():
        if isinstance(layer, Mamba):
            layer.backend = backend
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = forward(module, inputs, lengths)
    weights = torch.linspace(-1, 1, out.numel(), device=out.device)
    (out.flatten() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    for i, t in enumerate(inputs):
        grads[f"input{i}"] = t.grad
    used = {
        layer.kernels_used
        for layer in module.modules()
        if isinstance(layer, Mamba)
    }
    return out.detach(), grads, used


def assert_same_results(got, expected):
    out, grads, used = got
    ref, ref_grads, ref_used = expected
    assert used == {"triton"} and ref_used == {"torch"}, (used, ref_used)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        torch.testing.assert_close(
            grads[name], ref_grads[name], rtol=RTOL, atol=ATOL, msg=name
        )


def mamba_forward(module, inputs, lengths):
    return module(inputs[0], lengths)


def assert_padded_equals_alone(module, inputs, lengths, forward):
    """Each padded item's valid output frames are what it gets alone."""
    with torch.no_grad():
        batch_out = forward(module, inputs, lengths)
        time = batch_out.shape[1]
        for b, length in enumerate(lengths.tolist()):
            frames = round(length * time)
            alone = forward(
                module, [t[b : b + 1, :frames] for t in inputs], None
            )
            torch.testing.assert_close(
                batch_out[b : b + 1, :frames], alone, rtol=RTOL, atol=ATOL
            )
            assert not batch_out[b, frames:].any()


@pytest.mark.parametrize(
    "padded,conv_bias",
    [(True, True), pytest.param(False, False, marks=pytest.mark.gpu)],
)
def test_mamba_triton_equals_torch_path(padded, conv_bias):
    torch.manual_seed(0)
    d_model, time = (8, 20) if INTERPRETED else (64, 333)
    layer = Mamba(
        d_model, d_state=4 if INTERPRETED else 16, conv_bias=conv_bias
    )
    layer = perturbed(layer.to(DEVICE))
    x = torch.randn(2, time, d_model, device=DEVICE)
    lengths = torch.tensor([1.0, 0.6], device=DEVICE) if padded else None
    got = run(layer, "triton", [x], lengths, mamba_forward)
    assert_same_results(got, run(layer, "torch", [x], lengths, mamba_forward))
    if padded:
        layer.backend = "triton"
        assert_padded_equals_alone(layer, [x], lengths, mamba_forward)


def test_mamba_triton_equals_loop_reference():
    """Against the loop-by-loop Mamba written from the paper's equations,
    in training (gradients) and inference (the inference scan)."""
    torch.manual_seed(0)
    layer = perturbed(Mamba(8, d_state=4, backend="triton").to(DEVICE))
    x = torch.randn(2, 18, 8, device=DEVICE, requires_grad=True)
    out = layer(x)
    ref = reference_mamba(layer, x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    params = [x, *layer.parameters()]
    dout = torch.randn_like(ref)
    grads = torch.autograd.grad((out * dout).sum(), params)
    ref_grads = torch.autograd.grad((ref * dout).sum(), params)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=RTOL, atol=ATOL)
    assert layer.kernels_used == "triton"


def cross_forward(module, inputs, lengths):
    target, memory = inputs
    return module(target, memory, lengths, lengths)


def test_cross_mamba_triton_equals_torch_path():
    """CrossMamba's full-sequence call ([memory ; target] per item) on the
    Triton kernels, padded target and memory."""
    torch.manual_seed(0)
    layer = perturbed(CrossMamba(8, d_state=4).to(DEVICE))
    target = torch.randn(2, 10, 8, device=DEVICE)
    memory = torch.randn(2, 9, 8, device=DEVICE)
    lengths = torch.tensor([1.0, 0.5], device=DEVICE)
    inputs = [target, memory]
    got = run(layer, "triton", inputs, lengths, cross_forward)
    assert_same_results(
        got, run(layer, "torch", inputs, lengths, cross_forward)
    )


def test_mamba_stack_triton_equals_torch_path():
    """A unidirectional stack (VALL-M's AR model), padded batch."""
    torch.manual_seed(0)
    stack = MambaStack(8, num_layers=2, bidirectional=False, d_state=4)
    stack = stack.to(DEVICE)
    perturbed(stack)
    x = torch.randn(2, 20, 8, device=DEVICE)
    lengths = torch.tensor([1.0, 0.7], device=DEVICE)
    got = run(stack, "triton", [x], lengths, mamba_forward)
    assert_same_results(got, run(stack, "torch", [x], lengths, mamba_forward))
    assert_padded_equals_alone(stack, [x], lengths, mamba_forward)


@pytest.mark.gpu
def test_auto_takes_triton_on_cuda_with_or_without_mamba_ssm(monkeypatch):
    """backend "auto" on CUDA: the Triton kernels whether mamba_ssm is
    missing or there ("cuda" insists on mamba_ssm's); the pure-PyTorch path
    on CPU."""
    from speechbrain_mamba.ops import backend

    x = torch.zeros(1, 8, 4, device="cuda")
    monkeypatch.setattr(backend, "cuda_kernels", lambda: None)
    assert sequence_path("auto", x, 16) == "triton"
    assert sequence_path("torch", x, 16) == "torch"
    assert sequence_path("auto", x.cpu(), 16) == "torch"
    layer = Mamba(16, d_state=8).cuda()
    x = torch.randn(2, 50, 16, device="cuda")
    with torch.no_grad():
        out = layer(x)
        assert layer.kernels_used == "triton"
        layer.backend = "torch"
        torch.testing.assert_close(layer(x), out, rtol=RTOL, atol=ATOL)
    monkeypatch.setattr(backend, "cuda_kernels", lambda: object())
    assert sequence_path("auto", x, 16) == "triton"
    assert sequence_path("cuda", x, 16) == "mamba_ssm"
    assert sequence_path("triton", x, 16) == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mamba_triton_under_autocast_is_close_to_torch_path(dtype):
    """Output and every gradient under autocast (relative error norms)."""
    torch.manual_seed(0)
    layer = perturbed(Mamba(64, d_state=16).cuda())
    x = torch.randn(2, 500, 64, device="cuda")
    lengths = torch.tensor([1.0, 0.7], device="cuda")

    def forward(module, inputs, lengths):
        with torch.autocast("cuda", dtype=dtype):
            return module(inputs[0], lengths).float()

    (out, grads, _), (ref, ref_grads, _) = (
        run(layer, backend, [x], lengths, forward)
        for backend in ("triton", "torch")
    )
    for name, got, expected in [
        ("output", out, ref),
        *((n, grads[n].float(), ref_grads[n].float()) for n in ref_grads),
    ]:
        rel = (got - expected).norm() / expected.norm().clamp_min(1e-6)
        assert rel < 3e-2, f"{name}: relative error {rel:.3g}"


@pytest.mark.gpu
def test_mamba_triton_keeps_little_for_backward():
    """Training on the Triton kernels keeps the layer input and one state
    per chunk (one autograd function), far less than the PyTorch path."""
    torch.manual_seed(0)
    layer = Mamba(64, d_state=16).cuda()
    x = torch.randn(1, 8000, 64, device="cuda", requires_grad=True)
    kept = {}
    for backend in ("triton", "torch"):
        layer.backend = backend
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(x)
        kept[backend] = torch.cuda.memory_allocated() - start
        out.float().sum().backward()
        assert layer.kernels_used == backend
    assert kept["triton"] < 0.35 * kept["torch"], kept
