"""The Mamba stacks of VALL-M record their own CUDA graphs
(``cuda_graphs``, :mod:`speechbrain_mamba.utils.bucketed_graphs`).

On CPU: the bucket-padded call those graphs record gives the outputs and
gradients of the plain call, padded items included, for the AR stack
(unidirectional :class:`MambaStack`) and the NAR stack
(:class:`AdaptiveMambaStack`). On a GPU: training steps of the AR and NAR
models replayed from the stacks' graphs give the eager logits and
gradients, and inference replays give the eager logits.
"""

import copy

import pytest
import torch

from speechbrain_mamba.lobes.tts.ar import CodecAR
from speechbrain_mamba.lobes.tts.mamba_backbone import AdaptiveMambaStack
from speechbrain_mamba.lobes.tts.nar import CodecNAR
from speechbrain_mamba.nnet import MambaStack
from speechbrain_mamba.utils.bucketed_graphs import self_graphed_modules

TOL = dict(rtol=6e-4, atol=2e-3)


def grads_of(module, call, x, *args):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = call(x, *args)
    weights = torch.linspace(-1, 1, y.numel(), device=y.device)
    (y.float() * weights.view_as(y)).sum().backward()
    named = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, named


def assert_same(got, expected, **tol):
    torch.testing.assert_close(got[0], expected[0], **tol)
    torch.testing.assert_close(got[1], expected[1], **tol)
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, **tol, msg=name)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_stack_call_gives_the_plain_gradients_on_cpu(bidirectional):
    torch.manual_seed(0)
    stack = MambaStack(16, 2, bidirectional=bidirectional, d_state=4)
    x = torch.randn(3, 37, 16)  # bucket 40
    lengths = torch.tensor([1.0, 0.6, 0.3])
    graphs = stack.cuda_graph_calls(stack._run, 1, 1)
    plain = grads_of(stack, stack, x, lengths)
    padded = grads_of(stack, graphs.padded_call, x, lengths)
    assert_same(padded, plain, rtol=1e-5, atol=1e-6)


def test_padded_adaptive_stack_call_gives_the_plain_gradients_on_cpu():
    torch.manual_seed(0)
    stack = AdaptiveMambaStack(16, 2, num_conditions=3, d_state=4)
    x = torch.randn(2, 37, 16)
    condition = torch.tensor([0, 2])
    lengths = torch.tensor([1.0, 0.5])
    graphs = stack.cuda_graph_calls(stack._run, 1, 1)

    def plain(x, lengths, condition):
        return stack(x, condition, lengths=lengths)

    assert_same(
        grads_of(stack, graphs.padded_call, x, lengths, condition),
        grads_of(stack, plain, x, lengths, condition),
        rtol=1e-5,
        atol=1e-6,
    )


def test_graph_options_are_checked():
    with pytest.raises(ValueError, match="max_training_graphs"):
        MambaStack(8, 1, max_training_graphs=-1)
    with pytest.raises(ValueError, match="max_cuda_graphs"):
        AdaptiveMambaStack(8, 1, num_conditions=2, max_cuda_graphs=-1)


def tts_models(device):
    torch.manual_seed(0)
    ar = CodecAR(
        20,
        codebook_size=32,
        d_model=32,
        num_layers=2,
        backbone="mamba",
        text_encoder_layers=1,
        d_state=4,
        dropout=0.0,
    )
    nar = CodecNAR(
        20,
        codebook_size=32,
        num_codebooks=3,
        d_model=32,
        num_layers=2,
        backbone="mamba",
        d_state=4,
        dropout=0.0,
    )
    return ar.to(device), nar.to(device)


def batches(device):
    g = torch.Generator().manual_seed(1)
    out = []
    # 60 / 58 frames: AR sequences (text + BOS + audio) share buckets
    for frames, lens in [(60, [1.0, 0.7]), (58, [0.9, 1.0]), (60, [1.0, 1.0])]:
        phonemes = torch.randint(1, 20, (2, 12), generator=g)
        codes = torch.randint(0, 32, (2, 3, frames), generator=g)
        out.append(
            dict(
                phonemes=phonemes.to(device),
                codes=codes.to(device),
                code_lens=torch.tensor(lens).to(device),
                phoneme_lens=torch.tensor([1.0, 0.75]).to(device),
                prompt=torch.tensor([10, 20]).to(device),
                stage=torch.tensor([1, 2]).to(device),
            )
        )
    return out


def train_step(ar, nar, batch):
    for model in (ar, nar):
        model.zero_grad(set_to_none=True)
    ar_logits = ar(
        batch["phonemes"],
        batch["codes"][:, 0],
        batch["phoneme_lens"],
        batch["code_lens"],
    )
    nar_logits = nar(
        batch["phonemes"],
        batch["codes"],
        prompt_frames=batch["prompt"],
        stage=batch["stage"],
        phoneme_lens=batch["phoneme_lens"],
        code_lens=batch["code_lens"],
    )
    loss = sum(
        (
            y.float()
            * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)
        ).sum()
        for y in (ar_logits, nar_logits)
    )
    loss.backward()
    grads = {
        f"{kind}.{n}": p.grad.clone()
        for kind, model in (("ar", ar), ("nar", nar))
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    return ar_logits.detach(), nar_logits.detach(), grads


def paired_steps(graphed, eager):
    """Each batch from the same weights: an SGD step of the eager models,
    copied in place into the graphed ones (separate trainings would drift
    apart: the scan's backward adds with atomics in any order)."""
    results = []
    for batch in batches("cuda"):
        results.append((train_step(*graphed, batch), train_step(*eager, batch)))
        with torch.no_grad():
            for model, reference in zip(graphed, eager):
                for p, q in zip(reference.parameters(), model.parameters()):
                    if p.grad is not None:
                        p.sub_(1e-2 * p.grad)
                    q.copy_(p)
    return results


def set_graphs(model, flag):
    for module in self_graphed_modules(model):
        module.cuda_graphs = flag


@pytest.mark.gpu
def test_replayed_tts_training_equals_eager(true_fp32):
    ar, nar = tts_models("cuda")
    eager_ar, eager_nar = copy.deepcopy(ar), copy.deepcopy(nar)
    for model in (eager_ar, eager_nar):
        set_graphs(model, False)
    results = paired_steps((ar, nar), (eager_ar, eager_nar))
    assert ar.backbone.num_cuda_graphs >= 1
    assert nar.backbone.num_cuda_graphs >= 1
    assert ar.text_encoder.num_cuda_graphs >= 1
    for (ar_y, nar_y, grads), (ar_ref, nar_ref, grads_ref) in results:
        torch.testing.assert_close(ar_y, ar_ref, **TOL)
        torch.testing.assert_close(nar_y, nar_ref, **TOL)
        assert grads.keys() == grads_ref.keys()
        for name, grad in grads_ref.items():
            torch.testing.assert_close(grads[name], grad, **TOL, msg=name)


@pytest.mark.gpu
def test_replayed_tts_inference_equals_eager(true_fp32):
    ar, _ = tts_models("cuda")
    ar.eval()
    batch = batches("cuda")[0]
    with torch.no_grad():
        args = (
            batch["phonemes"],
            batch["codes"][:, 0],
            None,
            batch["code_lens"],
        )
        first, replayed = ar(*args), ar(*args)
        set_graphs(ar, False)
        eager = ar(*args)
    torch.testing.assert_close(first, eager, **TOL)
    torch.testing.assert_close(replayed, eager, **TOL)
