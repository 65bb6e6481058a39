"""Export a trained LibriSpeech ASR experiment to a hub-ready folder.

The folder holds ``hyperparams.yaml``, ``asr.ckpt`` (the averaged model),
``normalizer.ckpt``, ``tokenizer.ckpt`` (and ``lm.ckpt`` when the
experiment decoded with a language model), and loads offline with
SpeechBrain's own interfaces::

    from speechbrain.inference.ASR import EncoderDecoderASR  # or EncoderASR
    asr = EncoderDecoderASR.from_hparams(source="hub/conmamba_small",
                                         savedir="/tmp/conmamba_small")
    asr.transcribe_file("utt.flac")

(Import ``speechbrain_mamba`` first on machines whose torchaudio needs the
compatibility shim.) Command line::

    python -m speechbrain_mamba.asr.export EXPERIMENT_FOLDER OUT_FOLDER \
        [--force]

where ``EXPERIMENT_FOLDER`` is a recipe's ``output_folder`` (it holds the
``hyperparams.yaml`` the recipe saved and the ``save`` folder). A non-empty
``OUT_FOLDER`` is refused; ``--force`` replaces its whole content (the new
folder is written next to it, then swapped in).

Author
------
speechbrain-mamba developers
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from speechbrain.utils.checkpoints import average_checkpoints

import speechbrain_mamba  # noqa: F401  (before speechbrain)
from speechbrain_mamba.data.librispeech_dataio import TOKENIZER_FILE
from speechbrain_mamba.utils.atomic import atomic_folder, check_target_folder
from speechbrain_mamba.utils.io import PathLike
from speechbrain_mamba.utils.model_folders import load_experiment_hparams

logger = logging.getLogger(__name__)

MAMBA_ASR_CLASS = "speechbrain_mamba.lobes.asr.MambaTransformerASR"
SB_ASR_CLASS = (
    "speechbrain.lobes.models.transformer.TransformerASR.TransformerASR"
)


def _class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"cannot write {value!r} into the hub YAML")


def _model_block(hp: Dict[str, Any], transformer: Any) -> List[str]:
    """The ``Transformer:`` entry, for SpeechBrain's class or ours."""
    is_mamba = _class_path(transformer) == MAMBA_ASR_CLASS or hasattr(
        transformer, "has_mamba_encoder"
    )
    lines = [
        f"Transformer: !new:{MAMBA_ASR_CLASS if is_mamba else SB_ASR_CLASS}",
        "    input_size: !ref <cnn_out_size>",
        "    tgt_vocab: !ref <output_neurons>",
        "    d_model: !ref <d_model>",
        "    nhead: !ref <nhead>",
        "    num_encoder_layers: !ref <num_encoder_layers>",
        "    num_decoder_layers: !ref <num_decoder_layers>",
        "    d_ffn: !ref <d_ffn>",
        "    dropout: 0.0",
        "    activation: !name:" + _class_path(hp["activation"]),
        "    kernel_size: !ref <kernel_size>",
        "    encoder_module: !ref <encoder_module>",
        "    attention_type: !ref <attention_type>",
        "    normalize_before: True",
        "    causal: False",
    ]
    if is_mamba:
        lines.append(f"    decoder_module: {transformer.decoder_module}")
        config = hp.get("mamba_config") or {}
        lines.append("    mamba_config:")
        for key, value in config.items():
            lines.append(f"        {key}: {_yaml_value(value)}")
        if not config:
            lines[-1] = "    mamba_config: null"
    return lines


def hub_yaml(hp: Dict[str, Any], kind: str, with_lm: bool) -> str:
    """Builds the inference ``hyperparams.yaml`` for a trained experiment.

    Arguments
    ---------
    hp : dict
        The experiment's loaded hyperparameters.
    kind : str
        ``"s2s"`` (``EncoderDecoderASR``) or ``"ctc"`` (``EncoderASR``).
    with_lm : bool
        Include the Transformer LM in the S2S beam search.

    Returns
    -------
    str
        YAML text.
    """
    transformer = hp["Transformer"]
    scalars = {
        "sample_rate": hp["sample_rate"],
        "n_fft": hp["n_fft"],
        "n_mels": hp["n_mels"],
        "cnn_out_size": hp["cnn_out_size"],
        "d_model": hp["d_model"],
        "nhead": hp["nhead"],
        "num_encoder_layers": hp["num_encoder_layers"],
        "num_decoder_layers": hp.get("num_decoder_layers", 0),
        "d_ffn": hp["d_ffn"],
        "kernel_size": hp.get("kernel_size", 31),
        "encoder_module": hp["encoder_module"],
        "attention_type": hp["attention_type"],
        "output_neurons": hp["output_neurons"],
        "blank_index": hp["blank_index"],
        "bos_index": hp["bos_index"],
        "eos_index": hp["eos_index"],
    }
    features = [
        "compute_features: !new:speechbrain.lobes.features.Fbank",
        "    sample_rate: !ref <sample_rate>",
        "    n_fft: !ref <n_fft>",
        "    n_mels: !ref <n_mels>",
    ]
    if hp.get("win_length") is not None:
        scalars["win_length"] = hp["win_length"]
        features.append("    win_length: !ref <win_length>")
    out = [
        "# Hub-ready ASR model exported by speechbrain_mamba.asr.export.",
        "# Load with speechbrain.inference.ASR."
        + ("EncoderDecoderASR" if kind == "s2s" else "EncoderASR")
        + ".from_hparams(source=<this folder>).",
        "",
    ]
    out += [f"{k}: {_yaml_value(v)}" for k, v in scalars.items()]
    out += [""] + features + [""]
    out += [
        "normalize: !new:speechbrain.processing.features.InputNormalization",
        "    norm_type: global",
        "",
        "CNN: !new:speechbrain.lobes.models.convolution.ConvolutionFrontEnd",
        "    input_shape: [8, 10, !ref <n_mels>]",
        "    num_blocks: 2",
        "    num_layers_per_block: 1",
        "    out_channels: (64, 32)",
        "    kernel_sizes: (3, 3)",
        "    strides: (2, 2)",
        "    residuals: (False, False)",
        "",
    ]
    out += _model_block(hp, transformer) + [""]
    out += [
        "ctc_lin: !new:speechbrain.nnet.linear.Linear",
        "    input_size: !ref <d_model>",
        "    n_neurons: !ref <output_neurons>",
        "",
        "tokenizer: !new:sentencepiece.SentencePieceProcessor",
        "",
        "Tencoder: !new:speechbrain.lobes.models.transformer.TransformerASR"
        ".EncoderWrapper",
        "    transformer: !ref <Transformer>",
        "",
    ]
    loadables = [
        "        asr: !ref <asr_model>",
        "        normalizer: !ref <normalize>",
        "        tokenizer: !ref <tokenizer>",
    ]
    if kind == "ctc":
        out += [
            "log_softmax: !new:speechbrain.nnet.activations.Softmax",
            "    apply_log: True",
            "",
            "encoder: !new:speechbrain.nnet.containers."
            "LengthsCapableSequential",
            "    compute_features: !ref <compute_features>",
            "    normalize: !ref <normalize>",
            "    cnn: !ref <CNN>",
            "    transformer_encoder: !ref <Tencoder>",
            "    ctc_lin: !ref <ctc_lin>",
            "    log_softmax: !ref <log_softmax>",
            "",
        ]
        beam = hp.get("test_beam_search")
        if beam:
            out.append(
                "decoding_function: !name:speechbrain.decoders.ctc."
                "CTCBeamSearcher"
            )
            out.append("test_beam_search:")
            out += [f"    {k}: {_yaml_value(v)}" for k, v in beam.items()]
        else:
            out += [
                "decoding_function: !name:speechbrain.decoders."
                "ctc_greedy_decode",
                "    blank_id: !ref <blank_index>",
            ]
        out += [
            "",
            "modules:",
            "    encoder: !ref <encoder>",
            "",
            "asr_model: !new:torch.nn.ModuleList",
            "    - [!ref <CNN>, !ref <Transformer>, !ref <ctc_lin>]",
            "",
        ]
    else:
        searcher = _class_path(hp["test_search"])
        decode = {
            "min_decode_ratio": hp["min_decode_ratio"],
            "max_decode_ratio": hp["max_decode_ratio"],
            "beam_size": hp["test_beam_size"],
            "ctc_weight_decode": hp["ctc_weight_decode"],
            "temperature": hp.get("decode_temperature", 1.0),
        }
        out += [f"{k}: {_yaml_value(v)}" for k, v in decode.items()] + [""]
        out += [
            "seq_lin: !new:speechbrain.nnet.linear.Linear",
            "    input_size: !ref <d_model>",
            "    n_neurons: !ref <output_neurons>",
            "",
            "encoder: !new:speechbrain.nnet.containers."
            "LengthsCapableSequential",
            "    compute_features: !ref <compute_features>",
            "    normalize: !ref <normalize>",
            "    cnn: !ref <CNN>",
            "    transformer_encoder: !ref <Tencoder>",
            "",
            "ctc_scorer: !new:speechbrain.decoders.scorer.CTCScorer",
            "    eos_index: !ref <eos_index>",
            "    blank_index: !ref <blank_index>",
            "    ctc_fc: !ref <ctc_lin>",
            "",
        ]
        scorers = "[!ref <ctc_scorer>]"
        weights = ["        ctc: !ref <ctc_weight_decode>"]
        if with_lm:
            out += _lm_block(hp)
            scorers = "[!ref <transformerlm_scorer>, !ref <ctc_scorer>]"
            weights.append("        transformerlm: !ref <lm_weight>")
            loadables.append("        lm: !ref <lm_model>")
        out += [
            "scorer: !new:speechbrain.decoders.scorer.ScorerBuilder",
            f"    full_scorers: {scorers}",
            "    weights:",
            *weights,
            "",
            f"decoder: !new:{searcher}",
            "    modules: [!ref <Transformer>, !ref <seq_lin>]",
            "    bos_index: !ref <bos_index>",
            "    eos_index: !ref <eos_index>",
            "    min_decode_ratio: !ref <min_decode_ratio>",
            "    max_decode_ratio: !ref <max_decode_ratio>",
            "    beam_size: !ref <beam_size>",
            "    temperature: !ref <temperature>",
            "    using_eos_threshold: False",
            "    length_normalization: True",
            "    scorer: !ref <scorer>",
            "",
            "modules:",
            "    encoder: !ref <encoder>",
            "    decoder: !ref <decoder>",
            "",
            "asr_model: !new:torch.nn.ModuleList",
            "    - [!ref <CNN>, !ref <Transformer>, !ref <seq_lin>, "
            "!ref <ctc_lin>]",
            "",
        ]
    out += [
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        *loadables,
        "",
    ]
    return "\n".join(out)


def _lm_block(hp: Dict[str, Any]) -> List[str]:
    partial = hp["lm_model"]
    kwargs = dict(getattr(partial, "keywords", None) or {})
    if not hasattr(partial, "func") or not kwargs:
        raise ValueError(
            "lm_model must be a !name: entry with the LM's arguments"
        )
    lines = [f"lm_weight: {_yaml_value(hp['lm_weight'])}", ""]
    lines.append(f"lm_model: !new:{_class_path(partial.func)}")
    for key, value in kwargs.items():
        if isinstance(value, type):
            lines.append(f"    {key}: !name:{_class_path(value)}")
        else:
            lines.append(f"    {key}: {_yaml_value(value)}")
    lines += [
        "",
        "transformerlm_scorer: !new:speechbrain.decoders.scorer."
        "TransformerLMScorer",
        "    language_model: !ref <lm_model>",
        f"    temperature: {_yaml_value(hp['lm_temperature'])}",
        "",
    ]
    return lines


def export_asr(
    experiment_folder: PathLike,
    out_folder: PathLike,
    hparams_file: str = "hyperparams.yaml",
    overrides: Optional[Dict[str, Any]] = None,
    force: bool = False,
) -> Path:
    """Writes a hub-ready folder from a trained recipe experiment.

    Arguments
    ---------
    experiment_folder : str or Path
        The recipe's ``output_folder`` (with the saved ``hyperparams.yaml``
        and the ``save`` folder of checkpoints and the tokenizer).
    out_folder : str or Path
        Destination folder: new or empty, unless ``force``.
    hparams_file : str
        Name of the saved hyperparameters inside ``experiment_folder``.
    overrides : dict, optional
        Overrides applied when loading the experiment's hyperparameters.
    force : bool
        Replace the content of a non-empty ``out_folder`` (written whole
        next to it, then swapped in: old and new files never mix).

    Returns
    -------
    Path
        The output folder.
    """
    out = check_target_folder(out_folder, force)
    experiment_folder = Path(experiment_folder)
    hp = load_experiment_hparams(experiment_folder, hparams_file, overrides)
    kind = "s2s" if "seq_lin" in hp else "ctc"
    checkpointer = hp["checkpointer"]
    key = {"max_key": "ACC"} if kind == "s2s" else {"min_key": "WER"}
    ckpts = checkpointer.find_checkpoints(
        max_num_checkpoints=hp.get("avg_checkpoints"), **key
    )
    if not ckpts:
        raise FileNotFoundError(
            f"no checkpoint with a {list(key.values())[0]} score in "
            f"{checkpointer.checkpoints_dir}: train the model first"
        )
    averaged = average_checkpoints(ckpts, recoverable_name="model")
    hp["model"].load_state_dict(averaged, strict=True)
    latest = max(ckpts, key=lambda c: c.meta.get("unixtime", 0))
    tokenizer_file = Path(hp["save_folder"]) / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"tokenizer model {tokenizer_file} not found")
    with_lm = kind == "s2s" and bool(hp.get("use_lm", False))
    lm_file = Path(hp["save_folder"]) / "lm.ckpt"
    if with_lm and not lm_file.exists():
        raise FileNotFoundError(f"language model {lm_file} not found")

    sources = [experiment_folder, hp["save_folder"], tokenizer_file]
    with atomic_folder(out, force, sources) as tmp:
        torch.save(hp["model"].state_dict(), tmp / "asr.ckpt")
        shutil.copyfile(
            latest.paramfiles["normalizer"], tmp / "normalizer.ckpt"
        )
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.ckpt")
        if with_lm:
            shutil.copyfile(lm_file.resolve(), tmp / "lm.ckpt")
        (tmp / "hyperparams.yaml").write_text(
            hub_yaml(hp, kind, with_lm), encoding="utf-8"
        )
    logger.info(
        "Exported the average of %d checkpoint(s) to %s", len(ckpts), out
    )
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
    parser.add_argument("--hparams_file", default="hyperparams.yaml")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the content of a non-empty OUT_FOLDER",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO)
    print(
        export_asr(
            args.experiment_folder,
            args.out_folder,
            args.hparams_file,
            force=args.force,
        )
    )


if __name__ == "__main__":
    main()
