"""The separation recipe shared by ``recipes/WSJ0Mix/separation/train.py``
and ``recipes/LibriMix/separation/train.py``.

The hparams file defines the model (``Encoder``, ``MaskNet``, ``Decoder``),
the training setup and, under ``prepare_data``, the data-preparation function
of its corpus (e.g. ``!name:speechbrain_mamba.separation.prepare.
prepare_wsj0mix`` with its arguments). The recipe then:

1. checks the data folders and writes the CSV files (main process; any
   missing folder or bad file stops it before training);
2. builds the datasets (optionally dynamic mixing from ``base_folder_dm``);
3. re-initialises the model like SpeechBrain's recipes (unless
   ``pretrained_separator`` is given) and trains it, resuming from the last
   checkpoint of ``save_folder`` if there is one (also under ``torchrun``);
4. evaluates the best checkpoint on the test set and writes the per-utterance
   and average metrics CSV (``test_results_file``).

Usage (from a recipe folder)::

    python train.py hparams/mamba_tasnet_S.yaml --data_folder DATA
    torchrun --nproc_per_node=4 train.py hparams/mamba_tasnet_S.yaml \\
        --data_folder DATA

Author
------
speechbrain-mamba developers
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_mamba.separation.brain import (
    SeparationBrain,
    reset_layer_recursively,
)
from speechbrain_mamba.separation.dataio import separation_dataset
from speechbrain_mamba.separation.dynamic_mixing import (
    DynamicMixer,
    build_speaker_table,
    dynamic_mixing_dataset,
)

logger = logging.getLogger(__name__)

#: Record of the checked dynamic mixing sources, in ``save_folder``.
DM_AUDIO_RECORD = "dynamic_mixing_audio_check.json"
REQUIRED_KEYS = (
    "output_folder",
    "save_folder",
    "data_folder",
    "train_data",
    "valid_data",
    "test_data",
    "num_spks",
    "sample_rate",
    "modules",
    "optimizer",
    "epoch_counter",
    "checkpointer",
)


def load_recipe_hparams(
    hparams_file: Union[str, Path], overrides: Union[str, dict, None] = None
) -> dict:
    """Loads a recipe hparams file and checks the keys the recipe needs.

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        The YAML file.
    overrides : str or dict, optional
        Hyperpyyaml overrides.

    Returns
    -------
    dict
        The loaded hparams.
    """
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides or {})
    missing = [k for k in REQUIRED_KEYS if k not in hparams]
    if missing:
        raise KeyError(f"{hparams_file} lacks the recipe keys {missing}")
    for name in ("encoder", "masknet", "decoder"):
        if name not in hparams["modules"]:
            raise KeyError(f"{hparams_file}: modules lacks {name!r}")
    return hparams


def check_dynamic_mixing(hparams: dict) -> None:
    """Fails early when dynamic mixing is on without a usable folder.

    Arguments
    ---------
    hparams : dict
        Recipe hparams.
    """
    if not hparams.get("dynamic_mixing", False):
        return
    folder = hparams.get("base_folder_dm")
    if not folder or not Path(folder).is_dir():
        raise FileNotFoundError(
            "dynamic_mixing is True but base_folder_dm is not an existing "
            f"folder: {folder!r} (point it to the single-speaker training "
            "utterances, e.g. wsj0/si_tr_s or LibriSpeech/train-clean-360)"
        )


def make_datasets(hparams: dict) -> tuple:
    """Builds the train, valid and test datasets of a recipe.

    Arguments
    ---------
    hparams : dict
        Recipe hparams (after data preparation).

    Returns
    -------
    tuple
        ``(train, valid, test)`` datasets.
    """
    common = {
        "data_folder": hparams["data_folder"],
        "num_spks": hparams["num_spks"],
        "sample_rate": hparams["sample_rate"],
    }
    if hparams.get("dynamic_mixing", False):
        record = None
        if hparams.get("save_folder"):
            record = Path(hparams["save_folder"]) / DM_AUDIO_RECORD
        mixer = DynamicMixer(
            build_speaker_table(hparams["base_folder_dm"], record_file=record),
            hparams["num_spks"],
            hparams["sample_rate"],
            max_length=hparams.get("training_signal_len"),
        )
        train = dynamic_mixing_dataset(
            hparams["train_data"],
            hparams["data_folder"],
            mixer,
            limit=hparams.get("train_limit"),
        )
    else:
        train = separation_dataset(
            hparams["train_data"],
            sorting=hparams.get("sorting"),
            limit=hparams.get("train_limit"),
            **common,
        )
    valid = separation_dataset(
        hparams["valid_data"], limit=hparams.get("valid_limit"), **common
    )
    test = separation_dataset(
        hparams["test_data"], limit=hparams.get("test_limit"), **common
    )
    return train, valid, test


def train_and_test(
    hparams_file: Union[str, Path],
    overrides: Union[str, dict, None] = None,
    run_opts: Optional[dict] = None,
    train: bool = True,
    test: bool = True,
    brain_class: type = SeparationBrain,
) -> SeparationBrain:
    """Runs the whole recipe (see the module docstring).

    Arguments
    ---------
    hparams_file : str or pathlib.Path
        Recipe hparams file.
    overrides : str or dict, optional
        Hyperpyyaml overrides (e.g. ``{"data_folder": ...}``).
    run_opts : dict, optional
        SpeechBrain run options (``device``, ``precision``, ``log_config``
        (a logging config YAML), ...).
    train : bool
        Runs the training stage.
    test : bool
        Runs the test stage (metrics CSV).
    brain_class : type
        The Brain to run (a SeparationBrain subclass, e.g. enhancement's).

    Returns
    -------
    SeparationBrain
        The brain, with ``valid_stats`` / ``test_stats`` / ``test_results``.
    """
    run_opts = dict(run_opts or {})
    hparams = load_recipe_hparams(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    log_config = {}
    if run_opts.get("log_config"):
        log_config = {"log_config": run_opts["log_config"]}
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=str(hparams_file),
        overrides=overrides or {},
        **log_config,
    )
    check_dynamic_mixing(hparams)
    if "prepare_data" in hparams:
        run_on_main(hparams["prepare_data"])
    train_data, valid_data, test_data = make_datasets(hparams)

    brain = brain_class(
        modules=hparams["modules"],
        opt_class=hparams["optimizer"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if "pretrained_separator" in hparams:
        run_on_main(hparams["pretrained_separator"].collect_files)
        hparams["pretrained_separator"].load_collected()
    else:
        for module in brain.modules.values():
            reset_layer_recursively(module)

    eval_opts = hparams.get("eval_dataloader_opts", {"batch_size": 1})
    if train:
        brain.fit(
            hparams["epoch_counter"],
            train_data,
            valid_data,
            train_loader_kwargs=hparams.get(
                "train_dataloader_opts", {"batch_size": 1}
            ),
            valid_loader_kwargs=eval_opts,
        )
    if test:
        brain.evaluate(
            test_data, min_key="loss", test_loader_kwargs=dict(eval_opts)
        )
    return brain


def run_recipe(argv: Sequence[str]) -> SeparationBrain:
    """Command-line entry point: ``train.py <hparams.yaml> [--key value]``.

    Arguments
    ---------
    argv : sequence of str
        Command-line arguments (without the program name).

    Returns
    -------
    SeparationBrain
        The trained brain.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(list(argv))
    return train_and_test(hparams_file, overrides, run_opts)
