"""Tests of the converter for the Mamba-TasNet authors' checkpoints.

The authors' MaskNet is re-implemented here with plain tensor operations on
their own state-dict keys (ChannelwiseLayerNorm with gamma/beta, SpeechBrain
Conv1d wrappers, mamba_ssm pre-norm blocks with RMSNorm, Vision-Mamba
"bimamba v2" mixers whose backward branch runs on the flipped in_proj output
and whose outputs are averaged before out_proj), and compared with our model
after conversion."""

import math

import pytest
import torch
import torch.nn.functional as F
from speechbrain.lobes.models.dual_path import Decoder, Encoder

from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
from speechbrain_mamba.separation.converter import (
    convert_state_dict,
    infer_config,
    load_authors_masknet,
    main,
)


def authors_state_dict(
    enc=12, bot=8, layers=2, spk=2, d_state=4, expand=2, d_conv=4, dt_rank=None
):
    """A state dict with the authors' key names and shapes (random values,
    with the structure a trained model has)."""
    g = torch.Generator().manual_seed(1)

    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    d_inner = expand * bot
    rank = dt_rank or math.ceil(bot / 16)
    sd = {
        "layer_norm.gamma": 1 + rnd(1, 1, enc, scale=0.1),
        "layer_norm.beta": rnd(1, 1, enc, scale=0.1),
        "bottleneck_conv1x1.conv.weight": rnd(bot, enc, 1),
        "mask_conv1x1.conv.weight": rnd(spk * enc, bot, 1),
        "mamba_net.norm_f.weight": 1 + rnd(bot, scale=0.1),
    }
    for i in range(layers):
        p = f"mamba_net.layers.{i}."
        sd[p + "norm.weight"] = 1 + rnd(bot, scale=0.1)
        sd[p + "mixer.in_proj.weight"] = rnd(2 * d_inner, bot)
        sd[p + "mixer.out_proj.weight"] = rnd(bot, d_inner)
        for s in ("", "_b"):
            sd[p + f"mixer.conv1d{s}.weight"] = rnd(d_inner, 1, d_conv)
            sd[p + f"mixer.conv1d{s}.bias"] = rnd(d_inner)
            sd[p + f"mixer.x_proj{s}.weight"] = rnd(rank + 2 * d_state, d_inner)
            sd[p + f"mixer.dt_proj{s}.weight"] = rnd(d_inner, rank)
            dt = torch.exp(
                torch.rand(d_inner, generator=g) * math.log(100)
                + math.log(1e-3)
            )
            sd[p + f"mixer.dt_proj{s}.bias"] = dt + torch.log(-torch.expm1(-dt))
            a_log = torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1)
            name = "A_log" if s == "" else "A_b_log"
            sd[p + f"mixer.{name}"] = a_log + rnd(d_inner, d_state, scale=0.05)
            sd[p + f"mixer.D{s}"] = 1 + rnd(d_inner, scale=0.1)
    return sd


# --- the authors' formulation, on their keys --------------------------------
def _selective_scan(u, delta, A, B, C, D, z, delta_bias):
    """u, delta, z: [b, d, l]; A: [d, n]; B, C: [b, n, l]."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (
            delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        )
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * F.silu(z)


def _inner_no_out_proj(xz, sd, p, s, d_state):
    """mamba_inner_fn_no_out_proj of one direction; xz: [b, 2 d_inner, l]."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    w = sd[p + f"conv1d{s}.weight"]
    x = F.conv1d(
        x,
        w,
        sd[p + f"conv1d{s}.bias"],
        padding=w.shape[-1] - 1,
        groups=w.shape[0],
    )[..., :length]
    x = F.silu(x)
    x_dbl = x.transpose(1, 2) @ sd[p + f"x_proj{s}.weight"].t()
    rank = sd[p + f"dt_proj{s}.weight"].shape[1]
    dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    delta = (dt @ sd[p + f"dt_proj{s}.weight"].t()).transpose(1, 2)
    A = -torch.exp(sd[p + ("A_log" if s == "" else "A_b_log")])
    return _selective_scan(
        x,
        delta,
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        sd[p + f"D{s}"],
        z,
        sd[p + f"dt_proj{s}.bias"],
    )


def _bimamba_v2(hidden, sd, p, d_state):
    xz = (hidden @ sd[p + "in_proj.weight"].t()).transpose(1, 2)
    out = _inner_no_out_proj(xz, sd, p, "", d_state)
    out_b = _inner_no_out_proj(xz.flip([-1]), sd, p, "_b", d_state)
    y = (0.5 * out + 0.5 * out_b.flip([-1])).transpose(1, 2)
    return y @ sd[p + "out_proj.weight"].t()


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def authors_masknet(sd, mixture_w, layers, spk, d_state):
    x = mixture_w.permute(0, 2, 1)  # [B, L, N]
    b, length, n = x.shape
    mean = x.mean(2, keepdim=True)
    var = x.var(2, keepdim=True, unbiased=False)
    y = sd["layer_norm.gamma"] * (x - mean) / torch.pow(var + 1e-8, 0.5)
    y = y + sd["layer_norm.beta"]
    y = y @ sd["bottleneck_conv1x1.conv.weight"][:, :, 0].t()
    hidden, residual = y, None
    for i in range(layers):
        p = f"mamba_net.layers.{i}."
        residual = hidden + residual if residual is not None else hidden
        hidden = _rms(residual, sd[p + "norm.weight"])
        hidden = _bimamba_v2(hidden, sd, p + "mixer.", d_state)
    residual = hidden + residual
    hidden = _rms(residual, sd["mamba_net.norm_f.weight"])
    score = hidden @ sd["mask_conv1x1.conv.weight"][:, :, 0].t()
    score = score.reshape(b, length, spk, n).permute(2, 0, 3, 1)
    return F.relu(score)


# --- tests -------------------------------------------------------------------
@pytest.mark.parametrize("dt_rank", [None, 3])
def test_converted_model_equals_authors_formulation(dt_rank):
    sd = authors_state_dict(dt_rank=dt_rank)
    config = infer_config(sd)
    assert config["in_channels"] == 12 and config["out_channels"] == 8
    assert config["num_layers"] == 2 and config["num_spks"] == 2
    assert config["d_state"] == 4 and config["expand"] == 2
    assert config["bidirectional"] and config["norm"] == "rmsnorm"
    assert config.get("dt_rank") == dt_rank
    model = MambaTasNetMaskNet(**config).eval()
    model.load_state_dict(convert_state_dict(sd), strict=True)
    x = torch.rand(2, 12, 23)
    with torch.no_grad():
        ours = model(x)
    ref = authors_masknet(sd, x, layers=2, spk=2, d_state=4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_load_with_module_prefix_and_file(tmp_path):
    sd = {f"module.{k}": v for k, v in authors_state_dict().items()}
    torch.save(sd, tmp_path / "masknet.ckpt")
    model = load_authors_masknet(tmp_path / "masknet.ckpt")
    x = torch.rand(1, 12, 9)
    ref = authors_masknet(authors_state_dict(), x, 2, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_unsupported_keys_are_reported():
    sd = authors_state_dict()
    sd["mamba_net.layers.0.mixer.gamma"] = torch.ones(8)
    with pytest.raises(KeyError, match="mixer.gamma"):
        convert_state_dict(sd)
    with pytest.raises(KeyError, match="missing layer_norm.gamma"):
        infer_config({"foo": torch.ones(1)})


def test_checkpoint_folder_to_hub_folder(tmp_path):
    """Converts a folder of authors' checkpoints and loads it with
    SpeechBrain's SepformerSeparation offline."""
    from speechbrain.inference.separation import SepformerSeparation

    sd = authors_state_dict()
    encoder = Encoder(kernel_size=16, out_channels=12)
    decoder = Decoder(
        in_channels=12, out_channels=1, kernel_size=16, stride=8, bias=False
    )
    ckpt = tmp_path / "CKPT+release"
    ckpt.mkdir()
    torch.save(sd, ckpt / "masknet.ckpt")
    torch.save(encoder.state_dict(), ckpt / "encoder.ckpt")
    torch.save(decoder.state_dict(), ckpt / "decoder.ckpt")
    out = tmp_path / "hub"
    assert main(["--ckpt-dir", str(ckpt), "--out", str(out)]) == 0
    assert (out / "README.md").is_file()

    model = SepformerSeparation.from_hparams(
        source=str(out), savedir=str(tmp_path / "saved")
    )
    mix = torch.randn(1, 400)
    est = model.separate_batch(mix)
    with torch.no_grad():
        mix_w = encoder(mix)
        masks = authors_masknet(sd, mix_w, 2, 2, 4)
        ref = torch.stack([decoder(mix_w * masks[k]) for k in range(2)], -1)
    ref = F.pad(ref, (0, 0, 0, 400 - ref.shape[1]))
    torch.testing.assert_close(est, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(FileExistsError):
        main(["--ckpt-dir", str(ckpt), "--out", str(out)])
