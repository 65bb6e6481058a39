"""Mamba-TasNet's mask network records its own training graphs
(:mod:`speechbrain_mamba.utils.bucketed_graphs`).

On CPU: the bucket-padded call that the graphs record gives the gradients
of the plain call, padded items included. On a GPU: training steps
replayed from the mask network's own graphs give the eager outputs and
gradients, lengths of one bucket share a graph, and SpeechBrain's
``Brain.fit_batch`` (the separation recipe's Brain, no option set) trains
to the same weights as the eager mask network.
"""

import copy

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.dual_path import Decoder, Encoder
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.separation.brain import SeparationBrain

TOL = dict(rtol=6e-4, atol=2e-3)


def masknet(**kwargs):
    torch.manual_seed(0)
    return MambaTasNetMaskNet(16, num_layers=2, d_state=4, **kwargs)


def weighted_loss(masks):
    weights = torch.linspace(-1, 1, masks.numel(), device=masks.device)
    return (masks.float() * weights.view_as(masks)).sum()


def gradients(net, call, x, lengths):
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    masks = call(x, lengths)
    weighted_loss(masks).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    return masks.detach(), x.grad, grads


@pytest.mark.parametrize("time", [17, 40, 129])
def test_bucket_padded_call_gives_the_plain_gradients_on_cpu(time):
    net = masknet()
    torch.manual_seed(1)
    x = torch.randn(3, 16, time)
    lengths = torch.tensor([1.0, 0.7, 0.4])
    plain = gradients(net, net, x, lengths)
    padded = gradients(net, net.bucketed_forward, x, lengths)
    torch.testing.assert_close(padded[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded[1], plain[1], rtol=1e-5, atol=1e-6)
    for name, grad in plain[2].items():
        torch.testing.assert_close(
            padded[2][name], grad, rtol=1e-5, atol=1e-6, msg=name
        )


def paired_steps(eager, graphed, inputs, dtype=torch.float32):
    """Masks, input and weight gradients of both nets on each input, from
    the same weights: an SGD step of the eager net, copied in place into
    the graphed one (replays read the weights by address), between
    inputs. (Separate trainings would drift apart: the scan's backward
    adds with atomics in any order, and training amplifies it.)"""
    results = []
    for x, lengths in inputs:
        with torch.autocast(
            "cuda", dtype=dtype, enabled=dtype != torch.float32
        ):
            results.append(
                (
                    gradients(graphed, graphed, x, lengths),
                    gradients(eager, eager, x, lengths),
                )
            )
        with torch.no_grad():
            for p, q in zip(eager.parameters(), graphed.parameters()):
                p.sub_(1e-3 * p.grad)
                q.copy_(p)
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replayed_training_steps_equal_eager_ones(true_fp32, dtype):
    eager = masknet(cuda_graphs=False).cuda().train()
    graphed = copy.deepcopy(eager)
    graphed.cuda_graphs = True
    torch.manual_seed(2)
    # 400 and 390 frames share the bucket 416; 300 is another one
    inputs = [
        (torch.randn(2, 16, t, device="cuda"), torch.tensor(r, device="cuda"))
        for t, r in [
            (400, [1.0, 0.6]),
            (390, [0.8, 1.0]),
            (400, [1.0, 1.0]),
            (300, [1.0, 0.5]),
            (390, [1.0, 0.9]),
        ]
    ]
    results = paired_steps(eager, graphed, inputs, dtype)
    assert graphed.num_cuda_graphs == 2
    # bf16 autocast: the weight gradients come from bf16 activations
    tol = TOL if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for got, expected in results:
        torch.testing.assert_close(got[0], expected[0], **tol)
        torch.testing.assert_close(got[1], expected[1], **tol)
        for name, grad in expected[2].items():
            torch.testing.assert_close(got[2][name], grad, **tol, msg=name)


@pytest.mark.gpu
def test_replayed_gradients_accumulate_into_the_same_grad(true_fp32):
    """The mask network's own graphs over micro-batches (two per
    optimizer step, zeroed in place or set to None between steps, as
    SpeechBrain's Brain does): eager gradients, and every ``.grad`` is
    one tensor at one address for the whole training (the graphs' shared
    buffer, no copy per step)."""
    eager = masknet(cuda_graphs=False).cuda().train()
    graphed = copy.deepcopy(eager)
    graphed.cuda_graphs = True
    torch.manual_seed(3)
    first = None  # name: (tensor, address) of .grad after the first step
    for step, zero in enumerate(["none", None, "zero", None, "none", None]):
        x = torch.randn(2, 16, 400, device="cuda")
        lengths = torch.tensor([1.0, 0.7], device="cuda")
        for net in (eager, graphed):
            if zero is not None:
                net.zero_grad(set_to_none=zero == "none")
            weighted_loss(net(x, lengths)).backward()
        for (name, p), p_ref in zip(
            graphed.named_parameters(), eager.parameters()
        ):
            torch.testing.assert_close(
                p.grad, p_ref.grad, **TOL, msg=f"step {step}: {name}"
            )
        grads = {n: p.grad for n, p in graphed.named_parameters()}
        if first is None:
            first = {n: (g, g.data_ptr()) for n, g in grads.items()}
        for name, (grad, address) in first.items():
            assert grads[name] is grad and grad.data_ptr() == address, name
    assert graphed.num_cuda_graphs == 1


@pytest.mark.gpu
def test_stochastic_depth_trains_eagerly():
    net = masknet(drop_path=0.1).cuda().train()
    x = torch.randn(1, 16, 100, device="cuda", requires_grad=True)
    net(x).sum().backward()
    assert net.num_cuda_graphs == 0
    assert x.grad is not None


def separation_brain(graphs):
    torch.manual_seed(0)
    modules = {
        "encoder": Encoder(kernel_size=16, out_channels=16),
        "masknet": masknet(cuda_graphs=graphs),
        "decoder": Decoder(16, 1, kernel_size=16, stride=8, bias=False),
    }
    brain = SeparationBrain(
        modules,
        opt_class=lambda params: torch.optim.Adam(params, 1e-4),
        hparams={
            "num_spks": 2,
            "sample_rate": 8000,
            "loss": get_si_snr_with_pitwrapper,
            "clip_grad_norm": 5,
        },
        run_opts={"device": "cuda"},
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0
    return brain


def variable_length_batches():
    g = torch.Generator().manual_seed(0)
    batches = []
    for lengths in [(3200, 2400), (3000, 3100), (3200, 3200), (1600, 1200)]:
        items = []
        for i, length in enumerate(lengths):
            s1, s2 = torch.randn(2, length, generator=g)
            items.append(
                {"id": f"{i}", "mix_sig": s1 + s2, "s1_sig": s1, "s2_sig": s2}
            )
        batches.append(PaddedBatch(items))
    return batches


@pytest.mark.gpu
def test_speechbrain_fit_batch_trains_through_the_masknets_graphs(true_fp32):
    """SpeechBrain's own training step, nothing set: the mask network
    replays its graphs and the weights follow the eager ones."""
    eager = separation_brain(graphs=False)
    graphed = separation_brain(graphs=True)
    for batch in variable_length_batches():
        expected = float(eager.fit_batch(batch))
        got = float(graphed.fit_batch(batch))
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert graphed.modules.masknet.num_cuda_graphs == 2  # 401 and 201 frames
    for (name, p), p_ref in zip(
        graphed.modules.named_parameters(), eager.modules.parameters()
    ):
        torch.testing.assert_close(p, p_ref, **TOL, msg=name)


def test_data_parallel_replicas_call_plainly():
    net = masknet()
    net.cuda_graph_calls(net._masks, 2, 3)  # as after a first GPU call
    replica = net._replicate_for_data_parallel()
    assert replica._graphed is None and not replica.cuda_graphs
    assert net._graphed is not None and net.cuda_graphs


def test_backward_hooks_make_calls_plain():
    from speechbrain_mamba.utils.graphed_inference import forward_hooks_watch

    net = masknet()
    assert not forward_hooks_watch(net)
    handle = net.mask_conv1x1.register_full_backward_hook(lambda *a: None)
    assert forward_hooks_watch(net)
    handle.remove()
    assert not forward_hooks_watch(net)


@pytest.mark.parametrize(
    "module",
    [
        "speechbrain_mamba.utils.bucketed_graphs",
        "speechbrain_mamba.utils.graphed_training",
        "speechbrain_mamba.utils.graphed_inference",
    ],
)
def test_graph_modules_import_first_in_a_fresh_interpreter(module):
    """The Mamba stacks import bucketed_graphs: importing it first must not
    run into that cycle."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
