"""Layer capture by forward hooks: one [N_valid, D] tensor per layer."""

import pytest
import torch
from speechbrain.lobes.models.transformer.Conformer import ConformerEncoder
from torch import nn

from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder
from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.lobes.ssl.hubert import HuBERTModel
from speechbrain_mamba.nnet import MambaStack
from speechbrain_mamba.utils.layer_capture import (
    LayerCapture,
    capture_layers,
    output_to_tensor,
    resolve_layers,
    valid_frames,
)

LENGTHS = torch.tensor([1.0, 0.6, 0.3])


@pytest.fixture(autouse=True)
def _tiny_cpu_setup(monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")  # no one-off numba compilation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


T = 10
FRAMES = [10, 6, 3]


def padding_mask(lengths, time):
    frames = torch.round(lengths * time).long()
    return torch.arange(time)[None] >= frames[:, None]


def test_mamba_stack_layers_shapes_and_padding():
    stack = MambaStack(16, 3, d_state=4).eval()
    x = torch.randn(3, T, 16)
    with LayerCapture(stack, "layers.*", capture_input=True) as cap:
        out = stack(x, lengths=LENGTHS)
    states = cap.valid_frames(LENGTHS)
    assert cap.names == ["layers.0", "layers.1", "layers.2"]
    assert [tuple(s.shape) for s in states] == [(sum(FRAMES), 16)] * 3
    # the residual stream after the last block, normalised, is the output
    expected = valid_frames(out, LENGTHS)
    torch.testing.assert_close(stack.norm_f(states[-1]), expected)
    torch.testing.assert_close(
        cap.input_frames(LENGTHS), valid_frames(x, LENGTHS)
    )
    # the valid frames of item 1 equal running it alone
    with LayerCapture(stack, "auto") as alone:
        stack(x[1:2, :6])
    for batched, single in zip(states, alone.valid_frames()):
        torch.testing.assert_close(batched[10:16], single, atol=1e-5, rtol=1e-4)
    # hooks are gone after the block
    assert all(not m._forward_hooks for _, m in cap.layers)


def test_speechbrain_conformer_encoder():
    enc = ConformerEncoder(
        num_layers=2,
        d_model=16,
        d_ffn=32,
        nhead=2,
        kernel_size=3,
        attention_type="regularMHA",
    ).eval()
    x = torch.randn(3, T, 16)
    with LayerCapture(enc, "layers.*") as cap:
        enc(x, src_key_padding_mask=padding_mask(LENGTHS, T))
    states = cap.valid_frames(LENGTHS)
    assert len(states) == 2  # tuple outputs (x, attention) -> x
    assert all(s.shape == (sum(FRAMES), 16) for s in states)
    assert all(torch.isfinite(s).all() for s in states)


def test_conmamba_encoder_matches_unpadded_run():
    enc = ConMambaEncoder(3, 16, 32, kernel_size=3).eval()
    x = torch.randn(3, T, 16)
    with LayerCapture(enc, "auto") as cap:
        enc(x, src_key_padding_mask=padding_mask(LENGTHS, T))
    states = cap.valid_frames(LENGTHS)
    assert [s.shape for s in states] == [torch.Size([sum(FRAMES), 16])] * 3
    alone = capture_layers(enc, lambda: enc(x[2:3, :3]), "layers.*")
    for batched, single in zip(states, alone.values()):
        torch.testing.assert_close(batched[16:19], single, atol=1e-5, rtol=1e-4)


def test_tasnet_masknet_channels_and_auto_layers():
    masknet = MambaTasNetMaskNet(8, out_channels=12, num_layers=2, num_spks=1)
    x = torch.rand(3, 8, T)  # encoder output [B, N, L]
    names = [n for n, _ in resolve_layers(masknet, "auto")]
    assert names == ["mamba_net.layers.0", "mamba_net.layers.1"]
    out = capture_layers(masknet, lambda: masknet(x, LENGTHS), lengths=LENGTHS)
    assert [tuple(v.shape) for v in out.values()] == [(sum(FRAMES), 12)] * 2


def test_ssl_model_layer_names():
    model = HuBERTModel(
        5,
        "conmamba",
        d_model=16,
        num_layers=2,
        conv_layers=((8, 10, 5), (8, 4, 4)),
        d_ffn=32,
        kernel_size=3,
        d_state=4,
    ).eval()
    wavs = torch.randn(2, 1600)
    lens = torch.tensor([1.0, 0.5])
    with LayerCapture(model, model.layer_names()) as cap:
        out = model(wavs, lens)
    states = cap.valid_frames(out.lengths)
    assert model.layer_names() == [
        "encoder.net.layers.0",
        "encoder.net.layers.1",
    ]
    assert len(states) == 2
    assert states[0].shape == (int(out.frames.sum()), 16)
    # the padded item's captured frames are those of the item run alone
    first = int(out.frames[0])
    with LayerCapture(model, model.layer_names()) as cap:
        alone = model(wavs[1:, :800], None)
    assert first + int(alone.frames[0]) == int(out.frames.sum())
    for batched, single in zip(states, cap.valid_frames(alone.lengths)):
        torch.testing.assert_close(
            batched[first:], single, atol=1e-5, rtol=1e-4
        )


def test_channels_first_and_tuple_modes():
    x = torch.arange(24.0).view(2, 3, 4)  # [B, D, T]
    flat = valid_frames(x, torch.tensor([1.0, 0.5]), channels_first=True)
    assert flat.shape == (6, 3)
    torch.testing.assert_close(flat[0], x[0, :, 0])
    a, b = torch.ones(1, 2, 3), 2 * torch.ones(1, 2, 3)
    assert output_to_tensor((a, b), mode="sum").eq(3).all()
    assert output_to_tensor([a, b], mode="first").eq(1).all()


def test_errors():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="matches no sub-module"):
        resolve_layers(net, "encoder.*")
    with pytest.raises(ValueError, match="no sub-modules named"):
        resolve_layers(net, ["7"])
    with pytest.raises(ValueError, match="layers"):
        resolve_layers(net, "auto")
    cap = LayerCapture(net, "*")
    with pytest.raises(RuntimeError, match="nothing was captured"):
        cap.valid_frames()
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        capture_layers(net, lambda: net(torch.randn(2, 3, 5, 4)), "*")
    with pytest.raises(ValueError, match="tuple_mode"):
        LayerCapture(net, "*", tuple_mode="mean")
