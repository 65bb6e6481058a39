"""Mamba-TasNet's self-recorded inference graphs
(:mod:`speechbrain_mamba.utils.graphed_inference`).

On CPU: the bucketed call the graphs record (time padded up to a bucket,
valid lengths passed on) gives the masks of the plain call. On a GPU: the
replayed call gives the eager masks, one graph serves a whole bucket, the
bound on graphs falls back to eager calls, weight updates (in place or by a
new Parameter) are seen by the next call, and SpeechBrain's unmodified
``SepformerSeparation.separate_batch`` separates as the eager model does.
"""

import copy

import pytest
import torch

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.utils.graphed_inference import bucket_length

CHANNELS = 16


def small_masknet(**kwargs) -> MambaTasNetMaskNet:
    return MambaTasNetMaskNet(CHANNELS, num_layers=2, d_state=4, **kwargs)


def test_buckets_cover_every_length_with_less_than_an_eighth_padding():
    buckets = [bucket_length(n) for n in range(1, 20000)]
    assert all(b >= n for n, b in zip(range(1, 20000), buckets))
    assert all(b < 1.125 * n for n, b in zip(range(1, 20000), buckets))
    assert buckets == sorted(buckets)
    assert all(bucket_length(b) == b for b in set(buckets))
    # 8 buckets per octave: few graphs for a corpus of 2 to 10 s
    assert len({bucket_length(n) for n in range(2000, 10001)}) <= 20
    with pytest.raises(ValueError, match="length must be >= 1"):
        bucket_length(0)


@pytest.mark.parametrize("activation", ["relu", "softmax"])
@pytest.mark.parametrize("time", [17, 37, 100, 130])
def test_bucketed_call_gives_the_plain_masks_on_cpu(time, activation):
    assert bucket_length(time) > time  # the bucketed call really pads
    masknet = small_masknet(mask_activation=activation).eval()
    x = torch.randn(3, CHANNELS, time)
    with torch.no_grad():
        plain = masknet(x)
        bucketed = masknet.bucketed_forward(x)
    assert masknet.num_cuda_graphs == 0  # CPU: eager
    assert bucketed.shape == plain.shape == (2, 3, CHANNELS, time)
    torch.testing.assert_close(bucketed, plain, rtol=1e-5, atol=1e-6)


def test_bucketed_call_keeps_each_items_lengths_on_cpu():
    masknet = small_masknet().eval()
    x = torch.randn(3, CHANNELS, 45)
    lengths = torch.tensor([1.0, 0.6, 0.3])
    with torch.no_grad():
        plain = masknet(x, lengths)
        bucketed = masknet.bucketed_forward(x, lengths)
        alone = masknet(x[1:2, :, :27])
    torch.testing.assert_close(bucketed, plain, rtol=1e-5, atol=1e-6)
    # the padded item equals the item run alone; its padding is masked
    torch.testing.assert_close(
        bucketed[:, 1, :, :27], alone[:, 0], rtol=1e-5, atol=1e-6
    )
    assert bool((bucketed[:, 2, :, 14:] == 0).all())


def test_copies_of_a_masknet_leave_the_graphs_out():
    masknet = small_masknet()
    masknet._graphed = object()  # stands for recorded graphs
    clone = copy.deepcopy(masknet)
    assert clone._graphed is None and masknet._graphed is not None
    assert clone.cuda_graphs and clone.max_cuda_graphs == 16


# GPU: the replayed call -----------------------------------------------------


def cuda_masknet(**kwargs) -> MambaTasNetMaskNet:
    return small_masknet(**kwargs).cuda().eval()


def eager(masknet, x, lengths=None):
    """The masks of the eager call (graphs switched off for it)."""
    masknet.cuda_graphs = False
    try:
        return masknet(x, lengths)
    finally:
        masknet.cuda_graphs = True


@pytest.mark.gpu
def test_replayed_masks_equal_eager_fp32(true_fp32):
    masknet = cuda_masknet()
    x = torch.randn(2, CHANNELS, 300, device="cuda")
    lengths = torch.tensor([1.0, 0.7], device="cuda")
    with torch.no_grad():
        for _ in range(2):  # the recording call, then a replay
            graphed = masknet(x)
            graphed_lengths = masknet(x, lengths)
        reference = eager(masknet, x)
        reference_lengths = eager(masknet, x, lengths)
    assert masknet.num_cuda_graphs == 1  # both calls pad to one bucket
    torch.testing.assert_close(graphed, reference, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(
        graphed_lengths, reference_lengths, rtol=6e-4, atol=2e-3
    )


@pytest.mark.gpu
def test_replayed_masks_equal_eager_under_bf16_autocast(true_fp32):
    masknet = cuda_masknet()
    x = torch.randn(1, CHANNELS, 500, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        graphed = [masknet(x) for _ in range(2)][-1]
        # the eager call the graph recorded (same padded shapes)
        bucketed = masknet.bucketed_forward(x)
        plain = eager(masknet, x)
    with torch.inference_mode():
        fp32 = masknet(x)
    # autocast is part of the key: bf16 and fp32 calls have graphs each
    assert masknet.num_cuda_graphs == 2
    print(
        "bf16 max |graphed - bucketed|",
        (graphed.float() - bucketed.float()).abs().max().item(),
        "max |graphed - plain|",
        (graphed.float() - plain.float()).abs().max().item(),
        "mean",
        (graphed.float() - plain.float()).abs().mean().item(),
    )
    torch.testing.assert_close(
        graphed.float(), bucketed.float(), rtol=1e-2, atol=1e-2
    )
    # against the unpadded call: bf16 matmuls of other shapes round
    # differently, so compare the average error
    assert (graphed.float() - plain.float()).abs().mean() < 1e-2
    torch.testing.assert_close(fp32, eager(masknet, x), rtol=6e-4, atol=2e-3)


@pytest.mark.gpu
def test_lengths_of_one_bucket_replay_one_graph(true_fp32):
    masknet = cuda_masknet()
    assert {bucket_length(t) for t in (1000, 1010, 1024)} == {1024}
    with torch.no_grad():
        for time in (1000, 1010, 1024, 1000):
            x = torch.randn(1, CHANNELS, time, device="cuda")
            graphed = masknet(x)
            torch.testing.assert_close(
                graphed, eager(masknet, x), rtol=6e-4, atol=2e-3
            )
            assert graphed.shape[-1] == time
    assert masknet.num_cuda_graphs == 1


@pytest.mark.gpu
def test_keys_beyond_the_bound_run_eagerly(true_fp32):
    masknet = cuda_masknet(max_cuda_graphs=1)
    first = torch.randn(1, CHANNELS, 100, device="cuda")
    second = torch.randn(2, CHANNELS, 300, device="cuda")
    with torch.no_grad():
        masknet(first)
        out = masknet(second)
    assert masknet.num_cuda_graphs == 1
    torch.testing.assert_close(
        out, eager(masknet, second), rtol=6e-4, atol=2e-3
    )


@pytest.mark.gpu
def test_weight_updates_are_seen_by_the_replay(true_fp32):
    masknet = cuda_masknet()
    x = torch.randn(1, CHANNELS, 200, device="cuda")
    with torch.no_grad():
        before = masknet(x).clone()
    # in place: load_state_dict copies into the recorded parameters
    other = small_masknet().cuda()
    masknet.load_state_dict(other.state_dict())
    with torch.no_grad():
        loaded = masknet(x)
    assert masknet.num_cuda_graphs == 1
    assert (loaded - before).abs().max() > 1e-2
    torch.testing.assert_close(loaded, eager(masknet, x), rtol=6e-4, atol=2e-3)
    # in place: an optimizer step
    optimizer = torch.optim.SGD(masknet.parameters(), lr=0.01)
    masknet.train()
    eager(masknet, x).sum().backward()
    optimizer.step()
    masknet.eval()
    with torch.no_grad():
        stepped = masknet(x)
    assert (stepped - loaded).abs().max() > 1e-2
    torch.testing.assert_close(stepped, eager(masknet, x), rtol=6e-4, atol=2e-3)
    # a new Parameter object: the graphs are dropped and recorded again
    weight = masknet.mask_conv1x1.weight
    masknet.mask_conv1x1.weight = torch.nn.Parameter(weight.detach() * -1)
    with torch.no_grad():
        replaced = masknet(x)
    assert masknet.num_cuda_graphs == 1
    assert (replaced - stepped).abs().max() > 1e-2
    torch.testing.assert_close(
        replaced, eager(masknet, x), rtol=6e-4, atol=2e-3
    )


@pytest.mark.gpu
def test_gradient_calls_use_no_inference_graph():
    masknet = cuda_masknet().train()
    x = torch.randn(1, CHANNELS, 100, device="cuda")
    masknet(x).sum().backward()
    masknet.eval()
    masknet(x)  # eval, but the parameters need gradients
    graphs = masknet._graphed
    assert graphs._inference is None  # autograd: the training graphs
    assert masknet.mask_conv1x1.weight.grad is not None


@pytest.mark.gpu
def test_separate_batch_of_speechbrain_gives_the_eager_estimates(true_fp32):
    from speechbrain.inference.separation import SepformerSeparation
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    modules = {
        "encoder": Encoder(kernel_size=16, out_channels=CHANNELS),
        "masknet": small_masknet(),
        "decoder": Decoder(CHANNELS, 1, kernel_size=16, stride=8, bias=False),
    }
    separator = SepformerSeparation(
        modules=modules, hparams={"num_spks": 2}, run_opts={"device": "cuda"}
    )
    mix = torch.randn(2, 4000)
    # 499 and 486 encoder frames: both padded to 512
    for time in (4000, 3900, 4000):  # recording, the same bucket, a replay
        graphed = separator.separate_batch(mix[:, :time])
    masknet = separator.mods.masknet
    assert masknet.num_cuda_graphs == 1
    masknet.cuda_graphs = False
    reference = separator.separate_batch(mix)
    assert graphed.shape == reference.shape == (2, 4000, 2)
    torch.testing.assert_close(graphed, reference, rtol=6e-4, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("flag", [[], ["--no-masknet-graphs"]])
def test_efficiency_study_times_the_self_graphed_masknet(tmp_path, flag):
    """By default the study's Mamba-TasNet inference rows replay the mask
    net's own graph (SpeechBrain's inference path); --no-masknet-graphs
    times it eagerly."""
    import csv

    from speechbrain_mamba.benchmarks import efficiency

    out = tmp_path / "eff"
    efficiency.main(
        [
            "--out", str(out), "--tasks", "separation", "--seconds", "0.5",
            "--modes", "infer", "--dtypes", "float32", "--device", "cuda",
            "--repeats", "2", *flag,
        ]
    )  # fmt: skip
    with open(out / "results.csv", newline="") as f:
        graphs = {r["role"]: int(r["self_graphs"]) for r in csv.DictReader(f)}
    assert graphs == {"mamba": 0 if flag else 1, "peer": 0}


@pytest.mark.gpu
def test_layer_capture_hooks_see_every_call():
    """Forward hooks on the blocks (LayerCapture) need eager calls: a
    replay would not run them."""
    from speechbrain_mamba.utils.layer_capture import capture_layers

    masknet = cuda_masknet()
    x = torch.randn(1, CHANNELS, 100, device="cuda")
    with torch.no_grad():
        masknet(x)  # recorded
        states = capture_layers(masknet, lambda: masknet(x))
        plain = capture_layers(masknet, lambda: eager(masknet, x))
    assert masknet.num_cuda_graphs == 1
    assert list(states) == list(plain) and len(states) == 2
    for got, expected in zip(states.values(), plain.values()):
        torch.testing.assert_close(got, expected, rtol=6e-4, atol=2e-3)
