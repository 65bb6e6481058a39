"""A plain, loop-by-loop Mamba written from the paper's equations.

Used by the tests as ground truth for the layers in speechbrain_mamba.nnet:
no blocking, no kernels, explicit loops over time and conv taps.
"""

import torch
import torch.nn.functional as F


def reference_direction(layer, x, z, suffix=""):
    """One direction of a Mamba layer. x, z: [batch, time, d_inner]."""
    conv = getattr(layer, f"conv1d{suffix}")
    x_proj = getattr(layer, f"x_proj{suffix}")
    dt_proj = getattr(layer, f"dt_proj{suffix}")
    A_name = "A_log" if suffix == "" else f"A{suffix}_log"
    A = -torch.exp(getattr(layer, A_name))  # [d_inner, d_state]
    D = getattr(layer, f"D{suffix}")
    batch, time, d_inner = x.shape
    taps = conv.weight.shape[-1]
    outputs = []
    h = x.new_zeros(batch, d_inner, A.shape[1])
    for t in range(time):
        # causal depthwise conv over the last `taps` inputs (zeros before 0)
        acc = conv.bias.expand(batch, d_inner).clone()
        for k in range(taps):
            source = t - (taps - 1) + k
            if source >= 0:
                acc = acc + conv.weight[:, 0, k] * x[:, source]
        u = F.silu(acc)
        dt_low, B, C = torch.split(
            x_proj(u), [layer.dt_rank, layer.d_state, layer.d_state], dim=-1
        )
        delta = F.softplus(dt_proj(dt_low))  # with its bias
        h = torch.exp(delta[..., None] * A) * h + (
            delta[..., None] * B[:, None, :] * u[..., None]
        )
        y = (h * C[:, None, :]).sum(-1) + D * u
        outputs.append(y * F.silu(z[:, t]))
    return torch.stack(outputs, dim=1)


def reference_mamba(layer, x):
    """Full unidirectional Mamba layer."""
    x_in, z = layer.in_proj(x).chunk(2, dim=-1)
    return layer.out_proj(reference_direction(layer, x_in, z))


def reference_bimamba(layer, x):
    """Full bidirectional layer (whole-sequence flip for the backward)."""
    x_in, z = layer.in_proj(x).chunk(2, dim=-1)
    forward = reference_direction(layer, x_in, z)
    backward = reference_direction(layer, x_in.flip(1), z.flip(1), "_b")
    y = forward + backward.flip(1)
    if layer.combine == "mean":
        y = y / 2
    return layer.out_proj(y)
