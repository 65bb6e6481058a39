"""Export of a trained LibriTTS TTS experiment to a hub-ready folder, which
:class:`speechbrain_mamba.tts.inference.ZeroShotTTS` loads with
``from_hparams(source=<folder>)``.

The folder holds ``hyperparams.yaml``, ``ar.ckpt`` and ``nar.ckpt`` (the
checkpoint with the lowest validation loss), ``text_frontend.ckpt`` (the
symbol table, JSON) and, unless the codec is referenced by its hub id,
``codec.ckpt`` (the codec's weights; its configuration is in the YAML).
Command line::

    python -m speechbrain_mamba.tts.export EXPERIMENT_FOLDER OUT_FOLDER \
        [--codec embed|reference] [--force]

A non-empty ``OUT_FOLDER`` is refused; ``--force`` replaces its whole
content (the new folder is written next to it, then swapped in).

Author
------
speechbrain-mamba developers
"""

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from speechbrain_mamba.tts.recipe import load_codec, sampling_config
from speechbrain_mamba.tts.text import TextFrontEnd
from speechbrain_mamba.utils.atomic import atomic_folder, check_target_folder
from speechbrain_mamba.utils.io import PathLike
from speechbrain_mamba.utils.model_folders import load_experiment_hparams

logger = logging.getLogger(__name__)

CODEC_MODES = ("embed", "reference")


def _entry(name: str, target: str, args: Dict[str, Any]) -> List[str]:
    """A ``name: !new:target`` (or !apply) block with JSON scalars."""
    lines = [f"{name}: {target}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in args.items()]
    return lines + [""]


def hub_yaml(
    ar_config: Dict[str, Any],
    nar_config: Dict[str, Any],
    frontend: TextFrontEnd,
    sampling: Dict[str, Any],
    codec_args: Dict[str, Any],
    codec_mode: str,
) -> str:
    """The inference ``hyperparams.yaml``.

    Arguments
    ---------
    ar_config, nar_config : dict
        Constructor arguments of the models.
    frontend : TextFrontEnd
        The text front end.
    sampling : dict
        SamplingConfig fields.
    codec_args : dict
        ``config`` and ``bandwidth`` (embed) or ``source`` and
        ``bandwidth`` (reference).
    codec_mode : str
        "embed" or "reference".

    Returns
    -------
    str
    """
    codec_fn = (
        "codec_from_config"
        if codec_mode == "embed"
        else "codec_from_pretrained"
    )
    lines = [
        "# Zero-shot TTS model exported by speechbrain_mamba.tts.export.",
        "#   from speechbrain_mamba.tts.inference import ZeroShotTTS",
        "#   tts = ZeroShotTTS.from_hparams(source=<this folder>)",
        "#   wav, rate = tts.tts(text, prompt_wav, prompt_text)",
        "",
    ]
    lines += _entry(
        "codec", f"!apply:speechbrain_mamba.tts.codec.{codec_fn}", codec_args
    )
    lines += _entry(
        "text_frontend",
        "!new:speechbrain_mamba.tts.text.TextFrontEnd",
        {
            "backend": frontend.backend,
            "language": frontend.language,
            "with_stress": frontend.with_stress,
        },
    )
    lines += _entry(
        "sampling",
        "!new:speechbrain_mamba.tts.generation.SamplingConfig",
        sampling,
    )
    lines += _entry("ar", "!new:speechbrain_mamba.lobes.tts.CodecAR", ar_config)
    lines += _entry(
        "nar", "!new:speechbrain_mamba.lobes.tts.CodecNAR", nar_config
    )
    lines += [
        "modules:",
        "    ar: !ref <ar>",
        "    nar: !ref <nar>",
        "    codec: !ref <codec>",
        "",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        "        ar: !ref <ar>",
        "        nar: !ref <nar>",
        "        text_frontend: !ref <text_frontend>",
    ]
    if codec_mode == "embed":
        lines.append("        codec: !ref <codec>")
    return "\n".join(lines) + "\n"


def export_tts(
    experiment_folder: PathLike,
    out_folder: PathLike,
    codec: str = "embed",
    hparams_file: str = "hyperparams.yaml",
    overrides: Optional[Dict[str, Any]] = None,
    force: bool = False,
) -> Path:
    """Writes a hub-ready folder from a trained recipe experiment.

    Arguments
    ---------
    experiment_folder : str or Path
        The recipe's ``output_folder``.
    out_folder : str or Path
        Destination folder: new or empty, unless ``force``.
    codec : str
        "embed": store the codec's weights in the folder (self-contained);
        "reference": load it from ``codec_source`` (e.g. the hub id) at
        inference time.
    hparams_file : str
        Saved hyperparameters inside the experiment folder.
    overrides : dict, optional
        Overrides when loading them.
    force : bool
        Replace the content of a non-empty ``out_folder`` (written whole
        next to it, then swapped in: old and new files never mix).

    Returns
    -------
    Path
        The output folder.
    """
    if codec not in CODEC_MODES:
        raise ValueError(f"codec must be one of {CODEC_MODES}, got {codec!r}")
    out = check_target_folder(out_folder, force)
    experiment_folder = Path(experiment_folder)
    hp = load_experiment_hparams(experiment_folder, hparams_file, overrides)
    ckpt = hp["checkpointer"].find_checkpoint(min_key="loss")
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint with a validation loss in "
            f"{hp['checkpointer'].checkpoints_dir}: train the model first"
        )
    frontend_file = Path(hp["frontend_file"])
    frontend = TextFrontEnd.from_file(frontend_file)
    codec_model = load_codec(hp)
    bandwidth = codec_model.bandwidth
    if codec == "embed":
        codec_args = {
            "config": codec_model.config_dict(),
            "bandwidth": bandwidth,
        }
    else:
        codec_args = {"source": str(hp["codec_source"]), "bandwidth": bandwidth}
    sampling = sampling_config(hp).__dict__
    text = hub_yaml(
        hp["ar"].config,
        hp["nar"].config,
        frontend,
        sampling,
        codec_args,
        codec,
    )
    sources = [experiment_folder, ckpt.path, frontend_file]
    with atomic_folder(out, force, sources) as tmp:
        for name in ("ar", "nar"):
            shutil.copyfile(ckpt.paramfiles[name], tmp / f"{name}.ckpt")
        shutil.copyfile(frontend_file, tmp / "text_frontend.ckpt")
        if codec == "embed":
            torch.save(codec_model.state_dict(), tmp / "codec.ckpt")
        (tmp / "hyperparams.yaml").write_text(text, encoding="utf-8")
    logger.info("exported %s (epoch %s) to %s", ckpt.path, ckpt.meta, out)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment_folder")
    parser.add_argument("out_folder")
    parser.add_argument("--codec", choices=CODEC_MODES, default="embed")
    parser.add_argument("--hparams_file", default="hyperparams.yaml")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the content of a non-empty OUT_FOLDER",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO)
    print(
        export_tts(
            args.experiment_folder,
            args.out_folder,
            args.codec,
            args.hparams_file,
            force=args.force,
        )
    )


if __name__ == "__main__":
    main()
