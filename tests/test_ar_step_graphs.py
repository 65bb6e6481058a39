"""VALL-M's AR steps replayed from a CUDA graph generate the tokens of eager
steps, leave the state as eager steps do, and are not used where they do
not apply (CPU, a Transformer AR model)."""

import pytest
import torch

from speechbrain_mamba.lobes.tts.factory import build_codec_lm
from speechbrain_mamba.tts.generation import generate_first_codebook
from speechbrain_mamba.tts.graphed_decoding import (
    GraphedARStep,
    graph_applies,
    make_step,
)


def ar_model(kind, device):
    torch.manual_seed(0)
    ar, _ = build_codec_lm(
        kind, "tiny", num_symbols=20, codebook_size=32, num_codebooks=2
    )
    return ar.to(device).eval()


def inputs(device):
    g = torch.Generator().manual_seed(0)
    phonemes = torch.randint(1, 20, (2, 7), generator=g).to(device)
    prompt = torch.randint(0, 32, (2, 5), generator=g).to(device)
    return (
        phonemes,
        torch.tensor([7, 5], device=device),
        prompt,
        torch.tensor([5, 3], device=device),
    )


def generate(ar, device, cuda_graph, dtype=torch.float32):
    generator = torch.Generator(device=device).manual_seed(3)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        tokens, ended = generate_first_codebook(
            ar,
            *inputs(device),
            max_frames=40,
            top_k=4,
            generator=generator,
            cuda_graph=cuda_graph,
        )
    return [t.cpu() for t in tokens], ended.cpu()


def test_cpu_generation_ignores_the_graph_option():
    ar = ar_model("vallm", "cpu")
    expected = generate(ar, "cpu", cuda_graph=False)
    got = generate(ar, "cpu", cuda_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))
    _, state = ar.start(*inputs("cpu"))
    assert not graph_applies(ar, state)
    assert make_step(ar, state, torch.zeros(2).long(), True) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphed_generation_equals_eager(dtype):
    ar = ar_model("vallm", "cuda")
    expected = generate(ar, "cuda", False, dtype)
    got = generate(ar, "cuda", True, dtype)
    assert sum(len(t) for t in expected[0]) > 0
    for a, b in zip(got[0], expected[0]):
        assert torch.equal(a, b)
    assert torch.equal(got[1], expected[1])


@pytest.mark.gpu
def test_recording_leaves_the_state_unchanged():
    ar = ar_model("vallm", "cuda")
    with torch.no_grad():
        _, state = ar.start(*inputs("cuda"))
        before = [state.next_position.clone()] + [
            c.ssm.clone() for c in state.cache
        ]
        token = torch.tensor([1, 2], device="cuda")
        step = GraphedARStep(ar, state, token)
        after = [state.next_position] + [c.ssm for c in state.cache]
        for a, b in zip(after, before):
            assert torch.equal(a, b)
        _, reference = ar.start(*inputs("cuda"))
        expected = ar.step(token, reference)
        torch.testing.assert_close(step(token), expected)
        assert torch.equal(state.next_position, reference.next_position)


@pytest.mark.gpu
def test_transformer_ar_steps_eagerly():
    ar = ar_model("valle", "cuda")
    with torch.no_grad():
        _, state = ar.start(*inputs("cuda"))
    assert not graph_applies(ar, state)
    with pytest.raises(ValueError, match="Mamba backbone"):
        GraphedARStep(ar, state, torch.tensor([1, 2], device="cuda"))
    expected = generate(ar, "cuda", False)
    got = generate(ar, "cuda", True)
    assert all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))
