"""The fused residual add + norm kernel
(:mod:`speechbrain_mamba.ops.triton.add_norm`) against the plain path of a
pre-norm block (``residual + hidden``, ``.float()``, RMSNorm / LayerNorm):
outputs and every gradient (a gradient flowing into the new residual stream
too), for RMSNorm and LayerNorm, with and without a residual, fp32 or not
kept in fp32, bf16 branch outputs; what the kernel keeps for backward (the
residual stream it returns, nothing of [frames, d] size besides); blocks
and stacks with the kernel against the same weights on the plain path; the
dispatch rules. On CPU the kernel cases run under Triton's interpreter
(``TRITON_INTERPRET=1``), started by tests/test_triton_interpreted.py; the
larger cases, autocast and mamba_ssm's kernel as a second reference run on
a GPU."""

import pytest
import torch
from torch import nn

from speechbrain_mamba.nnet import MambaBlock, MambaStack, RMSNorm, blocks
from speechbrain_mamba.ops.backend import fused_add_norm
from speechbrain_mamba.ops.triton import add_norm as add_norm_ops
from speechbrain_mamba.ops.triton.add_norm import (
    add_norm,
    add_norm_reference,
    residual_dtype,
)

INTERPRETED = add_norm_ops.interpreted() and add_norm_ops.available()
#: Where the kernels run: the GPU, or the CPU under Triton's interpreter.
DEVICE = "cpu" if INTERPRETED else "cuda"
#: The backend that takes the fused kernel ("auto" takes it on CUDA only).
FUSED = "triton" if INTERPRETED else "auto"

RTOL, ATOL = 6e-4, 2e-3
#: One bf16 rounding step apart (gradients of bf16 tensors).
BF16_RTOL, BF16_ATOL = 1e-2, 1e-2

BF16, FP32 = torch.bfloat16, torch.float32
#: (hidden dtype, residual dtype or None, residual_in_fp32)
STREAMS = [
    (FP32, None, True),
    (FP32, FP32, True),
    (FP32, FP32, False),
    (BF16, None, False),
    (BF16, FP32, True),  # a block under autocast: bf16 mixer output
    (BF16, BF16, False),
]


def make_inputs(shape, norm, hidden_dtype, res_dtype, device=DEVICE):
    """Leaf tensors (hidden, weight, bias, residual) that need gradients."""
    features = shape[-1]
    hidden = torch.randn(shape, device=device).to(hidden_dtype)
    weight = 1 + 0.2 * torch.randn(features, device=device)
    bias = 0.2 * torch.randn(features, device=device)
    residual = None
    if res_dtype is not None:
        residual = (2 * torch.randn(shape, device=device)).to(res_dtype)
    tensors = [hidden, weight, bias if norm == "layernorm" else None, residual]
    return [None if t is None else t.requires_grad_() for t in tensors]


def outputs_and_grads(function, inputs, eps, residual_in_fp32, norm, seed):
    """Both outputs and the gradients of a loss that uses both."""
    hidden, weight, bias, residual = inputs
    normed, residual_out = function(
        hidden,
        weight,
        bias,
        residual,
        eps,
        residual_in_fp32,
        norm == "rmsnorm",
    )
    generator = torch.Generator(device=normed.device).manual_seed(seed)
    d_normed = torch.randn(
        normed.shape, generator=generator, device=normed.device
    )
    d_residual = torch.randn(
        normed.shape, generator=generator, device=normed.device
    )
    loss = (normed.float() * d_normed).sum()
    loss = loss + (residual_out.float() * d_residual).sum()
    leaves = [t for t in inputs if t is not None]
    return normed, residual_out, torch.autograd.grad(loss, leaves)


def assert_close(actual, expected, what):
    if expected.dtype == BF16:
        rtol, atol = BF16_RTOL, BF16_ATOL
    else:
        rtol, atol = RTOL, ATOL
    assert actual.dtype == expected.dtype, what
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=rtol, atol=atol, msg=what
    )


def check_against_reference(shape, norm, stream, eps=1e-5):
    hidden_dtype, res_dtype, in_fp32 = stream
    inputs = make_inputs(shape, norm, hidden_dtype, res_dtype)
    fused = outputs_and_grads(add_norm, inputs, eps, in_fp32, norm, 3)
    plain = outputs_and_grads(add_norm_reference, inputs, eps, in_fp32, norm, 3)
    assert fused[1].dtype == plain[1].dtype
    assert torch.equal(fused[1], plain[1])  # the same fp32 sum, stored
    assert_close(fused[0], plain[0], "normed")
    names = [
        name
        for name, t in zip(["hidden", "weight", "bias", "residual"], inputs)
        if t is not None
    ]
    for name, actual, expected in zip(names, fused[2], plain[2]):
        assert_close(actual, expected, f"gradient of {name}")
    return inputs, fused, plain


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(2, 7, 40), (3, 64)])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("stream", STREAMS)
def test_add_norm_equals_plain_path(shape, norm, stream):
    check_against_reference(shape, norm, stream)


@pytest.mark.triton
def test_add_norm_takes_strided_weights():
    """A strided weight / bias (a view) gives the plain path's outputs and
    gradients (the kernels read them with unit stride)."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 24, device=DEVICE, requires_grad=True)
    base_w = (1 + torch.randn(48, device=DEVICE)).requires_grad_()
    base_b = torch.randn(48, device=DEVICE, requires_grad=True)
    results = []
    for function in (add_norm, add_norm_reference):
        normed, _ = function(
            hidden, base_w[::2], base_b[1::2], is_rms_norm=False
        )
        grads = torch.autograd.grad(
            (normed * torch.linspace(-1, 1, 24, device=DEVICE)).sum(),
            (hidden, base_w, base_b),
        )
        results.append((normed, *grads))
    for name, actual, expected in zip(
        ["normed", "hidden", "weight", "bias"], *results
    ):
        assert_close(actual, expected, name)


@pytest.mark.triton
def test_add_norm_writes_the_requested_dtype():
    """Under autocast a block writes the mixer's dtype directly: the plain
    output rounded once (at most one bf16 step apart)."""
    hidden, weight, _, residual = make_inputs((2, 5, 48), "rmsnorm", BF16, FP32)
    normed, _ = add_norm(hidden, weight, residual=residual, out_dtype=BF16)
    expected, _ = add_norm_reference(hidden, weight, residual=residual)
    assert normed.dtype == BF16
    assert_close(normed, expected.to(BF16), "normed")


@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_add_norm_keeps_only_the_residual_stream(norm):
    """For backward the kernel keeps the residual stream it returns (same
    storage), its per-row statistics and the norm's parameters; the plain
    RMSNorm keeps an fp32 [rows, d] product besides."""
    shape = (2, 9, 40)
    inputs = make_inputs(shape, norm, BF16, FP32)
    rows, features = 18, 40

    def saved(function):
        packed = []

        def pack(tensor):
            packed.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            normed, residual_out = function(
                *inputs, 1e-5, True, norm == "rmsnorm"
            )
        return packed, residual_out

    packed, residual_out = saved(add_norm)
    big = [t for t in packed if t.numel() >= rows * features]
    assert big and all(
        t.untyped_storage().data_ptr()
        == residual_out.untyped_storage().data_ptr()
        for t in big
    )
    kept = sum(t.numel() * t.element_size() for t in packed)
    parameters = sum(t.numel() * 4 for t in inputs[1:3] if t is not None)
    per_row = 2 * rows * 4  # rstd (and the mean of LayerNorm), fp32
    assert kept <= residual_out.numel() * 4 + per_row + parameters
    if norm == "rmsnorm":  # PyTorch's layer_norm keeps its input alone
        plain, _ = saved(add_norm_reference)
        plain_big = [t for t in plain if t.numel() >= rows * features]
        assert len({t.untyped_storage().data_ptr() for t in plain_big}) >= 2


def _count_fused(monkeypatch):
    """Counts the block calls that take the fused kernel."""
    calls = []
    dispatch = blocks.fused_add_norm

    def counting(*args):
        function = dispatch(*args)
        calls.append(function is not None)
        return function

    monkeypatch.setattr(blocks, "fused_add_norm", counting)
    return calls


def _stack_outputs_and_grads(stack, x, lengths, autocast):
    stack.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cuda", BF16, enabled=autocast):
        y = stack(x, lengths)
    generator = torch.Generator(device=x.device).manual_seed(5)
    weights = torch.randn(y.shape, generator=generator, device=x.device)
    (y.float() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in stack.named_parameters()}
    return y.detach(), x.grad, grads


def check_stack(monkeypatch, stack, x, lengths, autocast=False, tol=None):
    calls = _count_fused(monkeypatch)
    fused = _stack_outputs_and_grads(stack, x, lengths, autocast)
    assert calls and all(calls)  # every block and the final norm
    monkeypatch.setattr(blocks, "fused_add_norm", lambda *args: None)
    plain = _stack_outputs_and_grads(stack, x, lengths, autocast)
    rtol, atol = tol or (RTOL, ATOL)
    pairs = [(fused[0], plain[0], "output"), (fused[1], plain[1], "input")]
    pairs += [(fused[2][name], grad, name) for name, grad in plain[2].items()]
    for actual, expected, name in pairs:
        error = (actual.float() - expected.float()).abs().max().item()
        assert error <= atol + rtol * expected.abs().max().item(), name


@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_stack_with_fused_add_norm_equals_plain_path(monkeypatch, norm):
    """Two unidirectional blocks and the final norm (padded item included):
    the same outputs and gradients as the same weights on the plain add +
    norm. The mixers run on the PyTorch path, which takes the fused add +
    norm only in this test (the Mamba kernels take long under the
    interpreter; the GPU tests below run them at recipe sizes)."""
    torch.manual_seed(0)
    stack = MambaStack(
        16, 2, bidirectional=False, norm=norm, d_state=4, backend="torch"
    ).to(DEVICE)
    x = torch.randn(2, 9, 16, device=DEVICE)
    monkeypatch.setattr(
        blocks,
        "fused_add_norm",
        lambda backend, *args: fused_add_norm(FUSED, *args),
    )
    check_stack(monkeypatch, stack, x, torch.tensor([1.0, 0.6]))


def test_reference_is_the_blocks_plain_path():
    """add_norm_reference computes what the modules of a block compute."""
    hidden = torch.randn(2, 5, 12, dtype=BF16)
    residual = torch.randn(2, 5, 12)
    for norm in (RMSNorm(12), nn.LayerNorm(12)):
        with torch.no_grad():
            norm.weight.normal_()
        stream = (residual + hidden).float()
        expected = norm(stream.to(norm.weight.dtype))
        normed, residual_out = add_norm_reference(
            hidden,
            norm.weight,
            getattr(norm, "bias", None),
            residual,
            norm.eps,
            is_rms_norm=isinstance(norm, RMSNorm),
        )
        assert torch.equal(residual_out, stream)
        assert torch.equal(normed, expected)
    assert residual_dtype(hidden, None, False) == BF16


def test_dispatch_rules():
    """The fused kernel never takes CPU tensors with "auto", nor backend
    "torch", nor dtypes or norms it cannot compute."""
    hidden, weight = torch.randn(1, 4, 8), torch.ones(8)
    assert fused_add_norm("auto", hidden, None, weight) is None
    assert fused_add_norm("torch", hidden, None, weight) is None
    assert fused_add_norm("triton", hidden, None, None) is None
    if INTERPRETED:
        assert fused_add_norm("triton", hidden, hidden, weight) is add_norm
    else:
        assert fused_add_norm("triton", hidden, None, weight) is None
    if torch.cuda.is_available() and add_norm_ops.available():
        on_gpu = hidden.cuda()
        assert fused_add_norm("auto", on_gpu, None, weight.cuda()) is add_norm
        assert fused_add_norm("torch", on_gpu, None, weight.cuda()) is None
        double = on_gpu.double()
        assert fused_add_norm("auto", double, None, weight.cuda()) is None


def test_cpu_block_keeps_the_plain_path(monkeypatch):
    calls = _count_fused(monkeypatch)
    block = MambaBlock(8, bidirectional=True, d_state=4)
    block(torch.randn(1, 5, 8))
    assert calls == [False]


@pytest.mark.triton
def test_add_norm_rejects_bad_inputs():
    hidden = torch.randn(2, 3, 8, device=DEVICE)
    with pytest.raises(ValueError, match="do not match"):
        add_norm(hidden, torch.ones(7, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        add_norm(hidden, torch.ones(8, device=DEVICE), residual=hidden[:1])
    with pytest.raises(ValueError, match="takes"):
        add_norm(hidden.double(), torch.ones(8, device=DEVICE))


# GPU: realistic sizes, autocast, blocks of both kinds, mamba_ssm


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("stream", [STREAMS[1], STREAMS[4], STREAMS[5]])
def test_add_norm_equals_plain_path_at_recipe_size(true_fp32, norm, stream):
    check_against_reference((2, 3000, 256), norm, stream)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_add_norm_under_autocast_gives_the_mixer_its_input(norm):
    """A block under bf16 autocast: the kernel writes bf16, the plain path
    fp32 that the mixer's in_proj rounds to bf16: the same numbers."""
    hidden, weight, bias, residual = make_inputs(
        (2, 3000, 256), norm, BF16, FP32
    )
    proj = torch.randn(512, 256, device="cuda") / 16
    with torch.autocast("cuda", BF16):
        normed, residual_out = add_norm(
            hidden, weight, bias, residual, is_rms_norm=norm == "rmsnorm",
            out_dtype=BF16,
        )  # fmt: skip
        expected, _ = add_norm_reference(
            hidden, weight, bias, residual, is_rms_norm=norm == "rmsnorm"
        )
        fused_in = torch.nn.functional.linear(normed, proj)
        plain_in = torch.nn.functional.linear(expected, proj)
    assert normed.dtype == fused_in.dtype == plain_in.dtype == BF16
    mismatch = (normed != expected.to(BF16)).float().mean().item()
    assert mismatch < 1e-3  # a few values on a rounding boundary
    torch.testing.assert_close(
        fused_in.float(), plain_in.float(), rtol=BF16_RTOL, atol=BF16_ATOL
    )


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_gpu_stack_with_fused_add_norm_equals_plain_path(
    monkeypatch, true_fp32, bidirectional, norm
):
    torch.manual_seed(0)
    stack = MambaStack(
        256, 3, bidirectional=bidirectional, norm=norm, d_state=16
    ).cuda()
    x = torch.randn(2, 3000, 256, device="cuda")
    lengths = torch.tensor([1.0, 0.7], device="cuda")
    check_stack(monkeypatch, stack, x, lengths)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("bidirectional", [True, False])
def test_gpu_stack_under_autocast_equals_plain_path(monkeypatch, bidirectional):
    torch.manual_seed(0)
    stack = MambaStack(256, 3, bidirectional=bidirectional, d_state=16).cuda()
    x = torch.randn(2, 3000, 256, device="cuda")
    check_stack(monkeypatch, stack, x, None, autocast=True, tol=(2e-2, 2e-2))


@pytest.mark.gpu
@pytest.mark.triton
def test_gpu_block_keeps_less_for_backward(monkeypatch):
    """One BiMamba block under bf16 autocast, [2, 3000, 256]: the fused
    add + norm keeps at least one fp32 [frames, d] tensor less (the norm's
    product for the weight gradient; the mixer's input is bf16 in both)."""

    def kept_bytes():
        packed = []

        def pack(tensor):
            packed.append(tensor)
            return tensor

        x = torch.randn(2, 3000, 256, device="cuda", requires_grad=True)
        residual = torch.randn(2, 3000, 256, device="cuda")
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cuda", BF16),
        ):
            block(x.to(BF16), residual)
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in packed
        }
        return sum(storages.values())

    torch.manual_seed(0)
    block = MambaBlock(256, bidirectional=True, d_state=16).cuda()
    fused = kept_bytes()
    monkeypatch.setattr(blocks, "fused_add_norm", lambda *args: None)
    plain = kept_bytes()
    one_fp32_tensor = 2 * 3000 * 256 * 4
    assert plain - fused >= one_fp32_tensor


@pytest.mark.mamba_ssm
@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_add_norm_equals_mamba_ssm_kernel(norm):
    from mamba_ssm.ops.triton.layer_norm import layer_norm_fn

    inputs = make_inputs((2, 3000, 256), norm, FP32, FP32, device="cuda")
    hidden, weight, bias, residual = inputs
    fused = outputs_and_grads(add_norm, inputs, 1e-5, True, norm, 4)

    def reference(hidden, weight, bias, residual, eps, in_fp32, is_rms):
        return layer_norm_fn(
            hidden, weight, bias, residual=residual, eps=eps, prenorm=True,
            residual_in_fp32=in_fp32, is_rms_norm=is_rms,
        )  # fmt: skip

    other = outputs_and_grads(reference, inputs, 1e-5, True, norm, 4)
    assert_close(fused[0], other[0], "normed")
    assert_close(fused[1], other[1], "residual")
    for actual, expected in zip(fused[2], other[2]):
        assert_close(actual, expected, "gradient")
