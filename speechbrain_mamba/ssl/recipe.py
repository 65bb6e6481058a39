"""Drivers of ``recipes/LibriSpeech/self-supervised-learning``: target
extraction, HuBERT-style pretraining and CTC fine-tuning, with SpeechBrain's
command line::

    python extract_targets.py hparams/pretrain_bimamba.yaml --data_folder DATA
    python train.py hparams/pretrain_bimamba.yaml --data_folder DATA
    python finetune_ctc.py hparams/finetune_ctc.yaml --data_folder DATA \\
        --pretrained_folder results/ssl/pretrain_bimamba/1234
    torchrun --nproc_per_node=4 train.py hparams/pretrain_bimamba.yaml ...

Every stage resumes when rerun: data preparation and target extraction skip
what is done, training continues from the last checkpoint.

Author
------
speechbrain-mamba developers
"""

import json
import logging
from pathlib import Path
from typing import Any, Dict, Sequence

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from speechbrain_mamba.data.librispeech_prepare import (
    prepare_librispeech,
    recipe_prepare_kwargs,
)
from speechbrain_mamba.ssl.brain import (
    CTCFinetuneBrain,
    HuBERTPretrainBrain,
    pretraining_dataset,
)
from speechbrain_mamba.ssl.targets import INFO_FILE, extract_targets, read_km
from speechbrain_mamba.utils.atomic import atomic_target, atomic_write_text

logger = logging.getLogger(__name__)

#: Weights of the pretrained model written at the end of pretraining.
SSL_CHECKPOINT = "ssl_model.ckpt"
SUMMARY_FILE = "pretraining_summary.json"
#: Model options that fine-tuning copies from the pretraining hyperparameters.
MODEL_KEYS = (
    "num_clusters",
    "encoder_type",
    "causal",
    "d_model",
    "num_layers",
    "conv_channels",
    "final_dim",
    "d_state",
    "d_conv",
    "expand",
    "nhead",
    "d_ffn",
    "kernel_size",
    "pos_kernel_size",
    "pos_groups",
)


def _overrides_dict(overrides) -> Dict[str, Any]:
    import ruamel.yaml

    if isinstance(overrides, dict):
        return dict(overrides)
    if not overrides:
        return {}
    loaded = ruamel.yaml.YAML(typ="safe").load(overrides)
    return dict(loaded or {})


def pretraining_model_options(folder: str) -> Dict[str, Any]:
    """The model options (:data:`MODEL_KEYS`) of a pretraining output folder.

    Arguments
    ---------
    folder : str
        The pretraining ``output_folder`` (holds ``hyperparams.yaml``).

    Returns
    -------
    dict
        Option -> value (plain values only).
    """
    import ruamel.yaml

    path = Path(folder) / "hyperparams.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pretrained_folder must be the output folder "
            "of the pretraining recipe"
        )
    with open(path, encoding="utf-8") as fin:
        doc = ruamel.yaml.YAML().load(fin)
    options = {}
    for key in MODEL_KEYS:
        value = doc.get(key)
        # plain scalars only (not !ref / !new nodes)
        for kind in (bool, int, float, str):
            if isinstance(value, kind):
                options[key] = kind(value)
                break
    return options


def _load(argv: Sequence[str], model_from_pretraining: bool = False):
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    overrides = _overrides_dict(overrides)
    if model_from_pretraining and overrides.get("pretrained_folder"):
        options = pretraining_model_options(overrides["pretrained_folder"])
        for key, value in options.items():
            overrides.setdefault(key, value)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    return hparams_file, run_opts, overrides, hparams


def _setup(argv: Sequence[str], model_from_pretraining: bool = False):
    hparams_file, run_opts, overrides, hparams = _load(
        argv, model_from_pretraining
    )
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return run_opts, hparams


def prepare_csvs(hparams: Dict[str, Any]) -> Dict[str, Path]:
    """Writes the LibriSpeech CSVs (main process only).

    Arguments
    ---------
    hparams : dict
        Needs ``data_folder``, ``output_folder``, ``train_splits``,
        ``dev_splits``, ``test_splits``, ``skip_prep``, ``sample_rate`` and
        optionally ``select_n_sentences``.

    Returns
    -------
    dict
        Split name (and ``train``) -> CSV path.
    """
    kwargs = recipe_prepare_kwargs(hparams)
    run_on_main(prepare_librispeech, kwargs=kwargs)
    csvs = prepare_librispeech(**{**kwargs, "skip_prep": True})
    keep = ["train", *hparams["dev_splits"], *hparams["test_splits"]]
    return {split: csvs[split] for split in keep}


def _target_features(hparams: Dict[str, Any]):
    kind = hparams.get("target_features", "mfcc")
    if kind == "mfcc":
        return "mfcc"
    if kind != "layer":
        raise ValueError(
            f"target_features must be 'mfcc' or 'layer', got {kind!r}"
        )
    from speechbrain_mamba.ssl.targets import LayerFeatures
    from speechbrain_mamba.utils.model_folders import load_trained_hparams

    folder = hparams.get("target_model")
    if not folder:
        raise ValueError(
            "target_features: layer needs target_model (the output folder of "
            "the previous pretraining)"
        )
    device = hparams.get("target_device") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    model = load_trained_hparams(folder, ckpt_key="acc_masked")["ssl_model"]
    return LayerFeatures(model, int(hparams["target_layer"]), device)


def prepare_targets(
    hparams: Dict[str, Any], csvs: Dict[str, Path]
) -> Dict[str, Any]:
    """Extracts the k-means targets of every split (main process only) and
    returns ``targets.json``.

    Arguments
    ---------
    hparams : dict
        Needs ``targets_folder``, ``num_clusters``, ``sample_rate``,
        ``frame_stride``, ``data_folder`` and optionally
        ``target_features`` (``mfcc`` / ``layer`` with ``target_model``,
        ``target_layer``), ``kmeans_max_frames``, ``kmeans_device``,
        ``kmeans_options``, ``seed``.
    csvs : dict
        Split -> CSV, with a ``train`` entry.

    Returns
    -------
    dict
        The target information (chance levels, label statistics).
    """
    folder = Path(hparams["targets_folder"])

    def run():
        extract_targets(
            dict(csvs),
            folder,
            n_clusters=hparams["num_clusters"],
            train_split="train",
            features=_target_features(hparams),
            sample_rate=hparams["sample_rate"],
            frame_stride=hparams["frame_stride"],
            data_root=hparams["data_folder"],
            max_fit_frames=hparams.get("kmeans_max_frames", 250000),
            seed=hparams.get("seed", 0),
            device=hparams.get("kmeans_device"),
            kmeans_kwargs=hparams.get("kmeans_options"),
        )

    run_on_main(run)
    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    if not info.get("complete"):
        raise RuntimeError(f"target extraction in {folder} did not complete")
    return info


def run_extraction(argv: Sequence[str]) -> Dict[str, Any]:
    """``extract_targets.py``: CSVs and k-means targets only.

    Arguments
    ---------
    argv : sequence of str
        Command line (hparams file and overrides).

    Returns
    -------
    dict
        The target information.
    """
    _, hparams = _setup(argv)
    info = prepare_targets(hparams, prepare_csvs(hparams))
    logger.info("targets: %s", json.dumps(info["splits"]))
    return info


def run_pretraining(argv: Sequence[str]) -> HuBERTPretrainBrain:
    """``train.py``: CSVs, targets, pretraining, export of the best model.

    At the end, ``<output_folder>/ssl_model.ckpt`` holds the weights of the
    checkpoint with the best validation masked-prediction accuracy and
    ``pretraining_summary.json`` that accuracy with the chance levels.

    Arguments
    ---------
    argv : sequence of str
        Command line.

    Returns
    -------
    HuBERTPretrainBrain
    """
    run_opts, hparams = _setup(argv)
    csvs = prepare_csvs(hparams)
    info = prepare_targets(hparams, csvs)
    hparams["chance_majority"] = info["chance_majority"]
    folder = Path(hparams["targets_folder"])
    valid_split = hparams["dev_splits"][0]
    common = {
        "data_folder": hparams["data_folder"],
        "frame_stride": hparams["frame_stride"],
        "sample_rate": hparams["sample_rate"],
    }
    train_data = pretraining_dataset(
        str(csvs["train"]),
        read_km(folder / "train.km"),
        max_samples=hparams.get("max_samples"),
        train=True,
        sorting=hparams.get("sorting", "random"),
        **common,
    )
    valid_data = pretraining_dataset(
        str(csvs[valid_split]), read_km(folder / f"{valid_split}.km"), **common
    )
    brain = HuBERTPretrainBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    trained_steps = brain.optimizer_step
    brain.evaluate(
        valid_data,
        max_key="acc_masked",
        test_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if if_main_process():
        out = Path(hparams["output_folder"])
        model = hparams["modules"]["model"]
        with atomic_target(out / SSL_CHECKPOINT) as tmp:
            torch.save(model.state_dict(), tmp)
        from speechbrain_mamba.utils.parameters import count_parameters

        summary = {
            "encoder_type": model.encoder.encoder_type,
            "causal": bool(model.causal),
            "parameters": count_parameters(model),
            "optimizer_steps": trained_steps,
            "valid": brain.test_stats,
            "chance_majority": info["chance_majority"],
            "chance_uniform": info["chance_uniform"],
        }
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2))
        logger.info("pretraining summary: %s", json.dumps(summary))
    sb.utils.distributed.ddp_barrier()
    return brain


def load_pretrained(model: torch.nn.Module, folder: str) -> None:
    """Loads ``ssl_model.ckpt`` of a pretraining output folder into
    ``model`` (the fine-tuning model must have the same architecture).

    Arguments
    ---------
    model : torch.nn.Module
        A HuBERTModel.
    folder : str
        Output folder of the pretraining recipe.
    """
    path = Path(folder) / SSL_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pretraining writes it when it finishes "
            "(set pretrained_folder to the pretraining output folder)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{path} does not fit the fine-tuning model (use the model "
            f"options of the pretraining): {err}"
        ) from err


def run_finetuning(argv: Sequence[str]) -> CTCFinetuneBrain:
    """``finetune_ctc.py``: CTC fine-tuning of a pretrained encoder on
    characters, then WER / CER on the test splits.

    Arguments
    ---------
    argv : sequence of str
        Command line.

    Returns
    -------
    CTCFinetuneBrain
    """
    from speechbrain_mamba.data.librispeech_dataio import (
        dataio_prepare,
        prepare_tokenizer,
    )

    run_opts, hparams = _setup(argv, model_from_pretraining=True)
    prepare_csvs(hparams)
    tokenizer = prepare_tokenizer(hparams)
    train_data, valid_data, test_sets, _, _ = dataio_prepare(
        hparams, tokenizer, "ctc"
    )
    model = hparams["modules"]["model"]
    if hparams.get("pretrained_folder"):
        load_pretrained(model, hparams["pretrained_folder"])
    else:
        logger.warning("no pretrained_folder: fine-tuning from scratch")
    for param in model.feature_extractor.parameters():
        param.requires_grad_(False)
    brain = CTCFinetuneBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.tokenizer = tokenizer
    brain.fit(
        hparams["epoch_counter"],
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    wer_folder = Path(hparams["output_folder"])
    for name, dataset in test_sets.items():
        brain.test_wer_file = str(wer_folder / f"wer_{name}.txt")
        brain.evaluate(
            dataset,
            min_key="WER",
            test_loader_kwargs=hparams["test_dataloader_opts"],
        )
    return brain


def run_recipe(argv: Sequence[str], mode: str = "pretrain") -> Any:
    """Runs one of the recipe scripts of
    ``recipes/LibriSpeech/self-supervised-learning``.

    Arguments
    ---------
    argv : sequence of str
        SpeechBrain command line (hparams file and overrides).
    mode : str
        ``"pretrain"`` (train.py: :func:`run_pretraining`), ``"extract"``
        (extract_targets.py: :func:`run_extraction`) or ``"finetune"``
        (finetune_ctc.py: :func:`run_finetuning`).

    Returns
    -------
    HuBERTPretrainBrain, dict or CTCFinetuneBrain
        What the mode's function returns.
    """
    runners = {
        "extract": run_extraction,
        "pretrain": run_pretraining,
        "finetune": run_finetuning,
    }
    if mode not in runners:
        raise ValueError(f"mode must be one of {sorted(runners)}, got {mode!r}")
    return runners[mode](argv)
