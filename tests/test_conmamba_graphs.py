"""The ConMamba encoder records its own CUDA graphs (``cuda_graphs``,
:mod:`speechbrain_mamba.utils.bucketed_graphs`).

On CPU: the bucket-padded call those graphs record (the key padding mask
turned into lengths, the time axis padded, the mask rebuilt inside) gives
the outputs and gradients of the plain call for a padded batch; the
options are checked and the cases that must stay eager are. On a GPU:
training steps replayed from the encoder's graphs give the eager outputs
and gradients, step after step with optimizer updates; inference replays
give the eager outputs; dropout draws new numbers at every replay.
"""

import copy

import pytest
import torch

from speechbrain_mamba.lobes.asr.conmamba import (
    ConMambaEncoder,
    key_padding_mask_to_lengths,
)

TOL = dict(rtol=6e-4, atol=2e-3)


def encoder(dropout=0.0, **kwargs):
    torch.manual_seed(0)
    return ConMambaEncoder(
        2,
        32,
        64,
        kernel_size=5,
        dropout=dropout,
        mamba_config={"d_state": 4},
        **kwargs,
    )


def padding_mask(frames, time, device="cpu"):
    positions = torch.arange(time, device=device)
    return positions[None, :] >= torch.tensor(frames, device=device)[:, None]


def plain_call(enc, x, mask):
    """The eager forward, graphs off."""
    enc.cuda_graphs = False
    try:
        return enc(x, src_key_padding_mask=mask)[0]
    finally:
        enc.cuda_graphs = True


def padded_call(enc, x, mask):
    """What the graphs record: the bucket-padded call."""
    graphs = enc.cuda_graph_calls(enc._encode, 1, 1)
    return graphs.padded_call(x, key_padding_mask_to_lengths(mask))


def grads_of(enc, call, x, mask):
    enc.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = call(enc, x, mask)
    weights = torch.linspace(-1, 1, y.numel(), device=y.device)
    (y.float() * weights.view_as(y)).sum().backward()
    named = {n: p.grad.clone() for n, p in enc.named_parameters()}
    return y.detach(), x.grad, named


def assert_same(got, expected, **tol):
    torch.testing.assert_close(got[0], expected[0], **tol)
    torch.testing.assert_close(got[1], expected[1], **tol)
    assert got[2].keys() == expected[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, **tol, msg=name)


@pytest.mark.parametrize("frames", [[37, 30, 11], None])
def test_padded_call_gives_the_plain_outputs_and_gradients(frames):
    enc = encoder().train()
    x = torch.randn(3, 37, 32)  # 37 is no bucket: padded to 40
    mask = None if frames is None else padding_mask(frames, 37)
    assert enc.cuda_graph_calls(enc._encode, 1, 1).mode(x) is None  # CPU
    plain = grads_of(enc, plain_call, x, mask)
    got = grads_of(enc, padded_call, x, mask)
    assert_same(got, plain, rtol=1e-5, atol=1e-6)
    if frames is not None:  # padded frames are zero, items are not
        assert plain[0][2, 11:].abs().max() == 0
        assert plain[0][2, :11].abs().sum() > 0
    # the forward with graphs on (plain on CPU) is the plain call too
    torch.testing.assert_close(
        enc(x, src_key_padding_mask=mask)[0], plain[0], rtol=0, atol=0
    )


def test_graph_options_are_checked():
    with pytest.raises(ValueError, match="max_cuda_graphs"):
        encoder(max_cuda_graphs=-1)
    with pytest.raises(ValueError, match="max_training_graphs"):
        encoder(max_training_graphs=-1)
    enc = encoder(max_cuda_graphs=3, max_training_graphs=2)
    graphs = enc.cuda_graph_calls(enc._encode, 1, 1)
    assert (graphs.max_graphs, graphs.max_training_graphs) == (3, 2)


def test_mask_of_another_shape_is_refused():
    enc = encoder()
    with pytest.raises(ValueError, match=r"src_key_padding_mask .*\(2, 9\)"):
        enc(torch.randn(2, 9, 32), src_key_padding_mask=padding_mask([8], 9))


def test_eager_cases():
    assert encoder().graphs_apply()
    assert not encoder(cuda_graphs=False).graphs_apply()
    assert not encoder(output_hidden_states=True).graphs_apply()
    layerdrop = encoder(layerdrop_prob=0.5)
    assert not layerdrop.train().graphs_apply()
    assert layerdrop.eval().graphs_apply()


def test_copies_leave_the_graphs_out():
    enc = encoder()
    enc(torch.randn(1, 5, 32))
    assert enc._graphed is not None
    copied = copy.deepcopy(enc)
    assert copied._graphed is None
    assert copied.cuda_graphs and copied.num_cuda_graphs == 0


def batches(device):
    """Four training batches, two length buckets (40 and 48), padded items;
    two batches share each key."""
    g = torch.Generator().manual_seed(1)
    out = []
    for time, frames in [
        (37, [37, 20]),
        (45, [45, 44]),
        (39, [30, 39]),
        (46, [46, 13]),
    ]:
        x = torch.randn(2, time, 32, generator=g)
        out.append((x.to(device), padding_mask(frames, time, device)))
    return out


def step(enc, x, mask):
    enc.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y, attention = enc(x, src_key_padding_mask=mask)
    assert attention == [None, None]
    weights = torch.linspace(-1, 1, y.numel(), device="cuda")
    (y * weights.view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    return y.detach(), x.grad.clone(), grads


@pytest.mark.gpu
def test_replayed_training_equals_eager(true_fp32):
    """Each batch from the same weights: an SGD step of the eager encoder,
    copied in place into the graphed one (whose graphs read the weights by
    address). Separate trainings would drift apart: the scan's backward
    adds with atomics in any order, and training amplifies it."""
    enc = encoder().cuda().train()
    eager = copy.deepcopy(enc)
    eager.cuda_graphs = False
    for index, (x, mask) in enumerate(batches("cuda")):
        result, reference = step(enc, x, mask), step(eager, x, mask)
        try:
            assert_same(result, reference, **TOL)
        except AssertionError as err:
            raise AssertionError(f"step {index}: {err}") from err
        with torch.no_grad():
            for p, q in zip(eager.parameters(), enc.parameters()):
                p.sub_(0.05 * p.grad)
                q.copy_(p)
    assert enc.num_cuda_graphs == 2  # one pair per bucket
    assert eager.num_cuda_graphs == 0


@pytest.mark.gpu
def test_replayed_inference_equals_eager(true_fp32):
    enc = encoder().cuda().eval()
    (x, mask), (other, other_mask) = batches("cuda")[:2]
    with torch.no_grad():
        first = enc(x, src_key_padding_mask=mask)[0]
        replayed = enc(x, src_key_padding_mask=mask)[0]
        second = enc(other, src_key_padding_mask=other_mask)[0]
        assert enc.num_cuda_graphs == 2
        enc.cuda_graphs = False
        eager = enc(x, src_key_padding_mask=mask)[0]
        other_eager = enc(other, src_key_padding_mask=other_mask)[0]
    # first: checked after later replays (a copy, not the graph's buffer)
    torch.testing.assert_close(first, eager, **TOL)
    torch.testing.assert_close(replayed, eager, **TOL)
    torch.testing.assert_close(second, other_eager, **TOL)


@pytest.mark.gpu
def test_dropout_is_drawn_again_at_each_replay(true_fp32):
    enc = encoder(dropout=0.3).cuda().train()
    x, mask = batches("cuda")[0]
    outputs = []
    for _ in range(3):  # recording, then two replays
        y, _ = enc(x, src_key_padding_mask=mask)
        y.sum().backward()
        outputs.append(y.detach())
    assert enc.num_cuda_graphs == 1
    assert (outputs[1] - outputs[2]).abs().max() > 1e-3
    assert (outputs[2][mask] == 0).all() and outputs[2][~mask].abs().sum()
    enc.eval()
    with torch.no_grad():
        first = enc(x, src_key_padding_mask=mask)[0]
        second = enc(x, src_key_padding_mask=mask)[0]
    assert enc.num_cuda_graphs == 2
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("flag", [True, False])
def test_asr_model_passes_the_graph_option_to_its_encoder(flag):
    from speechbrain_mamba.lobes.asr.transformer_asr import MambaTransformerASR

    net = MambaTransformerASR(
        tgt_vocab=20, input_size=12, d_model=16, nhead=2,
        num_encoder_layers=1, num_decoder_layers=1, d_ffn=32,
        encoder_module="conmamba", decoder_module="mamba",
        attention_type="RelPosMHAXL", normalize_before=True,
        mamba_config={"d_state": 4, "expand": 2, "d_conv": 4},
        cuda_graphs=flag,
    )  # fmt: skip
    assert net.encoder.cuda_graphs is flag


@pytest.mark.gpu
def test_inference_graph_of_training_mode_does_not_serve_eval(true_fp32):
    """Dropout recorded under no_grad in training mode must not be replayed
    for evaluation: the training flags are part of the key."""
    enc = encoder(dropout=0.3).cuda().train()
    x, mask = batches("cuda")[0]
    with torch.no_grad():
        enc(x, src_key_padding_mask=mask)  # training mode, no gradients
        enc.eval()
        first = enc(x, src_key_padding_mask=mask)[0]
        second = enc(x, src_key_padding_mask=mask)[0]
        enc.cuda_graphs = False
        eager = enc(x, src_key_padding_mask=mask)[0]
    assert enc.num_cuda_graphs == 2
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, eager, **TOL)
