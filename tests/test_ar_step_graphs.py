"""VALL-M's ``ar.step`` replays a CUDA graph it records itself
(:mod:`speechbrain_mamba.lobes.tts.step_graphs`).

On CPU: the plain step equals the teacher-forced forward; binding states to
a recording's static tensors keeps every state's values and never leaves
two states sharing storage; copies leave the graphs out; the option and
its switches. On a GPU: replayed steps equal the plain step (one state,
interleaved states, kept logits, reordered states, changed weights), the
fallbacks (batch 9, hooks, Transformer) step plainly, generation gives the
same tokens with graphs on and off, and the efficiency study's own graph
around the step records no nested one.
"""

import copy
import pickle

import pytest
import torch
from torch import nn

from speechbrain_mamba.lobes.tts.ar import ARDecodingState, CodecAR
from speechbrain_mamba.lobes.tts.factory import build_codec_lm
from speechbrain_mamba.lobes.tts.step_graphs import (
    ARStepGraphs,
    bind_state,
    graph_applies,
    holds,
    state_tensors,
    step_graphs_switched,
)
from speechbrain_mamba.nnet.cache import MambaCache
from speechbrain_mamba.tts.generation import generate_first_codebook
from speechbrain_mamba.utils.bucketed_graphs import self_graphed_modules

TOL = dict(rtol=6e-4, atol=2e-3)


def small_ar(device, backbone="mamba", seed=0, **kwargs):
    torch.manual_seed(seed)
    ar = CodecAR(
        20,
        codebook_size=16,
        d_model=64,
        num_layers=2,
        backbone=backbone,
        nhead=4,
        d_state=8,
        dropout=0.0,
        **kwargs,
    )
    return ar.to(device).eval()


def prompt_inputs(device, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    phonemes = torch.randint(1, 20, (batch, 7), generator=g)
    prompt = torch.randint(0, 16, (batch, 5), generator=g)
    phoneme_frames = torch.full((batch,), 7)
    phoneme_frames[0] = 5
    prompt_frames = torch.full((batch,), 5)
    prompt_frames[-1] = 3
    return [
        t.to(device) for t in (phonemes, phoneme_frames, prompt, prompt_frames)
    ]


def token_sequence(steps, batch, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (steps, batch), generator=g).to(device)


def copy_state(state):
    cache = [
        MambaCache(c.conv.clone(), c.ssm.clone(), c.primed) for c in state.cache
    ]
    return ARDecodingState(cache, state.next_position.clone())


def assert_states_equal(got, expected, **tol):
    for a, b in zip(state_tensors(got), state_tensors(expected)):
        torch.testing.assert_close(a, b, **tol)


def storages(state):
    return {t.untyped_storage().data_ptr() for t in state_tensors(state)}


def cpu_state(value, batch=2, layers=2):
    cache = [
        MambaCache(
            torch.full((batch, 4, 3), float(value + layer)),
            torch.full((batch, 4, 2), float(-value - layer)),
        )
        for layer in range(layers)
    ]
    return ARDecodingState(cache, torch.full((batch,), value))


# -- CPU ---------------------------------------------------------------------
def test_plain_steps_equal_the_teacher_forced_forward():
    ar = small_ar("cpu")
    phonemes, phoneme_frames, prompt, _ = prompt_inputs("cpu")
    prompt_frames = torch.tensor([5, 5])
    new = torch.randint(
        0, 16, (2, 4), generator=torch.Generator().manual_seed(2)
    )
    codes = torch.cat([prompt, new], dim=1)
    with torch.no_grad():
        reference = ar(phonemes, codes, phoneme_frames.float() / 7)
        logits, state = ar.start(
            phonemes, phoneme_frames, prompt, prompt_frames
        )
        steps = [logits] + [ar.step(new[:, t], state) for t in range(4)]
    for t, got in enumerate(steps):
        torch.testing.assert_close(
            got, reference[:, 5 + t], rtol=1e-4, atol=1e-4
        )
    assert state.next_position.tolist() == [10, 10]
    assert ar.num_cuda_graphs == 0


def test_binding_keeps_the_values_of_both_states_apart():
    static = [t.clone() for t in state_tensors(cpu_state(0))]
    a, b = cpu_state(1), cpu_state(2)
    expected_a = [t.clone() for t in state_tensors(a)]
    expected_b = [t.clone() for t in state_tensors(b)]
    bind_state(a, static)
    assert holds(a, static)
    for got, want in zip(state_tensors(a), expected_a):
        assert torch.equal(got, want)
    # a replay updates the static tensors in place: the bound state follows
    for tensor in static:
        tensor.add_(10)
    expected_a = [t + 10 for t in expected_a]
    bind_state(b, static, previous=a)
    assert holds(b, static) and not holds(a, static)
    for got, want in zip(state_tensors(a), expected_a):
        assert torch.equal(got, want)
    for got, want in zip(state_tensors(b), expected_b):
        assert torch.equal(got, want)
    assert not storages(a) & storages(b)
    # b steps on: a keeps its values
    for tensor in static:
        tensor.mul_(3)
    for got, want in zip(state_tensors(a), expected_a):
        assert torch.equal(got, want)


def test_binding_a_reordered_state_leaves_the_original_intact():
    static = [t.clone() for t in state_tensors(cpu_state(0))]
    a = cpu_state(1)
    a.next_position = torch.tensor([3, 4])
    bind_state(a, static)
    beams = a.reorder(torch.tensor([1, 1]))
    before = [t.clone() for t in state_tensors(a)]
    bind_state(beams, static, previous=a)
    for tensor in static:
        tensor.add_(1)  # the reordered state steps
    assert beams.next_position.tolist() == [5, 5]
    for got, want in zip(state_tensors(a), before):
        assert torch.equal(got, want)
    assert not storages(a) & storages(beams)


def test_binding_again_copies_nothing_and_checks_the_layers():
    static = [t.clone() for t in state_tensors(cpu_state(0))]
    a = cpu_state(1)
    bind_state(a, static)
    bind_state(a, static, previous=a)
    assert holds(a, static)
    assert a.next_position.tolist() == [1, 1]
    with pytest.raises(ValueError, match="5 tensors, the recording 3"):
        bind_state(cpu_state(1), static[:3])


def test_copies_and_pickles_leave_the_step_graphs_out():
    ar = small_ar("cpu")
    ar._step_graphs = ARStepGraphs(ar, max_graphs=2)
    assert copy.deepcopy(ar)._step_graphs is None
    assert pickle.loads(pickle.dumps(ar))._step_graphs is None
    assert ar._step_graphs is not None
    ar.drop_cuda_graphs()
    assert ar._step_graphs is None
    assert not any("graph" in name for name in ar.state_dict())


def test_the_option_and_its_switches():
    vallm, valle = small_ar("cpu"), small_ar("cpu", backbone="transformer")
    assert vallm in self_graphed_modules(vallm)
    assert vallm.cuda_graphs and not valle.cuda_graphs
    valle.cuda_graphs = True  # e.g. the efficiency study's switch
    assert not valle.cuda_graphs  # its key/value cache grows
    with step_graphs_switched(vallm, False):
        assert not vallm.cuda_graphs
    assert vallm.cuda_graphs
    with step_graphs_switched(vallm, None):
        assert vallm.cuda_graphs
    assert not small_ar("cpu", cuda_graphs=False).cuda_graphs
    with pytest.raises(ValueError, match="max_cuda_graphs"):
        small_ar("cpu", max_cuda_graphs=-1)


def test_cpu_generation_ignores_the_graph_option():
    ar, _ = build_codec_lm(
        "vallm", "tiny", num_symbols=20, codebook_size=16, num_codebooks=2
    )
    ar.eval()
    results = [generate(ar, "cpu", flag) for flag in (False, True, None)]
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[0], results[0][0]))
    _, state = ar.start(*prompt_inputs("cpu"))
    assert not graph_applies(ar, state)
    assert ar.num_cuda_graphs == 0


def generate(ar, device, cuda_graph, dtype=torch.float32):
    generator = torch.Generator(device=device).manual_seed(3)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        tokens, ended = generate_first_codebook(
            ar,
            *prompt_inputs(device),
            max_frames=40,
            top_k=4,
            generator=generator,
            cuda_graph=cuda_graph,
        )
    return [t.cpu() for t in tokens], ended.cpu()


# -- GPU ---------------------------------------------------------------------
def started(ar, batch=2, seed=0):
    with torch.no_grad():
        return ar.start(*prompt_inputs("cuda", batch, seed))[1]


def plain_steps(ar, state, tokens):
    with torch.no_grad():
        return [ar._plain_step(t, state) for t in tokens]


def steps(ar, state, tokens):
    with torch.no_grad():
        return [ar.step(t, state) for t in tokens]


@pytest.mark.gpu
def test_replayed_steps_equal_plain_steps_and_keep_their_logits(true_fp32):
    ar = small_ar("cuda")
    state = started(ar)
    reference = copy_state(state)
    tokens = token_sequence(20, 2, "cuda")
    got = steps(ar, state, tokens)  # kept in a list: none overwritten
    expected = plain_steps(ar, reference, tokens)
    assert ar.num_cuda_graphs == 1
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)
    assert len({t.data_ptr() for t in got}) == len(got)
    assert_states_equal(state, reference, **TOL)
    assert torch.equal(state.next_position, reference.next_position)


@pytest.mark.gpu
def test_the_first_step_binds_the_state_and_later_steps_copy_nothing():
    ar = small_ar("cuda")
    state = started(ar)
    tokens = token_sequence(3, 2, "cuda")
    steps(ar, state, tokens[:1])
    (recorded,) = ar._step_graphs._graphs.values()
    assert holds(state, recorded.inputs[1:])
    bound = state_tensors(state)
    steps(ar, state, tokens[1:])
    assert all(a is b for a, b in zip(state_tensors(state), bound))


@pytest.mark.gpu
def test_interleaved_states_step_as_they_would_alone(true_fp32):
    ar = small_ar("cuda")
    a, b = started(ar, seed=0), started(ar, seed=5)
    ref_a, ref_b = copy_state(a), copy_state(b)
    tokens_a = token_sequence(8, 2, "cuda", seed=1)
    tokens_b = token_sequence(8, 2, "cuda", seed=2)
    got_a, got_b = [], []
    for t in range(8):
        got_a += steps(ar, a, tokens_a[t : t + 1])
        got_b += steps(ar, b, tokens_b[t : t + 1])
    assert ar.num_cuda_graphs == 1
    for got, ref, tokens in (
        (got_a, ref_a, tokens_a),
        (got_b, ref_b, tokens_b),
    ):
        for x, y in zip(got, plain_steps(ar, ref, tokens)):
            torch.testing.assert_close(x, y, **TOL)
    assert_states_equal(a, ref_a, **TOL)
    assert_states_equal(b, ref_b, **TOL)
    assert not storages(a) & storages(b)


@pytest.mark.gpu
def test_a_reordered_state_continues_as_plain_steps(true_fp32):
    ar = small_ar("cuda")
    state = started(ar)
    reference = copy_state(state)
    tokens = token_sequence(10, 2, "cuda")
    index = torch.tensor([1, 1], device="cuda")
    steps(ar, state, tokens[:5])
    plain_steps(ar, reference, tokens[:5])
    beams, ref_beams = state.reorder(index), reference.reorder(index)
    kept = [t.clone() for t in state_tensors(state)]
    got = steps(ar, beams, tokens[5:])
    expected = plain_steps(ar, ref_beams, tokens[5:])
    for x, y in zip(got, expected):
        torch.testing.assert_close(x, y, **TOL)
    assert_states_equal(beams, ref_beams, **TOL)
    for x, y in zip(state_tensors(state), kept):  # the original is intact
        assert torch.equal(x, y)


@pytest.mark.gpu
def test_replays_follow_changed_weights(true_fp32):
    ar = small_ar("cuda")
    other = small_ar("cuda", seed=7)
    state = started(ar)
    tokens = token_sequence(6, 2, "cuda")
    steps(ar, state, tokens[:2])
    # in place (the graph reads the new values at the same addresses)
    ar.load_state_dict(other.state_dict())
    reference = copy_state(state)
    got = steps(ar, state, tokens[2:4])
    expected = plain_steps(other, reference, tokens[2:4])
    for x, y in zip(got, expected):
        torch.testing.assert_close(x, y, **TOL)
    # a replaced parameter: the recordings are dropped and made again
    with torch.no_grad():
        ar.head.weight = nn.Parameter(ar.head.weight * 2)
    reference = copy_state(state)
    got = steps(ar, state, tokens[4:])
    expected = plain_steps(ar, reference, tokens[4:])
    for x, y in zip(got, expected):
        torch.testing.assert_close(x, y, **TOL)
    assert ar.num_cuda_graphs == 1


@pytest.mark.gpu
def test_calls_off_the_fused_path_step_plainly(true_fp32):
    ar = small_ar("cuda")
    state = started(ar, batch=9)  # over the fused kernels' batch limit
    reference = copy_state(state)
    tokens = token_sequence(3, 9, "cuda")
    for x, y in zip(
        steps(ar, state, tokens), plain_steps(ar, reference, tokens)
    ):
        torch.testing.assert_close(x, y, **TOL)
    assert ar.num_cuda_graphs == 0
    assert_states_equal(state, reference, **TOL)
    # a forward hook must see the call: plain too
    state = started(ar)
    seen = []
    handle = ar.backbone.register_forward_hook(lambda *args: seen.append(1))
    steps(ar, state, tokens[:2, :2])
    handle.remove()
    assert ar.num_cuda_graphs == 0 and len(seen) == 2
    # the option off
    ar.cuda_graphs = False
    steps(ar, state, tokens[:2, :2])
    assert ar.num_cuda_graphs == 0


@pytest.mark.gpu
def test_transformer_ar_steps_plainly():
    ar = small_ar("cuda", backbone="transformer")
    state = started(ar)
    assert not graph_applies(ar, state)
    steps(ar, state, token_sequence(3, 2, "cuda"))
    assert ar.num_cuda_graphs == 0
    expected = generate(ar, "cuda", False)
    got = generate(ar, "cuda", None)
    assert all(torch.equal(a, b) for a, b in zip(got[0], expected[0]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_gives_the_same_tokens_with_and_without_graphs(dtype):
    ar, _ = build_codec_lm(
        "vallm", "tiny", num_symbols=20, codebook_size=16, num_codebooks=2
    )
    ar = ar.cuda().eval()
    expected = generate(ar, "cuda", False, dtype)
    assert ar.num_cuda_graphs == 0
    got = generate(ar, "cuda", None, dtype)
    assert ar.num_cuda_graphs == 1
    assert sum(len(t) for t in expected[0]) > 0
    for a, b in zip(got[0], expected[0]):
        assert torch.equal(a, b)
    assert torch.equal(got[1], expected[1])


@pytest.mark.gpu
def test_efficiency_ar_step_rows_count_the_step_graph():
    from speechbrain_mamba.benchmarks import efficiency
    from speechbrain_mamba.benchmarks.models import tts_batch, vall_m

    model = vall_m("tiny").cuda()
    x = tts_batch(0.5, 1, "cuda")
    # the study records its own graph around the step: no nested recording
    result = efficiency.measure_model(
        model, x, "ar-step", torch.float32, "cuda", 3, graphed=True, warmup=3
    )
    assert result["cuda_graph"] and result["runs"] == 3
    assert model.ar.num_cuda_graphs == 0
    # eager rows with the model's own graphs: the step graph is counted
    result = efficiency.measure_model(
        model, x, "ar-step", torch.float32, "cuda", 3, warmup=3
    )
    assert not result["cuda_graph"]
    assert model.ar.num_cuda_graphs == 1
    assert model.ar in self_graphed_modules(model)
