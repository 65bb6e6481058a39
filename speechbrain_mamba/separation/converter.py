"""Converter for the Mamba-TasNet checkpoints released by the paper authors
(github.com/xi-j/Mamba-TasNet) to :class:`~speechbrain_mamba.lobes.
mamba_tasnet.MambaTasNetMaskNet`.

The authors' ``MaskNet`` state dict has

- ``layer_norm.gamma`` / ``layer_norm.beta`` (``[1, 1, N]``, SpeechBrain's
  ``ChannelwiseLayerNorm``, a per-frame LayerNorm over channels);
- ``bottleneck_conv1x1.conv.weight`` and ``mask_conv1x1.conv.weight``
  (SpeechBrain ``Conv1d`` wrappers, kernel 1, no bias);
- ``mamba_net.layers.<i>.mixer.*`` (Vision-Mamba "bimamba v2" mixers:
  ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, their
  ``_b`` backward twins, ``out_proj``), ``mamba_net.layers.<i>.norm.weight``
  (RMSNorm) and ``mamba_net.norm_f.weight``, in mamba_ssm's pre-norm
  ``Block`` / ``create_block`` layout.

The mixers' names and shapes equal ours, so the conversion renames the
normalisation and 1x1-convolution entries and checks every tensor. The
model configuration (sizes, layers, speakers) is read from the shapes.
Their encoder and decoder are SpeechBrain's ``Encoder`` / ``Decoder`` and
load unchanged.

Command line (a folder with the authors' ``encoder.ckpt``, ``masknet.ckpt``
and ``decoder.ckpt``, e.g. a ``CKPT+...`` folder of their release)::

    python -m speechbrain_mamba.separation.converter --ckpt-dir DIR \\
        --out HUB_FOLDER [--sample-rate 8000] [--name NAME] [--force]

writes a hub folder (see :mod:`speechbrain_mamba.separation.export`).

Author
------
speechbrain-mamba developers
"""

import argparse
import math
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import torch

from speechbrain_mamba.utils.io import PathLike

_LAYER = re.compile(r"^mamba_net\.layers\.(\d+)\.(mixer|norm)\.(.+)$")
MIXER_KEYS = (
    "in_proj.weight",
    "in_proj.bias",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "conv1d_b.weight",
    "conv1d_b.bias",
    "x_proj_b.weight",
    "dt_proj_b.weight",
    "dt_proj_b.bias",
    "A_b_log",
    "D_b",
    "out_proj.weight",
    "out_proj.bias",
)


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Drops a ``module.`` (DDP) prefix."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Reads the MaskNet configuration from an authors' state dict.

    Arguments
    ---------
    state_dict : mapping
        The authors' ``MaskNet`` state dict.

    Returns
    -------
    dict
        Keyword arguments of ``MambaTasNetMaskNet``.

    Example
    -------
    >>> infer_config({"layer_norm.gamma": torch.ones(1, 1, 4)})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    KeyError: "not an authors' Mamba-TasNet MaskNet state dict: missing ..."
    """
    sd = _strip_prefix(state_dict)
    for key in (
        "layer_norm.gamma",
        "bottleneck_conv1x1.conv.weight",
        "mask_conv1x1.conv.weight",
        "mamba_net.norm_f.weight",
    ):
        if key not in sd:
            raise KeyError(
                "not an authors' Mamba-TasNet MaskNet state dict: missing "
                + key
            )
    in_channels = sd["layer_norm.gamma"].shape[-1]
    out_channels = sd["bottleneck_conv1x1.conv.weight"].shape[0]
    layers = sorted(
        {int(m.group(1)) for k in sd if (m := _LAYER.match(k)) is not None}
    )
    if not layers or layers != list(range(len(layers))):
        raise KeyError("mamba_net.layers.<i> entries are missing or not 0..N-1")
    prefix = "mamba_net.layers.0.mixer."
    d_inner = sd[prefix + "in_proj.weight"].shape[0] // 2
    if d_inner % out_channels:
        raise ValueError(
            f"inner width {d_inner} is not a multiple of {out_channels}"
        )
    dt_rank = sd[prefix + "dt_proj.weight"].shape[1]
    num_spks, rem = divmod(sd["mask_conv1x1.conv.weight"].shape[0], in_channels)
    if rem:
        raise ValueError("mask_conv1x1 output is not a multiple of in_channels")
    config = {
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "num_layers": len(layers),
        "num_spks": int(num_spks),
        "d_state": int(sd[prefix + "A_log"].shape[1]),
        "d_conv": int(sd[prefix + "conv1d.weight"].shape[2]),
        "expand": d_inner // out_channels,
        "bidirectional": prefix + "A_b_log" in sd,
        "norm": (
            "layernorm" if "mamba_net.layers.0.norm.bias" in sd else "rmsnorm"
        ),
        "conv_bias": prefix + "conv1d.bias" in sd,
        "bias": prefix + "in_proj.bias" in sd,
    }
    if dt_rank != math.ceil(out_channels / 16):
        config["dt_rank"] = int(dt_rank)
    return config


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Renames an authors' MaskNet state dict to ``MambaTasNetMaskNet``'s.

    Arguments
    ---------
    state_dict : mapping
        The authors' ``MaskNet`` state dict (a ``module.`` prefix is
        dropped).

    Returns
    -------
    dict
        State dict for ``MambaTasNetMaskNet(**infer_config(state_dict))``
        (load it with ``strict=True``).
    """
    sd = _strip_prefix(state_dict)
    out = {}
    for key, value in sd.items():
        if key == "layer_norm.gamma":
            out["layer_norm.weight"] = value.reshape(-1).clone()
        elif key == "layer_norm.beta":
            out["layer_norm.bias"] = value.reshape(-1).clone()
        elif key in (
            "bottleneck_conv1x1.conv.weight",
            "mask_conv1x1.conv.weight",
        ):
            out[key.replace(".conv.", ".")] = value.clone()
        elif key.startswith("mamba_net.norm_f."):
            out[key] = value.clone()
        else:
            match = _LAYER.match(key)
            if match is None or (
                match.group(2) == "mixer" and match.group(3) not in MIXER_KEYS
            ):
                raise KeyError(
                    f"unexpected entry {key!r} in the authors' state dict "
                    "(unsupported variant, e.g. layer scale)"
                )
            out[key] = value.clone()
    return out


def load_authors_masknet(source, map_location: str = "cpu") -> torch.nn.Module:
    """Builds a ``MambaTasNetMaskNet`` holding an authors' checkpoint.

    Arguments
    ---------
    source : str, os.PathLike or mapping
        ``masknet.ckpt`` file or its state dict.
    map_location : str
        Device to load the checkpoint on.

    Returns
    -------
    MambaTasNetMaskNet
        The converted mask network (``eval()`` mode).
    """
    from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet

    if isinstance(source, Mapping):
        state_dict = source
    else:
        state_dict = torch.load(
            source, map_location=map_location, weights_only=True
        )
    model = MambaTasNetMaskNet(**infer_config(state_dict))
    model.load_state_dict(convert_state_dict(state_dict), strict=True)
    return model.eval()


def masknet_yaml(config: dict) -> str:
    """YAML text of the ``MaskNet`` entry for a configuration.

    Arguments
    ---------
    config : dict
        Output of :func:`infer_config`.

    Returns
    -------
    str
        ``MaskNet: !new:...`` entry.

    Example
    -------
    >>> print(masknet_yaml({"in_channels": 8, "norm": "rmsnorm"}))
    MaskNet: !new:speechbrain_mamba.lobes.mamba_tasnet.MambaTasNetMaskNet
        in_channels: 8
        norm: rmsnorm
    <BLANKLINE>
    """
    lines = [
        "MaskNet: !new:speechbrain_mamba.lobes.mamba_tasnet.MambaTasNetMaskNet"
    ]
    for key, value in config.items():
        if isinstance(value, bool):
            value = "True" if value else "False"
        lines.append(f"    {key}: {value}")
    return "\n".join(lines) + "\n"


def convert_checkpoint_folder(
    ckpt_dir: PathLike,
    out_dir: PathLike,
    sample_rate: int = 8000,
    name: str = "mamba_tasnet",
    verify: bool = True,
    force: bool = False,
) -> Path:
    """Converts the authors' ``encoder`` / ``masknet`` / ``decoder``
    checkpoints to a hub folder.

    Arguments
    ---------
    ckpt_dir : str or os.PathLike
        Folder holding ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``.
    out_dir : str or os.PathLike
        Hub folder to create.
    sample_rate : int
        Sample rate of the model (WSJ0-2mix: 8000).
    name : str
        Model name in the card.
    verify : bool
        Loads the result with ``SepformerSeparation`` and separates noise.
    force : bool
        Replaces an existing ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    from speechbrain_mamba.separation.export import (
        count_parameters,
        inference_yaml,
        model_card,
        verify_hub_folder,
        write_hub_folder,
    )

    ckpt_dir = Path(ckpt_dir)
    paths = {
        k: ckpt_dir / f"{k}.ckpt" for k in ("encoder", "masknet", "decoder")
    }
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
    load = {"map_location": "cpu", "weights_only": True}
    masknet_sd = _strip_prefix(torch.load(paths["masknet"], **load))
    encoder_sd = _strip_prefix(torch.load(paths["encoder"], **load))
    decoder_sd = _strip_prefix(torch.load(paths["decoder"], **load))
    config = infer_config(masknet_sd)
    enc_w = encoder_sd["conv1d.weight"]  # [N, 1, K]
    dec_w = decoder_sd["weight"]  # [N, 1, K]
    if (
        enc_w.shape[0] != config["in_channels"]
        or dec_w.shape[0] != enc_w.shape[0]
    ):
        raise ValueError(
            f"encoder {tuple(enc_w.shape)} / decoder {tuple(dec_w.shape)} do "
            f"not match the MaskNet's {config['in_channels']} channels"
        )
    kernel = enc_w.shape[2]
    model_text = (
        "Encoder: !new:speechbrain.lobes.models.dual_path.Encoder\n"
        f"    kernel_size: {kernel}\n    out_channels: {enc_w.shape[0]}\n"
        + masknet_yaml(config)
        + "Decoder: !new:speechbrain.lobes.models.dual_path.Decoder\n"
        f"    in_channels: {dec_w.shape[0]}\n    out_channels: 1\n"
        f"    kernel_size: {kernel}\n    stride: {kernel // 2}\n"
        f"    bias: {'True' if 'bias' in decoder_sd else 'False'}\n"
    )
    yaml_text = inference_yaml(
        {"text": model_text}, sample_rate, config["num_spks"], title=name
    )
    card = model_card(
        name,
        count_parameters(yaml_text),
        sample_rate,
        config["num_spks"],
        training={"source": "converted from the Mamba-TasNet authors' release"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / "masknet.ckpt"
        torch.save(convert_state_dict(masknet_sd), converted)
        out = write_hub_folder(
            out_dir,
            yaml_text,
            {
                "encoder": paths["encoder"],
                "masknet": converted,
                "decoder": paths["decoder"],
            },
            card,
            force=force,
        )
    if verify:
        verify_hub_folder(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point.

    Arguments
    ---------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.separation.converter",
        description="Convert the Mamba-TasNet authors' checkpoints.",
    )
    parser.add_argument("--ckpt-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--name", default="mamba_tasnet")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = convert_checkpoint_folder(
        args.ckpt_dir,
        args.out,
        sample_rate=args.sample_rate,
        name=args.name,
        verify=not args.no_verify,
        force=args.force,
    )
    print(f"hub folder written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
