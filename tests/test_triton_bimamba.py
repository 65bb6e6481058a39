"""The fused Triton BiMamba kernels (bidirectional conv, bidirectional scan
for training and inference, the whole layer as one low-memory autograd
function) against plain references: kernel level (loop-by-loop scan,
reversed-copy convolution) and layer level (the pure-PyTorch BiMamba and the
mamba_ssm path), outputs and gradients, with padding, several chunks and
chunk blocks. On an NVIDIA GPU with Triton every test runs; on CPU the small
ones run under Triton's interpreter (``TRITON_INTERPRET=1``, shorter chunks
so that a few frames cross chunks), started by
tests/test_triton_interpreted.py."""

import pytest
import torch
from gpu_memory import memory_kept_for_backward

from speechbrain_mamba.nnet import BiMamba, Mamba, MambaStack
from speechbrain_mamba.ops.triton import bidirectional_conv as conv_ops
from speechbrain_mamba.ops.triton import bidirectional_scan as scan_ops

INTERPRETED = scan_ops.interpreted()
DEVICE = "cpu" if INTERPRETED else "cuda"

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("true_fp32")]

RTOL, ATOL = 6e-4, 2e-3


@pytest.fixture(autouse=True)
def _short_chunks(monkeypatch):
    """Under the interpreter, chunks of 16 frames: a few dozen frames then
    cross chunks (and the carry kernel runs) at an affordable cost."""
    if INTERPRETED:
        monkeypatch.setattr(scan_ops, "TRAINING_CHUNK", 16)
        monkeypatch.setattr(scan_ops, "SHORT_CHUNK", 16)


def scan_inputs(batch, time, d_inner, d_state, lengths):
    torch.manual_seed(0)

    def make(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE) * scale).requires_grad_()

    x_dbl = [make(batch, time, 2 * d_state + 3) for _ in range(2)]
    return {
        "u": make(batch, time, 2 * d_inner),
        "delta_raw": make(batch, time, 2 * d_inner),
        "z": make(batch, time, d_inner),
        "A": (-torch.rand(2 * d_inner, d_state, device=DEVICE) - 0.2)
        .mul(3)
        .requires_grad_(),
        "x_dbl": x_dbl,
        "D": make(2 * d_inner),
        "delta_bias": make(2 * d_inner, scale=0.5),
        "lengths": torch.tensor(lengths, device=DEVICE),
    }


def call(function, inputs, d_state, scale):
    B_f, C_f = inputs["x_dbl"][0][..., 3:].split(d_state, -1)
    B_b, C_b = inputs["x_dbl"][1][..., 3:].split(d_state, -1)
    scan_inputs = scan_ops.ScanInputs(
        inputs["u"],
        inputs["delta_raw"],
        inputs["z"],
        inputs["A"],
        B_f,
        C_f,
        B_b,
        C_b,
        inputs["D"],
        inputs["delta_bias"],
        inputs["lengths"],
    )
    return function(scan_inputs, scale)


def leaves(inputs):
    out = []
    for value in inputs.values():
        out.extend(value if isinstance(value, list) else [value])
    return [t for t in out if t.requires_grad]


def assert_scan_matches_reference(inputs, d_state, scale):
    """Triton scan against the loop-by-loop reference, output and the
    gradients of every input."""
    out = call(scan_ops.bidirectional_scan, inputs, d_state, scale)
    ref = call(scan_ops.scan_reference, inputs, d_state, scale)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), leaves(inputs))
    ref_grads = torch.autograd.grad((ref * weights).sum(), leaves(inputs))
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "time,lengths,d_inner,d_state",
    [
        (40, [40, 23], 8, 4),
        pytest.param(50, [50], 16, 4, marks=pytest.mark.gpu),
        pytest.param(300, [300, 171, 64], 40, 16, marks=pytest.mark.gpu),
        pytest.param(700, [700, 3], 8, 8, marks=pytest.mark.gpu),
    ],
)
def test_scan_equals_loop_reference(time, lengths, d_inner, d_state):
    inputs = scan_inputs(len(lengths), time, d_inner, d_state, lengths)
    assert_scan_matches_reference(inputs, d_state, 0.5)


def test_long_sequences_scan_in_longer_training_chunks(monkeypatch):
    """From LONG_TRAINING_SEQUENCE frames on, training keeps one state per
    LONG_TRAINING_CHUNK frames (half as many); the gradients stay the
    reference's, padded item included (threshold lowered to reach it)."""
    long_chunk = 2 * scan_ops.TRAINING_CHUNK
    monkeypatch.setattr(scan_ops, "LONG_TRAINING_CHUNK", long_chunk)
    monkeypatch.setattr(scan_ops, "LONG_TRAINING_SEQUENCE", 2 * long_chunk)
    time = 3 * long_chunk + 5
    assert scan_ops.training_chunk(time) == long_chunk
    assert scan_ops.training_chunk(2 * long_chunk - 1) == long_chunk // 2
    inputs = scan_inputs(2, time, 8, 4, [time, long_chunk + 3])
    with torch.no_grad():
        _, states, _ = call(
            lambda ins, scale: scan_ops.scan_forward(ins), inputs, 4, 0.5
        )
    assert states.shape[1] == -(-time // long_chunk)  # chunks kept
    assert_scan_matches_reference(inputs, 4, 0.5)


@pytest.mark.gpu
def test_scan_step_sizes_over_the_whole_softplus_range():
    """The kernels' softplus and sigmoid use the hardware's base-2 exp/log:
    raw step sizes from -30 (softplus ~ 0) through 0 to 30 (past the
    identity switch at 20) must still match the reference, with gradients."""
    inputs = scan_inputs(2, 120, 16, 8, [120, 77])
    with torch.no_grad():
        ramp = torch.linspace(-30, 30, inputs["delta_raw"].numel())
        inputs["delta_raw"].copy_(ramp.view_as(inputs["delta_raw"]))
        inputs["delta_bias"].zero_()
    assert_scan_matches_reference(inputs, 8, 0.5)


@pytest.mark.parametrize(
    "chunks",
    [1, 3, *(pytest.param(n, marks=pytest.mark.gpu) for n in (16, 70, 200))],
)
@pytest.mark.parametrize("first_half_reverse", [False, True])
def test_chunk_states_carry_equals_loop(chunks, first_half_reverse):
    """The carry's block of chunks follows the chunk count (one block of a
    power of two for short sequences, blocks of CHUNK_BLOCK beyond)."""
    torch.manual_seed(0)
    decay = torch.rand(2, chunks, 6, 3, device=DEVICE) * 0.9 + 0.05
    state = torch.randn(2, chunks, 6, 3, device=DEVICE)
    got = scan_ops.carry_chunk_states(decay, state, first_half_reverse)
    expected = torch.zeros_like(state)
    for half in range(2):
        cols = slice(3 * half, 3 * half + 3)
        reverse = (half == 0) == first_half_reverse
        carry = torch.zeros(2, 3, 3, device=DEVICE)
        for k in reversed(range(chunks)) if reverse else range(chunks):
            expected[:, k, cols] = carry
            carry = carry * decay[:, k, cols] + state[:, k, cols]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_scan_carries_state_over_many_chunk_blocks():
    """More chunks than one carry block: the state (and, in backward, the
    adjoint) must cross blocks."""
    chunks = scan_ops.CHUNK_BLOCK * 2 + 5
    time = chunks * scan_ops.TRAINING_CHUNK
    inputs = scan_inputs(1, time, 4, 2, [time - 7])
    with torch.no_grad():  # slow decay so the state travels far
        inputs["A"].mul_(1e-3)
        inputs["delta_bias"].fill_(-4.0)
    assert_scan_matches_reference(inputs, 2, 1.0)


def test_conv_equals_reversed_copy_reference():
    torch.manual_seed(0)
    time, d = 150, 70  # several time and channel blocks of the kernel
    xz = torch.randn(3, time, 2 * d, device=DEVICE, requires_grad=True)
    x = xz[..., :d]  # a strided view, as from the input projection
    params = [
        torch.randn(d, 1, 4, device=DEVICE, requires_grad=True)
        if i % 2 == 0
        else torch.randn(d, device=DEVICE, requires_grad=True)
        for i in range(4)
    ]
    lengths = torch.tensor([time, 99, 2], device=DEVICE)
    out = conv_ops.bidirectional_conv_silu(x, *params, lengths)
    ref = conv_ops.conv_reference(x, *params, lengths)
    valid = torch.arange(time, device=DEVICE)[None, :] < lengths[:, None]
    mask = torch.ones_like(ref)
    mask[..., d:] *= valid[..., None]  # backward half: valid frames only
    torch.testing.assert_close(out * mask, ref * mask, rtol=RTOL, atol=ATOL)
    weights = torch.randn_like(ref) * mask
    grads = torch.autograd.grad((out * weights).sum(), [xz, *params])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [xz, *params])
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def run_layer(module, backend, x, lengths, dtype):
    module.zero_grad()
    for layer in module.modules():
        if isinstance(layer, Mamba):
            layer.backend = backend
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = module(x, lengths)
    weights = torch.linspace(-1, 1, out.numel(), device=DEVICE)
    (out.float().flatten() * weights).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in module.named_parameters()}
    grads["input"] = x.grad.float()
    return out.float().detach(), grads


def assert_same(a, b, dtype, what):
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=what)
    else:
        rel = (a - b).norm() / b.norm().clamp_min(1e-6)
        assert rel < 3e-2, f"{what}: relative error {rel:.3g}"


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("combine", ["mean", "sum"])
@pytest.mark.parametrize("low_memory", [False, True])
def test_bimamba_triton_equals_torch_path(padded, dtype, combine, low_memory):
    """Plain autograd over the Triton kernels, and the whole layer as one
    autograd function that keeps only its input (low_memory). Interpreted:
    the default layer (mean, lean) in fp32 on a padded batch."""
    if INTERPRETED and not (
        padded and dtype == torch.float32 and combine == "mean" and low_memory
    ):
        pytest.skip("GPU only (interpreted: one small case)")
    torch.manual_seed(0)
    d_model, time = (8, 24) if INTERPRETED else (64, 333)
    module = BiMamba(
        d_model, d_state=4 if INTERPRETED else 16, combine=combine,
        low_memory=low_memory,
    ).to(DEVICE)  # fmt: skip
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("D") or "A_" in name:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, time, d_model, device=DEVICE)
    lengths = torch.tensor([1.0, 0.55, 0.8], device=DEVICE) if padded else None
    out, grads = run_layer(module, "triton", x, lengths, dtype)
    ref, ref_grads = run_layer(module, "torch", x, lengths, dtype)
    assert_same(out, ref, dtype, "output")
    for name in ref_grads:
        assert_same(grads[name], ref_grads[name], dtype, name)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True])
def test_bimamba_triton_low_memory_is_exact(padded):
    """The lean layer function computes the same outputs as plain autograd
    over the same kernels (bf16 autocast: the recompute must run under the
    same autocast state) and the same gradients up to the order of atomic
    additions."""
    torch.manual_seed(0)
    module = BiMamba(64, d_state=16).cuda()
    x = torch.randn(2, 3000, 64, device="cuda")
    lengths = torch.tensor([1.0, 0.6], device="cuda") if padded else None
    results = {}
    for low_memory in (False, True):
        module.low_memory = low_memory
        results[low_memory] = run_layer(
            module, "triton", x, lengths, torch.bfloat16
        )
    (out_lean, grads_lean), (out_plain, grads_plain) = (
        results[True],
        results[False],
    )
    assert torch.equal(out_lean, out_plain)
    for name in grads_plain:
        torch.testing.assert_close(
            grads_lean[name], grads_plain[name], rtol=1e-2, atol=1e-3
        )


@pytest.mark.gpu
def test_bimamba_triton_trains_a_partly_frozen_layer():
    """Fine-tuning with a frozen input projection and an input without
    gradient still trains the rest (not mistaken for inference)."""
    torch.manual_seed(0)
    layer = BiMamba(32, d_state=8, backend="triton").cuda()
    layer.in_proj.weight.requires_grad_(False)
    layer(torch.randn(2, 50, 32, device="cuda")).square().sum().backward()
    assert layer.in_proj.weight.grad is None
    for name in ("conv1d.weight", "x_proj_b.weight", "A_log", "D_b"):
        grad = layer.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.gpu
def test_bimamba_triton_low_memory_keeps_less_for_backward():
    torch.manual_seed(0)
    layer = BiMamba(64, d_state=16, backend="triton").cuda()
    x = torch.randn(1, 20000, 64, device="cuda", requires_grad=True)
    assert layer.low_memory == "auto"  # 20000 frames: recomputes
    kept = {
        mode: memory_kept_for_backward(layer, x, mode)
        for mode in (False, "auto")
    }
    assert kept["auto"] < 0.35 * kept[False], kept


@pytest.mark.gpu
@pytest.mark.mamba_ssm
def test_stack_triton_equals_mamba_ssm_on_a_long_sequence():
    """Separation-like length (several chunk blocks), both GPU paths."""
    torch.manual_seed(0)
    stack = MambaStack(32, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(1, 9000, 32, device="cuda")
    out, grads = run_layer(stack, "triton", x, None, torch.float32)
    ref, ref_grads = run_layer(stack, "cuda", x, None, torch.float32)
    assert_same(out, ref, torch.float32, "output")
    for name in ref_grads:
        assert_same(grads[name], ref_grads[name], torch.float32, name)


@pytest.mark.parametrize(
    "time,lengths,d_inner,d_state",
    [
        (40, [40, 23], 8, 3),
        pytest.param(50, [50], 16, 4, marks=pytest.mark.gpu),
        pytest.param(700, [700, 311, 5], 24, 12, marks=pytest.mark.gpu),
        pytest.param(20000, [19999], 32, 16, marks=pytest.mark.gpu),
    ],
)
def test_inference_scan_equals_loop_reference(time, lengths, d_inner, d_state):
    """The state-in-registers inference kernel (odd channel counts, a
    d_state that is not a power of two, short and long chunks)."""
    inputs = scan_inputs(len(lengths), time, d_inner, d_state, lengths)
    with torch.no_grad():
        out = call(scan_ops.bidirectional_scan_inference, inputs, d_state, 0.5)
        if time > 5000:  # the loop reference is slow: compare with Triton's
            ref = call(scan_ops.bidirectional_scan, inputs, d_state, 0.5)
        else:
            ref = call(scan_ops.scan_reference, inputs, d_state, 0.5)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "padded", [pytest.param(False, marks=pytest.mark.gpu), True]
)
def test_bimamba_triton_inference_equals_torch_path(padded):
    torch.manual_seed(0)
    d_model, time = (8, 24) if INTERPRETED else (64, 333)
    module = BiMamba(d_model, d_state=4 if INTERPRETED else 16)
    module = module.to(DEVICE).eval()
    x = torch.randn(3, time, d_model, device=DEVICE)
    lengths = torch.tensor([1.0, 0.55, 0.8], device=DEVICE) if padded else None
    with torch.no_grad():
        module.backend = "triton"
        out = module(x, lengths)
        module.backend = "torch"
        ref = module(x, lengths)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cls", [BiMamba, Mamba])
def test_inference_keeps_derived_weights_until_a_parameter_changes(
    monkeypatch, cls
):
    """Inference on the Triton path derives -exp(A_log) and the (block-
    diagonal) projection weights once, not per call: a second call runs
    none of those operations, gives the same output as a layer that derives
    them every time, and an in-place parameter change (an optimizer step)
    is seen by the next call."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from speechbrain_mamba.utils import per_tensor_cache

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    layer = cls(8, d_state=4, backend="triton").to(DEVICE).eval()
    x = torch.randn(2, 20, 8, device=DEVICE)
    lengths = torch.tensor([1.0, 0.6], device=DEVICE)
    derived = ("exp", "block_diag", "cat", "constant_pad_nd")
    with torch.no_grad():
        first = layer(x, lengths)
        counter = CountOps()
        with counter:
            second = layer(x, lengths)
        assert not any(counter.counts[name] for name in derived)
        monkeypatch.setattr(
            per_tensor_cache,
            "cached_while_unchanged",
            lambda owner, key, tensors, derive: derive(),
        )
        monkeypatch.setattr(
            "speechbrain_mamba.nnet.mamba.cached_while_unchanged",
            per_tensor_cache.cached_while_unchanged,
        )
        counter = CountOps()
        with counter:
            plain = layer(x, lengths)
        assert counter.counts["exp"] >= 1
        assert torch.equal(first, second) and torch.equal(first, plain)
        monkeypatch.undo()
        layer.A_log.mul_(0.5)  # optimizer-like in-place steps
        layer.x_proj.weight.add_(0.1)
        changed = layer(x, lengths)
        layer.backend = "torch"
        torch.testing.assert_close(
            changed, layer(x, lengths), rtol=RTOL, atol=ATOL
        )
    assert not torch.allclose(changed, first)


@pytest.mark.parametrize("cls", [BiMamba, Mamba])
@pytest.mark.parametrize("change", ["data_assignment", "fused_adam_step"])
def test_inference_sees_parameter_changes_that_keep_the_version(cls, change):
    """Changes that leave a parameter's version counter as it was: a new
    ``.data`` (EMA code, ``module.to``) and a fused optimizer's step
    (between ``train()`` and ``eval()``, as in a training loop with
    validation): the next inference call on the Triton path uses the new
    values (the torch path as reference), not those derived before."""
    torch.manual_seed(0)
    layer = cls(8, d_state=4, backend="triton").to(DEVICE).eval()
    x = torch.randn(2, 20, 8, device=DEVICE)
    lengths = torch.tensor([1.0, 0.6], device=DEVICE)
    with torch.no_grad():
        first = layer(x, lengths)
    if change == "data_assignment":
        layer.A_log.data = layer.A_log.data + 2.0
        layer.x_proj.weight.data = layer.x_proj.weight.data * 10.0
    else:
        layer.train()
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.5, fused=True)
        layer(x, lengths).square().sum().backward()
        optimizer.step()
        layer.eval()
    with torch.no_grad():
        changed = layer(x, lengths)
        layer.backend = "torch"
        reference = layer(x, lengths)
    assert not torch.allclose(reference, first, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(changed, reference, rtol=RTOL, atol=ATOL)


def test_kept_values_do_not_block_swapping_parameters():
    """After an inference call, ``module.to`` with PyTorch's
    swap-on-conversion setting (``torch.utils.swap_tensors`` refuses
    tensors with weak references) still converts the layer, and the next
    call uses the converted weights."""
    torch.manual_seed(0)
    layer = BiMamba(8, d_state=4, backend="triton").to(DEVICE).eval()
    x = torch.randn(2, 20, 8, device=DEVICE)
    with torch.no_grad():
        layer(x)
        swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            layer.to(torch.float64).float()
        finally:
            torch.__future__.set_swap_module_params_on_conversion(swap)
        changed = layer(x)
        layer.backend = "torch"
        torch.testing.assert_close(changed, layer(x), rtol=RTOL, atol=ATOL)
