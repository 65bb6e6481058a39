"""Loading a trained model's hyperparameters from a folder.

Two kinds of folder hold a ``hyperparams.yaml``:

- a *hub folder* (what the export commands write and ``from_hparams``
  reads): the YAML has a ``pretrainer`` whose files (``asr.ckpt``,
  ``masknet.ckpt`` ...) sit in the folder;
- an *experiment folder* (a recipe's ``output_folder``): the YAML the recipe
  saved and a ``save`` folder of checkpoints; the most recent checkpoint is
  loaded (or the best one with ``ckpt_key``).

:func:`load_trained_hparams` tells them apart and returns the loaded
hyperparameters, whose modules hold the trained weights.

Author
------
speechbrain-mamba developers
"""

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)


def load_experiment_hparams(
    folder: PathLike,
    hparams_file: str = "hyperparams.yaml",
    overrides: Optional[dict] = None,
) -> Dict[str, Any]:
    """Loads the hyperparameters a recipe saved in its output folder (the
    modules are built, no checkpoint is loaded).

    Arguments
    ---------
    folder : str or os.PathLike
        The recipe's ``output_folder``.
    hparams_file : str
        Name of the saved hyperparameters inside ``folder``.
    overrides : dict, optional
        YAML overrides.

    Returns
    -------
    dict
        The loaded hyperparameters.

    Example
    -------
    >>> folder = Path(getfixture("tmpdir"))
    >>> _ = (folder / "hyperparams.yaml").write_text("n: !ref <m>\\nm: 3")
    >>> load_experiment_hparams(folder, overrides={"m": 4})["n"]
    4
    >>> load_experiment_hparams(folder / "nothing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... not found: pass the recipe's output_folder
    """
    from hyperpyyaml import load_hyperpyyaml

    yaml_path = Path(folder) / hparams_file
    if not yaml_path.is_file():
        raise FileNotFoundError(
            f"{yaml_path} not found: pass the recipe's output_folder"
        )
    with open(yaml_path, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides or {})


def load_experiment(
    folder: PathLike,
    ckpt_key: Optional[str] = None,
    ckpt_key_max: bool = True,
    overrides: Optional[dict] = None,
) -> Dict[str, Any]:
    """Loads a recipe experiment folder and its checkpoint.

    Arguments
    ---------
    folder : str or os.PathLike
        The recipe's ``output_folder`` (``hyperparams.yaml`` + ``save``).
    ckpt_key : str, optional
        Checkpoint meta key to rank by; default the most recent checkpoint.
    ckpt_key_max : bool
        Take the highest (True) or lowest value of ``ckpt_key``.
    overrides : dict, optional
        YAML overrides.

    Returns
    -------
    dict
        The hyperparameters, with the checkpoint loaded into the modules.
    """
    hparams = load_experiment_hparams(folder, overrides=overrides)
    checkpointer = hparams.get("checkpointer")
    if checkpointer is None:
        raise KeyError(
            f"{Path(folder) / 'hyperparams.yaml'} has no 'checkpointer'"
        )
    kwargs = {}
    if ckpt_key:
        kwargs = {"max_key" if ckpt_key_max else "min_key": ckpt_key}
    ckpt = checkpointer.recover_if_possible(**kwargs)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint in {checkpointer.checkpoints_dir}"
            + (f" with the key {ckpt_key!r}" if ckpt_key else "")
            + ": train the model first"
        )
    logger.info("loaded checkpoint %s", ckpt.path)
    return hparams


def load_hub_folder(folder: PathLike) -> Dict[str, Any]:
    """Loads a hub folder (``hyperparams.yaml`` with a ``pretrainer`` whose
    files are in the folder).

    Arguments
    ---------
    folder : str or os.PathLike
        The folder.

    Returns
    -------
    dict
        The hyperparameters with the pretrained weights loaded.
    """
    folder = Path(folder).resolve()
    hparams = load_experiment_hparams(folder)
    pretrainer = hparams.get("pretrainer")
    if pretrainer is None:
        raise KeyError(f"{folder}/hyperparams.yaml has no 'pretrainer'")
    with tempfile.TemporaryDirectory() as collect:
        pretrainer.set_collect_in(collect)
        pretrainer.collect_files(default_source=str(folder))
        pretrainer.load_collected()
    return hparams


def load_trained_hparams(
    source: PathLike,
    ckpt_key: Optional[str] = None,
    ckpt_key_max: bool = True,
) -> Dict[str, Any]:
    """Loads a hub or experiment folder with its trained weights.

    Arguments
    ---------
    source : str or os.PathLike
        The folder: an experiment folder when it has a ``save`` subfolder,
        else a hub folder.
    ckpt_key : str, optional
        Checkpoint ranking key for experiment folders.
    ckpt_key_max : bool
        Highest (True) or lowest ``ckpt_key``.

    Returns
    -------
    dict
        The hyperparameters, with the trained weights in the modules.

    Example
    -------
    >>> load_trained_hparams("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder /nonexistent does not exist
    >>> tmpdir = getfixture("tmpdir")
    >>> load_trained_hparams(tmpdir)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... has no hyperparams.yaml: give a hub folder or ...
    """
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not (folder / "hyperparams.yaml").is_file():
        raise FileNotFoundError(
            f"{folder} has no hyperparams.yaml: give a hub folder or a "
            "recipe's output folder"
        )
    if (folder / "save").is_dir():
        return load_experiment(folder, ckpt_key, ckpt_key_max)
    return load_hub_folder(folder)
