"""The fused Triton decoding step of a unidirectional Mamba stack against the
pure-PyTorch step with the same weights and caches: outputs and updated
conv / SSM states over several steps (RMSNorm and LayerNorm, with and
without biases, batch 1 and 3, fp32 and autocast), replayed from a CUDA
graph, and through VALL-M's AR decoder. The dispatch rules and the input
checks are tested on any machine; on CPU the small cases run under Triton's
interpreter (``TRITON_INTERPRET=1``), started by
tests/test_triton_interpreted.py."""

import pytest
import torch

from speechbrain_mamba.nnet import BiMamba, Mamba, MambaStack, RMSNorm
from speechbrain_mamba.ops.backend import fused_step_applies
from speechbrain_mamba.ops.triton import mamba_step as step_ops

INTERPRETED = step_ops.interpreted() and step_ops.available()
#: Whether the compiled kernels run (on a GPU).
ON_GPU = torch.cuda.is_available() and step_ops.available() and not INTERPRETED
#: Where the kernels run: the GPU, or the CPU under Triton's interpreter.
DEVICE = "cpu" if INTERPRETED else "cuda"
#: The backend that takes the fused step ("auto" takes it on CUDA only).
FUSED = "triton" if INTERPRETED else "auto"
#: Smaller layers under the interpreter (fewer programs to run).
D_MODEL = 16 if INTERPRETED else 64
pytestmark = pytest.mark.usefixtures("true_fp32")

RTOL, ATOL = 6e-4, 2e-3


def make_stack(norm="rmsnorm", bias=False, d_model=D_MODEL, device=DEVICE):
    torch.manual_seed(0)
    stack = MambaStack(
        d_model,
        num_layers=3,
        bidirectional=False,
        norm=norm,
        d_state=16,
        bias=bias,
        backend="torch",
    ).to(device)
    with torch.no_grad():  # move every parameter off its initial value
        for p in stack.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return stack.eval()


def set_backend(stack, backend):
    for module in stack.modules():
        if isinstance(module, Mamba):
            module.backend = backend


def copy_cache(cache):
    return [type(c)(c.conv.clone(), c.ssm.clone()) for c in cache]


def decode(stack, backend, steps, cache, dtype=torch.float32):
    """``steps`` one-frame calls on ``backend`` from ``cache``."""
    outputs = []
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype, enabled=dtype != torch.float32),
    ):
        for frame in steps.split(1, dim=1):
            set_backend(stack, backend)
            outputs.append(stack(frame, cache=cache).float())
    return torch.cat(outputs, dim=1)


def prefilled(stack, batch, prompt_frames=7):
    torch.manual_seed(1)
    prompt = torch.randn(batch, prompt_frames, stack.d_model, device=DEVICE)
    cache = stack.init_cache(batch)
    set_backend(stack, "torch")
    with torch.no_grad():
        stack(prompt, cache=cache)
    return prompt, cache


@pytest.mark.triton
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_step_equals_torch_step(norm, bias, batch):
    interpreted_cases = (("rmsnorm", False, 3), ("layernorm", True, 1))
    if INTERPRETED and (norm, bias, batch) not in interpreted_cases:
        pytest.skip("GPU only (interpreted: two of the eight cases)")
    stack = make_stack(norm, bias)
    _, cache = prefilled(stack, batch)
    steps = torch.randn(batch, 6 if ON_GPU else 3, stack.d_model, device=DEVICE)
    reference_cache = copy_cache(cache)
    expected = decode(stack, "torch", steps, reference_cache)
    set_backend(stack, FUSED)
    with torch.no_grad():
        assert stack.fused_step_applies(steps[:, :1], None, cache)
    got = decode(stack, "triton", steps, cache)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    for fused, plain in zip(cache, reference_cache):
        torch.testing.assert_close(fused.ssm, plain.ssm, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(fused.conv, plain.conv, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.triton
def test_fused_step_under_autocast_and_bf16_weights():
    stack = make_stack()
    _, cache = prefilled(stack, 2)
    steps = torch.randn(2, 4, stack.d_model, device="cuda")
    expected = decode(stack, "torch", steps, copy_cache(cache))
    # autocast does not change the fused step (fp32 arithmetic)
    got = decode(stack, "triton", steps, copy_cache(cache), torch.bfloat16)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    # bf16 weights and conv cache: the fp32 step of the rounded weights
    rounded = make_stack().to(torch.bfloat16).float()
    expected = decode(rounded, "torch", steps, copy_cache(cache))
    half = make_stack().to(torch.bfloat16)
    half_cache = [
        type(c)(c.conv.to(torch.bfloat16), c.ssm.clone()) for c in cache
    ]
    got = decode(half, "triton", steps.to(torch.bfloat16), half_cache)
    torch.testing.assert_close(got, expected, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
@pytest.mark.triton
def test_fused_step_replays_from_a_cuda_graph():
    stack = make_stack()
    _, cache = prefilled(stack, 1)
    set_backend(stack, "triton")
    eager_cache = copy_cache(cache)
    frames = torch.randn(5, 1, 1, stack.d_model, device="cuda")
    static_in = frames[0].clone()
    with torch.no_grad():
        expected = [stack(frame, cache=eager_cache) for frame in frames]
        graph = torch.cuda.CUDAGraph()
        warm_cache = copy_cache(cache)  # warm-up on a throwaway copy
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            stack(static_in, cache=warm_cache)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            static_out = stack(static_in, cache=cache)
    # capturing ran no kernel: the cache still holds the prefilled state
    for frame, want in zip(frames, expected):
        static_in.copy_(frame)
        graph.replay()
        torch.testing.assert_close(static_out, want, rtol=1e-5, atol=1e-5)
    for c, want in zip(cache, eager_cache):
        torch.testing.assert_close(c.ssm, want.ssm, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.triton
def test_vallm_ar_decoding_equals_torch_path():
    from speechbrain_mamba.lobes.tts.factory import build_codec_lm

    torch.manual_seed(0)
    ar, _ = build_codec_lm(
        "vallm", "small", num_symbols=30, codebook_size=64, num_codebooks=2
    )
    ar = ar.cuda().eval()
    phonemes = torch.randint(1, 30, (2, 9), device="cuda")
    prompt = torch.randint(0, 64, (2, 12), device="cuda")
    lens = torch.tensor([9, 7], device="cuda")
    prompt_lens = torch.tensor([12, 10], device="cuda")
    tokens = torch.randint(0, 64, (5, 2), device="cuda")

    def run(backend):
        set_backend(ar, "torch")
        with torch.no_grad():
            logits, state = ar.start(phonemes, lens, prompt, prompt_lens)
            set_backend(ar, backend)
            out = [logits] + [ar.step(t, state) for t in tokens]
        return torch.stack(out)

    torch.testing.assert_close(
        run("triton"), run("torch"), rtol=RTOL, atol=ATOL
    )


@pytest.mark.gpu
@pytest.mark.triton
def test_fused_step_dispatch_rules():
    stack = make_stack()
    set_backend(stack, "auto")
    cache = stack.init_cache(2)
    frame = torch.randn(2, 1, stack.d_model, device="cuda")
    with torch.no_grad():
        assert stack.fused_step_applies(frame, None, cache)
        assert not stack.fused_step_applies(frame, None, None)
        two = torch.randn(2, 2, stack.d_model, device="cuda")
        assert not stack.fused_step_applies(two, None, cache)
        lengths = torch.ones(2, device="cuda")
        assert not stack.fused_step_applies(frame, lengths, cache)
        set_backend(stack, "cuda")  # insists on mamba_ssm's kernels
        assert not stack.fused_step_applies(frame, None, cache)
        set_backend(stack, "auto")
    # with gradients the per-operation path (autograd) runs
    assert not stack.fused_step_applies(frame, None, cache)


def test_fused_step_not_taken_on_cpu():
    stack = make_stack(device="cpu")
    set_backend(stack, "auto")
    cache = stack.init_cache(1)
    with torch.no_grad():
        frame = torch.randn(1, 1, stack.d_model)
        assert not stack.fused_step_applies(frame, None, cache)


def test_step_input_checks_name_the_problem():
    mixer = Mamba(8, d_state=4)
    cache = mixer.init_cache(2)
    if not INTERPRETED:
        with pytest.raises(ValueError, match="CUDA"):
            step_ops.check_step_inputs(torch.zeros(2, 8), mixer, cache)
    if not (ON_GPU or INTERPRETED):
        return
    mixer, norm = mixer.to(DEVICE), RMSNorm(8).to(DEVICE)
    cache = mixer.init_cache(2)
    frame = torch.zeros(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="fp32"):
        step_ops.mamba_block_step(frame.half(), norm, mixer, cache)
    with pytest.raises(ValueError, match="6 features"):
        step_ops.check_step_inputs(frame[:, :6].clone(), mixer, cache)
    with pytest.raises(ValueError, match="contiguous"):
        transposed = frame.t().contiguous().t()  # [2, 8], strides (1, 2)
        step_ops.check_step_inputs(transposed, mixer, cache)
    with pytest.raises(ValueError, match="RMSNorm or LayerNorm"):
        step_ops.check_step_inputs(frame, mixer, cache, torch.nn.Identity())
    with pytest.raises(ValueError, match="unidirectional"):
        bimamba = BiMamba(8, d_state=4).to(DEVICE)
        step_ops.check_step_inputs(frame, bimamba, cache)
    with pytest.raises(ValueError, match="holds 1 sequences"):
        step_ops.check_step_inputs(frame, mixer, mixer.init_cache(1))
    with torch.no_grad():  # a weight stored transposed
        mixer.out_proj.weight = torch.nn.Parameter(
            mixer.out_proj.weight.t().contiguous().t()
        )
    with pytest.raises(ValueError, match="out_proj.weight"):
        step_ops.check_step_inputs(frame, mixer, cache)


@pytest.mark.triton
@pytest.mark.parametrize("batch", [1, 6])
def test_fused_mixer_step_equals_torch_step(batch):
    if INTERPRETED and batch == 1:
        pytest.skip("GPU only (interpreted: batch 6)")
    torch.manual_seed(0)
    layer = Mamba(D_MODEL, d_state=16, backend="torch").to(DEVICE).eval()
    cache = layer.init_cache(batch)
    with torch.no_grad():
        layer(torch.randn(batch, 9, D_MODEL, device=DEVICE), cache=cache)
    reference = copy_cache([cache])[0]
    frames = torch.randn(batch, 4, D_MODEL, device=DEVICE)
    with torch.no_grad():
        expected = [layer(f, cache=reference) for f in frames.split(1, 1)]
        layer.backend = FUSED
        assert fused_step_applies(
            frames[:, :1], None, cache, FUSED, layer.parameters()
        )
        got = [layer(f, cache=cache) for f in frames.split(1, 1)]
        if ON_GPU:  # CUDA autocast: the dtype nn.Linear's would have
            with torch.autocast("cuda", torch.bfloat16):
                out = layer(frames[:, :1], cache=copy_cache([cache])[0])
            assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        torch.cat(got, 1), torch.cat(expected, 1), rtol=RTOL, atol=ATOL
    )
    torch.testing.assert_close(cache.ssm, reference.ssm, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.triton
def test_mamba_asr_decoder_steps_equal_torch_path():
    """Its self Mamba and CrossMamba layers step on the fused kernels."""
    from speechbrain_mamba.lobes.asr.mamba_decoder import MambaDecoder

    torch.manual_seed(0)
    decoder = MambaDecoder(num_layers=2, d_model=64, d_ffn=128).cuda().eval()
    memory = torch.randn(3, 20, 64, device="cuda")
    valid = torch.tensor([20, 14, 10], device="cuda")
    padding = torch.arange(20, device="cuda")[None, :] >= valid[:, None]
    target = torch.randn(3, 5, 64, device="cuda")

    def run(backend):
        set_backend(decoder, "torch")
        with torch.no_grad():
            cache = decoder.init_cache(memory, padding)
            set_backend(decoder, backend)
            return torch.cat(
                [
                    decoder.step(target[:, t : t + 1], cache)[0]
                    for t in range(5)
                ],
                dim=1,
            )

    torch.testing.assert_close(run("auto"), run("torch"), rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.triton
def test_batches_beyond_the_limit_take_the_per_operation_path():
    layer = Mamba(32, d_state=8).cuda().eval()
    big = step_ops.MAX_BATCH + 1
    with torch.no_grad():
        assert not fused_step_applies(
            torch.zeros(big, 1, 32, device="cuda"),
            None,
            layer.init_cache(big),
            "auto",
            layer.parameters(),
        )
