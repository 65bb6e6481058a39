"""GraphedTraining: a module's training forward and backward replayed from
CUDA graphs give the outputs and gradients of eager calls, one graph per
input shape up to the limit, eager calls in every other case (CPU,
evaluation, no gradient, a module that cannot be recorded); the separation
Brain trains through it with ``cuda_graphs: True``."""

import copy
import math

import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.lobes.models.dual_path import Decoder, Encoder
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.separation.brain import SeparationBrain
from speechbrain_mamba.utils.graphed_training import GraphedTraining


def mask_net(device="cpu"):
    torch.manual_seed(0)
    return MambaTasNetMaskNet(32, out_channels=16, num_layers=2).to(device)


def train_steps(net, call, inputs, dtype=torch.float32):
    """Outputs and gradients of one training step per input."""
    results = []
    for x in inputs:
        net.zero_grad(set_to_none=True)
        with torch.autocast(
            "cuda", dtype=dtype, enabled=dtype != torch.float32
        ):
            y = call(x)
        loss = (
            y.float()
            * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
        ).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        results.append((y.detach().clone(), grads))
        with torch.no_grad():  # move the weights, as an optimizer would
            for p in net.parameters():
                p.sub_(1e-3 * p.grad)
    return results


def test_cpu_calls_are_plain_calls():
    net = mask_net()
    graphed = GraphedTraining(net)
    x = torch.randn(1, 32, 50)
    torch.testing.assert_close(graphed(x), net(x))
    assert graphed.num_graphs == 0
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedTraining(net, max_graphs=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replays_equal_eager_training_steps(dtype):
    eager_net = mask_net("cuda")
    graphed_net = copy.deepcopy(eager_net)
    graphed = GraphedTraining(graphed_net)
    torch.manual_seed(1)
    inputs = [
        torch.randn(1, 32, 400, device="cuda").requires_grad_()
        for _ in range(3)
    ]
    expected = train_steps(eager_net, eager_net, inputs, dtype)
    got = train_steps(graphed_net, graphed, inputs, dtype)
    assert graphed.num_graphs == 1
    # atomics in the scan backward (mamba_ssm's and ours) add in any order:
    # fp32 differences ~1e-5; under bf16 autocast the fp32 weight gradients
    # come from bf16 activations, and one of 1056 was seen 0.5% apart
    if dtype == torch.float32:
        tol = dict(rtol=6e-4, atol=1e-4)
    else:
        tol = dict(rtol=1.6e-2, atol=1e-4)  # bf16 resolution
    for (y, grads), (y_ref, grads_ref) in zip(got, expected):
        torch.testing.assert_close(y, y_ref, **tol)
        for name in grads_ref:
            torch.testing.assert_close(grads[name], grads_ref[name], **tol)


@pytest.mark.gpu
def test_one_graph_per_shape_up_to_the_limit():
    net = mask_net("cuda")
    graphed = GraphedTraining(net, max_graphs=2)
    for length in (100, 200, 100, 300):
        x = torch.randn(1, 32, length, device="cuda", requires_grad=True)
        y = graphed(x)
        y.sum().backward()
        torch.testing.assert_close(y, net(x), rtol=1e-4, atol=1e-5)
    assert graphed.num_graphs == 2  # 300 frames ran eagerly
    net.eval()
    with torch.no_grad():
        graphed(torch.randn(1, 32, 500, device="cuda"))
    assert graphed.num_graphs == 2


class HostCopy(torch.nn.Module):
    """Copies a CPU tensor in its forward: not recordable."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale + torch.tensor(1.0).to(x.device)


@pytest.mark.gpu
def test_unrecordable_module_runs_eagerly():
    module = HostCopy().cuda()
    graphed = GraphedTraining(module)
    x = torch.ones(3, device="cuda", requires_grad=True)
    y = graphed(x)
    assert graphed.num_graphs == 0
    torch.testing.assert_close(y, torch.full((3,), 2.0, device="cuda"))
    y.sum().backward()
    assert float(module.scale.grad) == 3.0
    assert graphed(x).shape == (3,)  # not tried again
    assert graphed.num_graphs == 0
    # the failed capture left the process usable: random numbers, stream
    assert torch.rand(3, device="cuda").shape == (3,)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


@pytest.mark.gpu
def test_second_backward_through_a_replay_is_refused():
    net = mask_net("cuda")
    graphed = GraphedTraining(net)
    x = torch.randn(1, 32, 100, device="cuda", requires_grad=True)
    graphed(x).sum().backward()  # records
    loss = graphed(x).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()


@pytest.mark.gpu
def test_autograd_grad_results_outlive_later_replays(true_fp32):
    net = mask_net("cuda")
    graphed = GraphedTraining(net)
    params = list(net.parameters())
    xs = [torch.randn(1, 32, 100, device="cuda") for _ in range(3)]
    graphed(xs[0]).sum().backward()  # records; .grad: the shared buffers
    grads = [p.grad.clone() for p in params]
    first = torch.autograd.grad(graphed(xs[1]).pow(2).sum(), params)
    kept = [g.clone() for g in first]
    torch.autograd.grad(graphed(xs[2]).sum(), params)
    # backward into the input only: the parameters' .grad untouched too
    x = xs[2].clone().requires_grad_()
    graphed(x).sum().backward(inputs=[x])
    assert x.grad is not None
    for got, expected in zip(first, kept):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for p, expected in zip(params, grads):
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=0)
    eager = torch.autograd.grad(net(xs[1]).pow(2).sum(), params)
    for got, expected in zip(first, eager):
        torch.testing.assert_close(got, expected, rtol=6e-4, atol=2e-3)


def separation_brain(device, cuda_graphs):
    torch.manual_seed(0)
    modules = {
        "encoder": Encoder(kernel_size=16, out_channels=32),
        "masknet": MambaTasNetMaskNet(32, out_channels=16, num_layers=2),
        "decoder": Decoder(
            in_channels=32, out_channels=1, kernel_size=16, stride=8, bias=False
        ),
    }
    hparams = {
        "num_spks": 2,
        "sample_rate": 8000,
        "loss": get_si_snr_with_pitwrapper,
        "clip_grad_norm": 5,
        "cuda_graphs": cuda_graphs,
    }
    brain = SeparationBrain(
        modules,
        opt_class=lambda params: torch.optim.Adam(params, 1e-3),
        hparams=hparams,
        run_opts={"device": device},
    )
    brain.init_optimizers()
    brain.nonfinite_count = 0
    return brain


def batches(count, length=1600):
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(count):
        items = []
        for i in range(2):
            s1 = torch.randn(length, generator=g)
            s2 = torch.randn(length, generator=g)
            items.append(
                {
                    "id": f"{b}-{i}",
                    "mix_sig": s1 + s2,
                    "s1_sig": s1,
                    "s2_sig": s2,
                }
            )
        out.append(PaddedBatch(items))
    return out


def test_separation_brain_option_on_cpu_trains_eagerly():
    brain = separation_brain("cpu", cuda_graphs=True)
    assert isinstance(brain._mask_network(), GraphedTraining)
    loss = brain.fit_batch(batches(1)[0])
    assert math.isfinite(float(loss))
    assert brain._mask_network().num_graphs == 0
    plain = separation_brain("cpu", cuda_graphs=False)
    assert plain._mask_network() is plain.modules.masknet


@pytest.mark.gpu
def test_separation_brain_trains_through_graphs():
    data = batches(3)
    eager = separation_brain("cuda", cuda_graphs=False)
    graphed = separation_brain("cuda", cuda_graphs=True)
    for batch in data:
        expected = float(eager.fit_batch(batch))
        got = float(graphed.fit_batch(batch))
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert graphed._mask_network().num_graphs == 1


@pytest.mark.gpu
def test_record_cuda_graph_warms_up_restores_and_replays():
    """record_cuda_graph: warm-up calls, then the callback, then the capture
    (which runs nothing); each replay reruns the call on updated inputs."""
    from speechbrain_mamba.utils.cuda_graphs import record_cuda_graph

    x = torch.ones(4, device="cuda")
    state = torch.zeros(1, device="cuda")
    calls = []

    def call():
        calls.append("call")
        state.add_(1)
        return x * 2 + state

    def restore():
        calls.append("restore")
        torch.testing.assert_close(state, torch.full_like(state, 3))
        state.zero_()

    graph, y = record_cuda_graph(call, warmup=3, after_warmup=restore)
    assert calls == ["call"] * 3 + ["restore", "call"]
    graph.replay()
    torch.cuda.synchronize()
    assert state.item() == 1 and y.tolist() == [3.0] * 4
    x.fill_(5.0)
    graph.replay()
    torch.cuda.synchronize()
    assert state.item() == 2 and y.tolist() == [12.0] * 4


# GraphedTraining of a function of several tensors -----------------------


class Scaled(torch.nn.Module):
    """A module whose forward takes an input and a per-item scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MambaTasNetMaskNet(
            32, out_channels=16, num_layers=2, cuda_graphs=False
        )
        self.unused = torch.nn.Parameter(torch.ones(3))

    def forward(self, x, scale):
        return self.net(x * scale[:, None, None])


def step_grads(module, call, x, scale):
    y = call(x, scale)
    weights = torch.linspace(-1, 1, y.numel(), device=y.device)
    (y.float() * weights.view_as(y)).sum().backward()
    return y.detach().clone()


def grads_of(module):
    return {
        n: None if p.grad is None else p.grad.clone()
        for n, p in module.named_parameters()
    }


@pytest.mark.gpu
def test_gradients_accumulate_as_eager_ones_whatever_zero_grad_does(
    true_fp32,
):
    """SpeechBrain's Brain zeroes gradients (set to None after each
    optimizer step, in place in ``zero_grad()``) and accumulates over
    micro-batches; users assign ``.grad`` tensors of their own: a replay
    adds its gradients as eagerly. ``.grad`` is the shared buffer: the same
    tensor, at the same address, every step (set to None or zeroed in
    place), except a ``.grad`` the user assigned, which is added into."""
    eager = Scaled().cuda()
    graphed_module = copy.deepcopy(eager)
    graphed = GraphedTraining(graphed_module.forward, graphed_module)
    torch.manual_seed(1)
    zeroing = ["none", "zero", "keep", "none", "user", "keep", "zero", "none"]
    xs = [torch.randn(2, 32, 300, device="cuda") for _ in zeroing]
    scale = torch.tensor([1.0, 0.5], device="cuda")
    buffers = None  # name: (tensor, address) of the first replayed .grad
    for x, zero in zip(xs, zeroing):
        for module in (eager, graphed_module):
            if zero == "zero":
                module.zero_grad(set_to_none=False)
            elif zero == "none":
                module.zero_grad(set_to_none=True)
            elif zero == "user":
                for name, p in module.named_parameters():
                    if name != "unused":
                        p.grad = torch.full_like(p, 0.01)
        if zero == "user":
            expected_grads = {
                n: p.grad for n, p in graphed_module.named_parameters()
            }
        x_ref = x.clone().requires_grad_()
        x_graphed = x.clone().requires_grad_()
        y_ref = step_grads(eager, eager, x_ref, scale)
        y = step_grads(graphed_module, graphed, x_graphed, scale)
        torch.testing.assert_close(y, y_ref, rtol=6e-4, atol=2e-3)
        torch.testing.assert_close(
            x_graphed.grad, x_ref.grad, rtol=6e-4, atol=2e-3
        )
        got, expected = grads_of(graphed_module), grads_of(eager)
        assert got["unused"] is None and expected["unused"] is None
        for name, grad in expected.items():
            if grad is not None:
                torch.testing.assert_close(
                    got[name], grad, rtol=6e-4, atol=2e-3, msg=name
                )
        grads = {
            n: p.grad
            for n, p in graphed_module.named_parameters()
            if n != "unused"
        }
        if buffers is None:
            buffers = {n: (g, g.data_ptr()) for n, g in grads.items()}
            shared = {id(b) for b in graphed._grad_buffers}
            assert all(id(g) in shared for g in grads.values())
        if zero == "none":
            expected_grads = {n: b for n, (b, _) in buffers.items()}
        for name, grad in grads.items():
            assert grad is expected_grads[name], (zero, name)
            if grad is buffers[name][0]:  # not moved either
                assert grad.data_ptr() == buffers[name][1], name
    assert graphed.num_graphs == 1


@pytest.mark.gpu
def test_two_forwards_before_their_backwards_give_eager_gradients(
    true_fp32,
):
    """A second forward while the first waits for its backward would
    overwrite the first one's activations in the shared pool: it runs
    eagerly, and both gradients are right."""
    eager = Scaled().cuda()
    graphed_module = copy.deepcopy(eager)
    graphed = GraphedTraining(graphed_module.forward, graphed_module)
    scale = torch.ones(1, device="cuda")
    a, b = (torch.randn(1, 32, 200, device="cuda") for _ in range(2))
    graphed(a, scale).sum().backward()  # records
    graphed_module.zero_grad(set_to_none=True)
    first = graphed(a, scale)
    second = graphed(b, scale)  # eager: the first awaits its backward
    (first.pow(2).sum() + second.sum()).backward()
    (eager(a, scale).pow(2).sum() + eager(b, scale).sum()).backward()
    for name, grad in grads_of(eager).items():
        if grad is not None:
            torch.testing.assert_close(
                grads_of(graphed_module)[name],
                grad,
                rtol=6e-4,
                atol=2e-3,
                msg=name,
            )
    # a replay whose output is dropped without backward frees the way
    graphed(a, scale)
    y = graphed(b, scale)
    assert graphed.num_graphs == 1 and y.grad_fn is not None
    assert "Replay" in type(y.grad_fn).__name__


@pytest.mark.gpu
def test_keys_share_one_pool_of_activations():
    """Four lengths recorded: the later three reserve far less memory than
    the first (they share its pool of activations, the side stream and
    the gradient buffers; each adds its input and output buffers). Without
    sharing, each would reserve about as much again."""
    module = MambaTasNetMaskNet(
        32, out_channels=64, num_layers=8, cuda_graphs=False
    ).cuda()
    graphed = GraphedTraining(module, max_graphs=8)

    def step(length):
        x = torch.randn(4, 32, length, device="cuda", requires_grad=True)
        graphed(x).sum().backward()
        module.zero_grad(set_to_none=True)

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    step(4000)
    one = torch.cuda.memory_reserved() - base
    for length in (3900, 3800, 3700):
        step(length)
    more = torch.cuda.memory_reserved() - base - one
    assert graphed.num_graphs == 4
    assert more < one / 2, (one, more)


# Where a replayed backward puts the parameter gradients ------------------
#
# The backward graph adds each parameter's gradient into a buffer, which
# becomes the parameter's ``.grad``; _place_gradients asks autograd's
# engine, inside the running backward, what it does with each parameter.
# CPU cannot record graphs: ``AddsIntoBuffers`` computes y = x * w + b and
# its backward "replays" by adding the gradients of w and b into buffers,
# as the graph does, then lets _place_gradients decide. Every pattern is
# compared with the same computation done eagerly.


class AddsIntoBuffers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buffers, x, w, b):
        ctx.save_for_backward(x)
        ctx.buffers, ctx.params = buffers, (w, b)
        return x * w + b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        from speechbrain_mamba.utils.graphed_training import _place_gradients

        (x,) = ctx.saved_tensors
        w, _ = ctx.params
        buffer_w, buffer_b = ctx.buffers

        def replay():  # what the backward graph does
            buffer_w.add_((g * x).sum(0))
            buffer_b.add_(g.sum(0))

        nodes = [node for node, _ in ctx.next_functions[1:]]
        grads = _place_gradients(nodes, ctx.params, ctx.buffers, replay)
        return (None, g * w, *grads)


class Affine(torch.nn.Module):
    """y = x * w + b, eager or through AddsIntoBuffers."""

    def __init__(self, replayed):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.5, 2.0, 3))
        self.b = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 3))
        self.replayed = replayed
        # garbage, as torch.empty_like would leave
        self.buffers = (torch.full((3,), 7.0), torch.full((3,), -5.0))

    def forward(self, x):
        if self.replayed:
            return AddsIntoBuffers.apply(self.buffers, x, self.w, self.b)
        return x * self.w + self.b


def affine_pair():
    return Affine(replayed=False), Affine(replayed=True)


def inputs_of(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)


def affine_loss(model, step):
    x, weights = inputs_of(step)
    return (model(x) * weights).sum()


def assert_grads_equal(got, expected):
    for (name, p), q in zip(got.named_parameters(), expected.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_replayed_gradients_accumulate_as_eager_whatever_zero_grad_does():
    """None -> the buffer becomes .grad; in-place zero and accumulation
    over micro-batches add into it (the same tensor every step); a .grad
    the user assigned gets the gradient added in place."""
    eager, replayed = affine_pair()
    buffers = replayed.buffers
    grad_w = None  # the tensor that replayed.w.grad must be
    for step, pattern in enumerate(
        ["none", "zero", "keep", "keep", "none", "user", "keep", "none"]
    ):
        for model in (eager, replayed):
            if pattern == "none":
                model.zero_grad(set_to_none=True)
            elif pattern == "zero":
                model.zero_grad(set_to_none=False)
            elif pattern == "user":
                model.w.grad = torch.full((3,), 0.25)
                model.b.grad = None
        if pattern == "none":
            grad_w = buffers[0]
        elif pattern == "user":
            grad_w = replayed.w.grad
        for model in (eager, replayed):
            affine_loss(model, step).backward()
        assert replayed.w.grad is grad_w
        assert replayed.b.grad is buffers[1]
        assert_grads_equal(replayed, eager)


def test_autograd_grad_and_backward_inputs_leave_grad_alone():
    """torch.autograd.grad returns fresh tensors and leaves .grad (the
    buffer) as it was; backward(inputs=...) accumulates only into the
    parameters it names."""
    eager, replayed = affine_pair()
    for model in (eager, replayed):
        affine_loss(model, 0).backward()  # .grad: the buffers
    kept = replayed.w.grad.clone()
    results = []
    for model in (eager, replayed):
        results.append(torch.autograd.grad(affine_loss(model, 1), [model.w]))
    (expected,), (got,) = results
    torch.testing.assert_close(got, expected)
    assert got is not replayed.buffers[0]
    torch.testing.assert_close(replayed.w.grad, kept)  # untouched
    affine_loss(replayed, 2).backward()  # the next replay
    torch.testing.assert_close(got, expected)  # the result survives
    affine_loss(eager, 2).backward()
    for step, model_inputs in [(3, "b"), (4, "x"), (5, "w")]:
        for model in (eager, replayed):
            x, weights = inputs_of(step)
            x.requires_grad_()
            wanted = {"b": [model.b], "x": [x], "w": [model.w, x]}
            loss = (model(x) * weights).sum()
            loss.backward(inputs=wanted[model_inputs])
        assert_grads_equal(replayed, eager)
    assert replayed.w.grad is replayed.buffers[0]
    assert replayed.b.grad is replayed.buffers[1]
    # autograd.grad of an input only: the parameters' .grad untouched
    for model in (eager, replayed):
        x, weights = inputs_of(6)
        x.requires_grad_()
        torch.autograd.grad((model(x) * weights).sum(), [x])
    assert_grads_equal(replayed, eager)


@pytest.mark.parametrize("zero", ["none", "zero", "user"])
def test_parameter_also_used_outside_the_replay(zero):
    """w feeds the replayed call and eager operations after and before it:
    autograd adds the outside gradient into the .grad the replay left."""
    eager, replayed = affine_pair()
    for model in (eager, replayed):
        affine_loss(model, 0).backward()
    for step in (1, 2):
        for model in (eager, replayed):
            if zero == "none":
                model.zero_grad(set_to_none=True)
            elif zero == "zero":
                model.zero_grad(set_to_none=False)
            else:
                model.w.grad = torch.full((3,), 0.5)
            x, weights = inputs_of(step)
            before = (model.w**2).sum()  # used before the call
            loss = (model(x * model.w) * weights).sum() + before
            loss = loss + (model.w * 3).sum()  # and after it
            loss.backward()
        assert_grads_equal(replayed, eager)


def test_parameter_hooks_see_the_replayed_gradient():
    """A hook on a parameter gets the full gradient (replayed and from
    outside) and may change it; a post-accumulate hook sees the final
    .grad, as eagerly."""
    eager, replayed = affine_pair()
    seen = {id(eager): [], id(replayed): []}
    for model in (eager, replayed):
        model.w.register_hook(lambda g: 2 * g)
        record = seen[id(model)]
        model.b.register_post_accumulate_grad_hook(
            lambda p, record=record: record.append(p.grad.clone())
        )
    for step, zero in enumerate(["none", "keep", "zero"]):
        for model in (eager, replayed):
            if zero == "none":
                model.zero_grad(set_to_none=True)
            elif zero == "zero":
                model.zero_grad(set_to_none=False)
            x, weights = inputs_of(step)
            ((model(x) * weights).sum() + model.b.sum()).backward()
        assert_grads_equal(replayed, eager)
    assert len(seen[id(replayed)]) == 3
    for got, expected in zip(seen[id(replayed)], seen[id(eager)]):
        torch.testing.assert_close(got, expected)


class FakeGraph:
    """Stands for a recorded CUDA graph on CPU: replay() runs a function."""

    def __init__(self, run):
        self.replay = run


def fake_recording(linear):
    """What GraphedTraining records for ``linear`` on inputs [4, 3], with
    the two graphs computed on CPU (the backward adds the parameter
    gradients into the buffers, as the recorded one does)."""
    from speechbrain_mamba.utils.graphed_training import _Recorded

    weight, bias = linear.weight, linear.bias
    x, out = torch.zeros(4, 3), torch.zeros(4, 2)
    grad_output, grad_x = torch.zeros(4, 2), torch.zeros(4, 3)
    buffers = (torch.full_like(weight, 9.0), torch.full_like(bias, 9.0))

    def forward():
        out.copy_(x @ weight.detach().T + bias.detach())

    def backward():
        grad_x.copy_(grad_output @ weight.detach())
        buffers[0].add_(grad_output.T @ x)
        buffers[1].add_(grad_output.sum(0))

    used = [(0, weight, buffers[0]), (1, bias, buffers[1])]
    recording = _Recorded(
        (x,), FakeGraph(forward), FakeGraph(backward), out, grad_output,
        (grad_x,), used,
    )  # fmt: skip
    return recording, buffers


def test_replay_node_hands_out_input_and_parameter_gradients():
    """_Replay's backward on CPU graphs: the input gets a fresh gradient,
    the parameters their buffers as .grad, an unused parameter none; the
    gradients equal eager ones over steps with and without zeroing."""
    from speechbrain_mamba.utils.graphed_training import (
        _AwaitingBackward,
        _Replay,
    )

    torch.manual_seed(0)
    eager = torch.nn.Linear(3, 2)
    eager.unused = torch.nn.Parameter(torch.ones(2))
    replayed = copy.deepcopy(eager)
    recording, buffers = fake_recording(replayed)
    params = (replayed.weight, replayed.bias, replayed.unused)
    for zero in ["none", "keep", "zero", "none"]:
        x, weights = torch.randn(4, 3), torch.randn(4, 2)
        x_eager, x_replayed = x.clone().requires_grad_(), x.requires_grad_()
        for model in (eager, replayed):
            if zero != "keep":
                model.zero_grad(set_to_none=zero == "none")
        (eager(x_eager) * weights).sum().backward()
        token = _AwaitingBackward()
        y = _Replay.apply(recording, token, 3, x_replayed, *params)
        torch.testing.assert_close(y, eager(x_eager))
        loss = (y * weights).sum()
        loss.backward(retain_graph=True)
        assert token.done
        torch.testing.assert_close(x_replayed.grad, x_eager.grad)
        assert x_replayed.grad is not recording.input_grads[0]
        assert replayed.weight.grad is buffers[0]
        assert replayed.bias.grad is buffers[1]
        assert replayed.unused.grad is None
        assert_grads_equal(replayed, eager)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()


# GPU: the gradients the shared buffers hold --------------------------------


class Tied(torch.nn.Module):
    """A gain used inside the graphed call and outside it, and a weight of
    the graphed network also used outside."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MambaTasNetMaskNet(
            32, out_channels=16, num_layers=2, cuda_graphs=False
        )
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 1.5, 32))

    def inner(self, x):
        return self.net(x * self.gain[:, None])

    def loss(self, call, x):
        before = (self.gain**2).sum()  # used before the graphed call
        y = call(x)
        weights = torch.linspace(-1, 1, y.numel(), device=y.device)
        after = (self.net.mask_conv1x1.weight * 0.3).sum()
        after = after + (x[:, :, 0] @ self.gain).sum()
        return before + (y.float() * weights.view_as(y)).sum() + after


@pytest.mark.gpu
def test_parameters_used_inside_and_outside_the_graphs(true_fp32):
    eager = Tied().cuda()
    graphed_module = copy.deepcopy(eager)
    graphed = GraphedTraining(graphed_module.inner, graphed_module)
    torch.manual_seed(1)
    for zero in ["none", "zero", "keep", "user", "keep", "none"]:
        x = torch.randn(2, 32, 200, device="cuda")
        for module in (eager, graphed_module):
            if zero == "none":
                module.zero_grad(set_to_none=True)
            elif zero == "zero":
                module.zero_grad(set_to_none=False)
            elif zero == "user":
                module.gain.grad = torch.full_like(module.gain, 0.1)
                weight = module.net.mask_conv1x1.weight
                weight.grad = torch.zeros_like(weight)
        eager.loss(eager.inner, x).backward()
        graphed_module.loss(graphed, x).backward()
        for name, grad in grads_of(eager).items():
            torch.testing.assert_close(
                grads_of(graphed_module)[name],
                grad,
                rtol=6e-4,
                atol=2e-3,
                msg=f"{zero}: {name}",
            )
    assert graphed.num_graphs == 1


def mlp(device="cuda"):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 64),
    ).to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("set_to_none", [True, False])
def test_optimizer_steps_after_replays_give_eager_weights(
    true_fp32, set_to_none
):
    eager = mlp()
    initial = copy.deepcopy(eager)
    graphed_net = copy.deepcopy(eager)
    graphed = GraphedTraining(graphed_net)
    optimizers = [
        torch.optim.Adam(net.parameters(), lr=1e-2)
        for net in (eager, graphed_net)
    ]
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(32, 64, device="cuda")
        target = torch.randn(32, 64, device="cuda")
        for call, optimizer in zip((eager, graphed), optimizers):
            optimizer.zero_grad(set_to_none=set_to_none)
            torch.nn.functional.mse_loss(call(x), target).backward()
            optimizer.step()
    assert graphed.num_graphs == 1
    for (name, p), p_ref, p_initial in zip(
        graphed_net.named_parameters(),
        eager.parameters(),
        initial.parameters(),
    ):
        assert not torch.equal(p_ref, p_initial), name  # the weights moved
        torch.testing.assert_close(p, p_ref, rtol=6e-4, atol=2e-3, msg=name)


@pytest.mark.gpu
def test_parameter_hooks_run_on_replayed_gradients(true_fp32):
    """A hook registered on a parameter changes its gradient and a
    post-accumulate hook sees the final .grad, as eagerly."""
    eager = mlp()
    graphed_net = copy.deepcopy(eager)
    graphed = GraphedTraining(graphed_net)
    seen = {id(eager): [], id(graphed_net): []}
    for net in (eager, graphed_net):
        net[0].weight.register_hook(lambda g: 2 * g)
        record = seen[id(net)]
        net[2].bias.register_post_accumulate_grad_hook(
            lambda p, record=record: record.append(p.grad.clone())
        )
    torch.manual_seed(1)
    for zero in ["none", "keep", "zero"]:
        x = torch.randn(32, 64, device="cuda")
        for net, call in ((eager, eager), (graphed_net, graphed)):
            if zero != "keep":
                net.zero_grad(set_to_none=zero == "none")
            call(x).pow(2).mean().backward()
        for (name, p), p_ref in zip(
            graphed_net.named_parameters(), eager.parameters()
        ):
            torch.testing.assert_close(
                p.grad, p_ref.grad, rtol=6e-4, atol=2e-3, msg=name
            )
    assert graphed.num_graphs == 1
    assert len(seen[id(graphed_net)]) == 3
    for got, expected in zip(seen[id(graphed_net)], seen[id(eager)]):
        torch.testing.assert_close(got, expected, rtol=6e-4, atol=2e-3)


@pytest.mark.gpu
def test_replayed_steps_hold_no_second_copy_of_the_gradients():
    """Memory of a model whose parameters dominate (48 Linear 4096 x 4096,
    P = 3.2 GB of fp32 parameters): a replayed training step needs less
    than 0.1 P more than the eager step (the gradients are added into the
    buffers that are .grad, no copy), the recording step less than 1.2 P
    more. Peaks of reserved memory (the graphs' pool is reserved, not
    allocated, while replays run), from an emptied cache."""
    import gc

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        *[torch.nn.Linear(4096, 4096) for _ in range(48)]
    ).cuda()
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    x = torch.randn(64, 4096, device="cuda")

    def peak(call):
        net.zero_grad(set_to_none=True)  # as Brain after each step
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        call(x).square().mean().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_reserved()

    peak(net)  # cuBLAS's workspace, kept, in every measurement
    eager = peak(net)
    graphed = GraphedTraining(net)
    recording = peak(graphed)
    replays = [peak(graphed) for _ in range(2)]
    assert graphed.num_graphs == 1
    gib = 2**30
    report = (
        f"P {size / gib:.2f} GiB, eager {eager / gib:.2f}, recording "
        f"{recording / gib:.2f}, replays {[r / gib for r in replays]}"
    )
    assert recording - eager < 1.2 * size, report
    assert max(replays) - eager < 0.1 * size, report
