"""On an NVIDIA GPU with mamba_ssm: the CUDA kernels and the pure-PyTorch
path give the same outputs and gradients with the same weights, and our
state dicts load into mamba_ssm's own Mamba (and back) with strict=True.
Skipped on machines without a GPU or without mamba_ssm."""

import pytest
import torch

from speechbrain_mamba.nnet import BiMamba, CrossMamba, Mamba, MambaStack

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.mamba_ssm,
    pytest.mark.usefixtures("true_fp32"),
]

RTOL, ATOL = 6e-4, 2e-3


def randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("D") or "A_" in name or "A_log" in name:
                p.add_(0.3 * torch.randn_like(p))
    return module


def run(module, backend, inputs, lengths, dtype):
    module.zero_grad()
    for m in module.modules():
        if isinstance(m, Mamba):
            m.backend = backend
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        if isinstance(module, CrossMamba):
            out = module(inputs[0], inputs[1], lengths, lengths)
        else:
            out = module(inputs[0], lengths)
    weights = torch.linspace(-1, 1, out.numel(), device=out.device)
    (out.float().flatten() * weights).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in module.named_parameters()}
    grads.update({f"input{i}": t.grad.float() for i, t in enumerate(inputs)})
    return out.float().detach(), grads


def assert_close(a, b, dtype, what):
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=what)
    else:  # bf16: compare relative error norms
        rel = (a - b).norm() / b.norm().clamp_min(1e-6)
        assert rel < 3e-2, f"{what}: relative error {rel:.3g}"


@pytest.mark.parametrize("cls", [Mamba, BiMamba, CrossMamba, "stack"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_path_equals_torch_path(cls, padded, dtype):
    torch.manual_seed(0)
    if cls == "stack":
        module = MambaStack(64, num_layers=2, d_state=16)
    else:
        module = cls(64, d_state=16)
    module = randomise(module).cuda()
    inputs = [torch.randn(3, 200, 64, device="cuda")]
    if cls is CrossMamba:
        inputs.append(torch.randn(3, 200, 64, device="cuda"))
    lengths = torch.tensor([1.0, 0.55, 0.8], device="cuda") if padded else None
    out_cuda, g_cuda = run(module, "cuda", inputs, lengths, dtype)
    out_torch, g_torch = run(module, "torch", inputs, lengths, dtype)
    assert_close(out_cuda, out_torch, dtype, "output")
    for name in g_torch:
        assert_close(g_cuda[name], g_torch[name], dtype, name)


def test_state_dict_interchangeable_with_mamba_ssm():
    from mamba_ssm.modules.mamba_simple import Mamba as ReferenceMamba

    torch.manual_seed(0)
    ours = randomise(Mamba(64, d_state=16)).cuda()
    theirs = ReferenceMamba(64, d_state=16).cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 100, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=RTOL, atol=ATOL)
        ours.backend = "torch"
        torch.testing.assert_close(ours(x), theirs(x), rtol=RTOL, atol=ATOL)
    fresh = Mamba(64, d_state=16)
    fresh.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(x.cpu()), theirs(x).cpu(), rtol=RTOL, atol=ATOL
        )


def test_gpu_step_decoding_equals_full_forward():
    torch.manual_seed(0)
    layer = randomise(CrossMamba(64)).cuda().eval()
    memory, target = torch.randn(2, 30, 64).cuda(), torch.randn(2, 9, 64).cuda()
    with torch.no_grad():
        full = layer(target, memory)
        cache = layer.init_cache(2)
        steps = [
            layer(target[:, t : t + 1], memory, cache=cache) for t in range(9)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_gpu_step_equals_full_forward(dtype):
    """Decoding one frame at a time (mamba_ssm's fused state update on the
    GPU) gives the full-sequence outputs of a causal stack."""
    torch.manual_seed(0)
    stack = randomise(MambaStack(64, num_layers=2, bidirectional=False))
    stack = stack.cuda().eval()
    x = torch.randn(2, 40, 64, device="cuda")
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32),
    ):
        full = stack(x).float()
        cache = stack.init_cache(2)
        steps = [stack(x[:, t : t + 1], cache=cache) for t in range(40)]
    steps = torch.cat(steps, 1).float()
    if dtype == torch.float32:
        torch.testing.assert_close(steps, full, rtol=RTOL, atol=ATOL)
    else:
        rel = (steps - full).norm() / full.norm()
        assert rel < 3e-2, rel
