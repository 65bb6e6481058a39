"""The fast scans equal the plain sequential recurrence (outputs, final
state and gradients), for every path that exists on this machine."""

import pytest
import torch

from speechbrain_mamba.ops import numba_scan
from speechbrain_mamba.ops.backend import use_numba_kernels
from speechbrain_mamba.ops.selective_scan import (
    selective_scan_reference,
    selective_scan_torch,
)

RTOL, ATOL = 6e-4, 2e-3


def make_operands(batch=2, d_inner=24, d_state=8, time=130, groups=1):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, d_inner, time, generator=g)
    delta = torch.randn(batch, d_inner, time, generator=g) - 1.0
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g) * 0.5)
    shape = (
        (batch, d_state, time)
        if groups == 1
        else (batch, groups, d_state, time)
    )
    B = torch.randn(*shape, generator=g)
    C = torch.randn(*shape, generator=g)
    D = torch.randn(d_inner, generator=g)
    z = torch.randn(batch, d_inner, time, generator=g)
    bias = torch.randn(d_inner, generator=g) * 0.5
    h0 = torch.randn(batch, d_inner, d_state, generator=g)
    return u, delta, A, B, C, D, z, bias, h0


@pytest.mark.parametrize("block_size", [None, 1, 7, 64, 1000])
@pytest.mark.parametrize("groups", [1, 2])
def test_torch_scan_equals_reference(block_size, groups):
    u, delta, A, B, C, D, z, bias, h0 = make_operands(groups=groups)
    ref, ref_state = selective_scan_reference(
        u, delta, A, B, C, D, z, bias, True, h0, return_last_state=True
    )
    out, state = selective_scan_torch(
        u, delta, A, B, C, D, z, bias, True, h0, True, block_size=block_size
    )
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(state, ref_state, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("recompute_blocks", [True, False])
def test_torch_scan_gradients_equal_reference(recompute_blocks):
    operands = [t.requires_grad_() for t in make_operands(time=90)]
    u, delta, A, B, C, D, z, bias, h0 = operands
    weights = torch.randn(2, 24, 90)

    def grads(scan, **kwargs):
        for t in operands:
            t.grad = None
        y, h = scan(u, delta, A, B, C, D, z, bias, True, h0, True, **kwargs)
        ((y * weights).sum() + h.pow(2).sum()).backward()
        return [t.grad.clone() for t in operands]

    expected = grads(selective_scan_reference)
    got = grads(
        selective_scan_torch,
        block_size=32,
        recompute_blocks=recompute_blocks,
    )
    names = "u delta A B C D z bias h0".split()
    for name, g_ref, g in zip(names, expected, got):
        torch.testing.assert_close(g, g_ref, rtol=RTOL, atol=ATOL, msg=name)


def test_recomputed_blocks_keep_a_fraction_of_the_activations():
    """With gradients, each block keeps only its inputs for the backward
    pass (the blocks' intermediate states are computed again there)."""
    operands = [t.requires_grad_() for t in make_operands(time=400)]

    def saved_bytes(recompute_blocks):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selective_scan_torch(
                *operands[:8],
                True,
                operands[8],
                block_size=32,
                recompute_blocks=recompute_blocks,
            )
        return sum(sizes)

    kept, everything = saved_bytes(True), saved_bytes(False)
    assert kept < everything / 4, (kept, everything)


def test_no_softplus_no_gate_no_skip():
    u, delta, A, B, C, _, _, _, _ = make_operands(time=40)
    delta = delta.abs()
    ref = selective_scan_reference(u, delta, A, B, C)
    torch.testing.assert_close(
        selective_scan_torch(u, delta, A, B, C), ref, rtol=RTOL, atol=ATOL
    )


@pytest.mark.skipif(not numba_scan.available(), reason="numba not installed")
@pytest.mark.parametrize("d_inner,groups", [(24, 1), (32, 2), (16, 1), (5, 1)])
def test_numba_scan_equals_reference(d_inner, groups):
    u, delta, A, B, C, D, z, bias, h0 = make_operands(
        d_inner=d_inner, groups=groups, time=300
    )
    ref, ref_state = selective_scan_reference(
        u, delta, A, B, C, D, z, bias, True, h0, return_last_state=True
    )
    out, state = numba_scan.selective_scan_numba(
        u, delta, A, B, C, D, z, bias, True, h0, return_last_state=True
    )
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(state, ref_state, rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(not numba_scan.available(), reason="numba not installed")
def test_numba_exp_handles_extreme_decays():
    # huge steps underflow the decay to 0, tiny ones keep it at 1
    u, delta, A, B, C, D, z, bias, h0 = make_operands(time=50)
    delta = torch.cat([delta[..., :25] + 12.0, delta[..., 25:] - 30.0], -1)
    ref = selective_scan_reference(u, delta, A, B, C, D, z, None, True, h0)
    out = numba_scan.selective_scan_numba(
        u, delta, A, B, C, D, z, None, True, h0
    )
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_numba_only_without_gradients_on_cpu(monkeypatch):
    """The dispatch (ops.backend) sends a CPU scan to numba only when no
    gradient is needed, and never once numba is switched off."""
    x = torch.zeros(1, 4, 8)
    assert not use_numba_kernels(x, needs_grad=True)
    assert use_numba_kernels(x, needs_grad=False) == numba_scan.available()
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")
    assert not use_numba_kernels(x, needs_grad=False)


def test_numba_can_be_disabled(monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")
    assert not numba_scan.available()
    with pytest.raises(ImportError, match="numba"):
        numba_scan.scan_channels_last(
            torch.zeros(1, 2, 16),
            torch.zeros(1, 2, 16),
            -torch.ones(16, 2),
            torch.zeros(1, 2, 2),
            torch.zeros(1, 2, 2),
        )


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(A=torch.zeros(5, 8)), "A must be"),
        (dict(B=torch.zeros(2, 3, 130)), "B must be"),
        (dict(u=torch.zeros(2, 24)), "u and delta"),
    ],
)
def test_scan_shape_errors(bad, match):
    u, delta, A, B, C, *_ = make_operands()
    args = dict(u=u, delta=delta, A=A, B=B, C=C)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan_torch(**args)
