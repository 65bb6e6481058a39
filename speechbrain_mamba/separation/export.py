"""Turns a trained separation experiment into a hub-ready folder.

The folder loads with SpeechBrain's own inference interface, offline or from
the Hugging Face hub, and works on CPU and GPU::

    import speechbrain_mamba  # noqa: F401
    from speechbrain.inference.separation import SepformerSeparation
    model = SepformerSeparation.from_hparams(source=FOLDER, savedir=TMP)
    est = model.separate_file(FOLDER + "/example_mixture.wav")

It holds:

- ``hyperparams.yaml``: the model definition copied from the experiment's
  hyperparameters (``Encoder``, ``MaskNet``, ``Decoder``, ``sample_rate``,
  ``num_spks``), the ``modules`` SpeechBrain's ``SepformerSeparation``
  needs, and a ``pretrainer`` that loads the checkpoints;
- ``encoder.ckpt``, ``masknet.ckpt``, ``decoder.ckpt``: the best checkpoint
  (lowest validation loss);
- ``README.md``: a model card with the test metrics of the experiment;
- ``example_mixture.wav``: a test mixture (first row of the test CSV, or
  ``--example``).

Command line::

    python -m speechbrain_mamba.separation.export --exp-dir EXP --out FOLDER
        [--example WAV] [--name NAME] [--no-verify] [--force]
        [--upload REPO_ID [--private]]

``--upload`` pushes the folder with ``huggingface_hub`` (installed
separately; the token comes from ``huggingface-cli login`` or ``HF_TOKEN``).

Author
------
speechbrain-mamba developers
"""

import argparse
import csv
import io
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import ruamel.yaml
import torch

from speechbrain_mamba.separation.results import read_results_csv
from speechbrain_mamba.utils.atomic import atomic_folder, check_target_folder
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

MODEL_KEYS = ("Encoder", "MaskNet", "Decoder")
CHECKPOINTS = {
    "encoder": "encoder.ckpt",
    "masknet": "masknet.ckpt",
    "decoder": "decoder.ckpt",
}
EXAMPLE_NAME = "example_mixture.wav"

INFERENCE_TAIL = """
modules:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <Encoder>
        masknet: !ref <MaskNet>
        decoder: !ref <Decoder>
"""


def _strip_comments(node) -> None:
    """Removes ruamel round-trip comments from a node tree, in place."""
    if hasattr(node, "ca"):
        node.ca.items.clear()
        node.ca.comment = None
        if hasattr(node.ca, "end"):
            node.ca.end = None
    if isinstance(node, dict):
        for value in node.values():
            _strip_comments(value)
    elif isinstance(node, list):
        for value in node:
            _strip_comments(value)


def inference_yaml(
    model_nodes: dict, sample_rate: int, num_spks: int, title: str = ""
) -> str:
    """Writes the inference ``hyperparams.yaml`` text.

    Arguments
    ---------
    model_nodes : dict
        ``Encoder``, ``MaskNet`` and ``Decoder`` YAML nodes (ruamel round-trip
        nodes or plain YAML text of the three entries under key ``"text"``).
    sample_rate : int
        Sample rate of the model.
    num_spks : int
        Number of separated sources.
    title : str
        First comment line.

    Returns
    -------
    str
        YAML text loadable by ``SepformerSeparation.from_hparams``.

    Example
    -------
    >>> text = "Encoder: !new:torch.nn.Identity\\n"
    >>> print(inference_yaml({"text": text}, 8000, 2).splitlines()[3])
    sample_rate: 8000
    """
    header = (
        f"# {title or 'Speech separation model'}\n"
        "# Inference hyperparameters for speechbrain.inference.separation."
        "SepformerSeparation\n"
        "# (written by speechbrain_mamba.separation.export)\n"
        f"sample_rate: {int(sample_rate)}\nnum_spks: {int(num_spks)}\n\n"
    )
    if "text" in model_nodes:
        body = model_nodes["text"]
    else:
        yaml = ruamel.yaml.YAML()
        yaml.indent(mapping=4, sequence=4, offset=2)
        doc = ruamel.yaml.comments.CommentedMap()
        for key in MODEL_KEYS:
            doc[key] = model_nodes[key]
        _strip_comments(doc)
        buf = io.StringIO()
        yaml.dump(doc, buf)
        body = buf.getvalue()
    return header + body + INFERENCE_TAIL


def model_nodes_from_hparams(hparams_file: PathLike) -> tuple[dict, dict]:
    """Reads the model entries of an experiment's ``hyperparams.yaml``.

    Arguments
    ---------
    hparams_file : str or os.PathLike
        The resolved hyperparameters SpeechBrain saves in the experiment
        folder.

    Returns
    -------
    nodes : dict
        ``Encoder`` / ``MaskNet`` / ``Decoder`` YAML nodes.
    values : dict
        ``sample_rate``, ``num_spks`` and, when present, ``test_data``,
        ``data_folder``, ``experiment_name``, ``lr``, ``number_of_epochs``.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as fin:
        doc = yaml.load(fin)
    missing = [
        k for k in (*MODEL_KEYS, "sample_rate", "num_spks") if k not in doc
    ]
    if missing:
        raise KeyError(
            f"{hparams_file} lacks {missing}; export needs the Encoder, "
            "MaskNet, Decoder, sample_rate and num_spks entries"
        )
    nodes = {k: doc[k] for k in MODEL_KEYS}
    values = {}
    for key in (
        "sample_rate",
        "num_spks",
        "test_data",
        "data_folder",
        "experiment_name",
        "lr",
        "number_of_epochs",
    ):
        if key in doc:
            values[key] = doc[key]
    return nodes, values


def best_checkpoint(save_folder: PathLike, min_key: str = "loss") -> Path:
    """Finds the checkpoint with the lowest ``min_key`` (or the latest one
    when no checkpoint has that key). Saves interrupted by a kill are
    skipped; folders without a completion marker (written by SpeechBrain's
    ``Checkpointer``) count when their files are whole (see
    :mod:`speechbrain_mamba.utils.checkpoints`).

    Arguments
    ---------
    save_folder : str or os.PathLike
        The experiment's ``save`` folder.
    min_key : str
        Checkpoint meta key to minimise.

    Returns
    -------
    pathlib.Path
        The ``CKPT+...`` folder.
    """
    from speechbrain_mamba.utils.checkpoints import CompleteCheckpointer

    save_folder = Path(save_folder)
    if not save_folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {save_folder}")
    # skips saves a kill interrupted; marker-less (legacy) folders count
    checkpointer = CompleteCheckpointer(save_folder)
    ckpts = checkpointer.list_checkpoints()
    if not ckpts:
        raise FileNotFoundError(f"no checkpoint (CKPT+*) in {save_folder}")
    keyed = [c for c in ckpts if min_key in c.meta]
    if keyed:
        best = min(keyed, key=lambda c: c.meta[min_key])
    else:
        best = max(ckpts, key=lambda c: c.meta.get("unixtime", 0))
    return Path(best.path)


def _first_test_mixture(values: dict) -> Optional[Path]:
    test_csv = values.get("test_data")
    if not test_csv or not Path(test_csv).is_file():
        return None
    with open(test_csv, encoding="utf-8", newline="") as fin:
        row = next(csv.DictReader(fin), None)
    if row is None or "mix_wav" not in row:
        return None
    path = row["mix_wav"].replace(
        "$data_root", str(values.get("data_folder", ""))
    )
    return Path(path) if Path(path).is_file() else None


def count_parameters(yaml_text: str) -> int:
    """Number of parameters of the modules an inference YAML defines.

    Arguments
    ---------
    yaml_text : str
        Inference ``hyperparams.yaml`` text.

    Returns
    -------
    int
        Total parameter count of ``modules``.
    """
    from hyperpyyaml import load_hyperpyyaml

    hparams = load_hyperpyyaml(yaml_text)
    return sum(
        p.numel() for m in hparams["modules"].values() for p in m.parameters()
    )


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def model_card(
    name: str,
    num_params: int,
    sample_rate: int,
    num_spks: int,
    metrics: Optional[dict] = None,
    num_test: Optional[int] = None,
    training: Optional[dict] = None,
    repo_id: Optional[str] = None,
) -> str:
    """Writes the model card (README.md) of a hub folder.

    Arguments
    ---------
    name : str
        Model name (e.g. ``mamba_tasnet_S``).
    num_params : int
        Number of parameters.
    sample_rate : int
        Sample rate in Hz.
    num_spks : int
        Number of sources.
    metrics : dict, optional
        Average test metrics (``si-snr``, ``si-snr_i``, ``sdr``, ``sdr_i``,
        ``pesq``, ``stoi``).
    num_test : int, optional
        Number of test utterances behind ``metrics``.
    training : dict, optional
        Training facts shown in the card (e.g. data, epochs, lr).
    repo_id : str, optional
        Hub repository used in the usage snippet.

    Returns
    -------
    str
        Markdown text with a Hugging Face metadata header.

    Example
    -------
    >>> card = model_card("tiny", 1234, 8000, 2, {"si-snr_i": 10.0})
    >>> "| SI-SNRi (dB) | 10.00 |" in card
    True
    """
    source = repo_id or "<this folder or repo id>"
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: speechbrain",
        "pipeline_tag: audio-to-audio",
        "tags:",
        "- speech-separation",
        "- speechbrain",
        "- mamba",
        "- audio-to-audio",
        "---",
        "",
        f"# {name}: speech separation with speechbrain-mamba",
        "",
        f"Separates a {sample_rate // 1000} kHz mixture of {num_spks} "
        f"speakers. {num_params / 1e6:.2f} M parameters. Trained with the "
        "separation recipes of speechbrain-mamba (Mamba-TasNet / DPMamba, "
        '"Speech Slytherin", Jiang et al. 2024).',
        "",
        "## Usage",
        "",
        "```python",
        "import speechbrain_mamba  # noqa: F401  (registers the model classes)",
        "from speechbrain.inference.separation import SepformerSeparation",
        "",
        "model = SepformerSeparation.from_hparams(",
        f'    source="{source}", savedir="pretrained_models/{name}"',
        ")",
        f'est_sources = model.separate_file("{EXAMPLE_NAME}")  '
        f"# [1, time, {num_spks}]",
        "```",
        "",
        'Add `run_opts={"device": "cuda"}` to `from_hparams` to run on a GPU.',
        "",
    ]
    if metrics:
        lines += ["## Test results", ""]
        if num_test is not None:
            lines += [f"Averages over {num_test} test mixtures.", ""]
        lines += ["| Metric | Value |", "| --- | --- |"]
        names = {
            "si-snr": "SI-SNR (dB)",
            "si-snr_i": "SI-SNRi (dB)",
            "sdr": "SDR (dB)",
            "sdr_i": "SDRi (dB)",
            "pesq": "PESQ",
            "stoi": "STOI",
        }
        for key, label in names.items():
            if key in metrics:
                digits = 3 if key == "stoi" else 2
                lines.append(
                    f"| {label} | {_fmt(float(metrics[key]), digits)} |"
                )
        lines.append("")
    if training:
        lines += ["## Training", ""]
        lines += [f"- {key}: {value}" for key, value in training.items()]
        lines.append("")
    lines += [
        "## Files",
        "",
        "- `hyperparams.yaml`: model definition and loading instructions",
        "- `encoder.ckpt`, `masknet.ckpt`, `decoder.ckpt`: weights",
        f"- `{EXAMPLE_NAME}`: an example test mixture",
        "",
    ]
    return "\n".join(lines)


def verify_hub_folder(folder: PathLike, device: str = "cpu") -> torch.Tensor:
    """Loads a hub folder with ``SepformerSeparation`` and separates its
    example mixture (or one second of noise without example).

    Arguments
    ---------
    folder : str or os.PathLike
        The hub folder.
    device : str
        Device to run on.

    Returns
    -------
    torch.Tensor
        ``[1, T, num_spks]`` separated sources.
    """
    from speechbrain.inference.separation import SepformerSeparation

    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory() as savedir:
        model = SepformerSeparation.from_hparams(
            source=str(folder), savedir=savedir, run_opts={"device": device}
        )
        example = folder / EXAMPLE_NAME
        if example.is_file():
            est = model.separate_file(str(example), savedir=savedir)
        else:
            mix = torch.randn(1, int(model.hparams.sample_rate))
            est = model.separate_batch(mix)
    if not torch.isfinite(est).all():
        raise RuntimeError(f"{folder}: the exported model outputs NaN/inf")
    return est


def write_hub_folder(
    out_dir: PathLike,
    yaml_text: str,
    checkpoints: dict[str, PathLike],
    card_text: str,
    example: Optional[PathLike] = None,
    force: bool = False,
) -> Path:
    """Writes a hub folder whole (built in a temporary folder next to
    ``out_dir``, then swapped in; see
    :func:`speechbrain_mamba.utils.atomic.atomic_folder`).

    Arguments
    ---------
    out_dir : str or os.PathLike
        Destination folder: new or empty, unless ``force``.
    yaml_text : str
        Inference ``hyperparams.yaml``.
    checkpoints : dict
        ``encoder`` / ``masknet`` / ``decoder`` -> checkpoint file to copy.
    card_text : str
        ``README.md`` content.
    example : str or os.PathLike, optional
        Example mixture to copy as ``example_mixture.wav``.
    force : bool
        Replace the content of a non-empty ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    sources = list(checkpoints.values())
    with atomic_folder(out_dir, force, sources) as tmp:
        (tmp / "hyperparams.yaml").write_text(yaml_text, encoding="utf-8")
        for name, filename in CHECKPOINTS.items():
            src = Path(checkpoints[name])
            if not src.is_file():
                raise FileNotFoundError(f"checkpoint file not found: {src}")
            shutil.copyfile(src, tmp / filename)
        (tmp / "README.md").write_text(card_text, encoding="utf-8")
        if example is not None:
            shutil.copyfile(example, tmp / EXAMPLE_NAME)
    return out_dir


def export_experiment(
    exp_dir: PathLike,
    out_dir: PathLike,
    example: Optional[PathLike] = None,
    name: Optional[str] = None,
    verify: bool = True,
    force: bool = False,
    repo_id: Optional[str] = None,
) -> Path:
    """Exports a trained experiment folder to a hub-ready folder.

    Arguments
    ---------
    exp_dir : str or os.PathLike
        Experiment folder (``output_folder`` of the recipe: holds
        ``hyperparams.yaml``, ``save/CKPT+*`` and ``test_results.csv``).
    out_dir : str or os.PathLike
        Folder to create.
    example : str or os.PathLike, optional
        Example mixture (default: the first test mixture of the experiment).
    name : str, optional
        Model name in the card (default: ``experiment_name``).
    verify : bool
        Loads the folder with ``SepformerSeparation`` and separates the
        example before returning.
    force : bool
        Replaces the content of a non-empty ``out_dir`` (without it, a
        non-empty ``out_dir`` raises ``NonEmptyFolderError`` before any
        work).
    repo_id : str, optional
        Hub repository named in the card's usage snippet.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    check_target_folder(out_dir, force)
    exp_dir = Path(exp_dir)
    hparams_file = exp_dir / "hyperparams.yaml"
    if not hparams_file.is_file():
        raise FileNotFoundError(
            f"{hparams_file} not found: --exp-dir must be the output_folder "
            "of a training run"
        )
    nodes, values = model_nodes_from_hparams(hparams_file)
    sample_rate, num_spks = int(values["sample_rate"]), int(values["num_spks"])
    name = name or str(values.get("experiment_name", exp_dir.name))
    yaml_text = inference_yaml(nodes, sample_rate, num_spks, title=name)
    ckpt = best_checkpoint(exp_dir / "save")
    checkpoints = {k: ckpt / v for k, v in CHECKPOINTS.items()}
    for path in checkpoints.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint must hold encoder, "
                "masknet and decoder"
            )

    if example is None:
        example = _first_test_mixture(values)
        if example is None:
            logger.warning("no test mixture found; exporting without example")
    elif not Path(example).is_file():
        raise FileNotFoundError(f"example mixture not found: {example}")

    metrics, num_test = None, None
    results = exp_dir / "test_results.csv"
    if results.is_file():
        rows = read_results_csv(results)
        metrics = rows.get("avg")
        num_test = len(rows) - 1
    else:
        logger.warning("%s not found: the model card has no metrics", results)

    training = {"checkpoint": ckpt.name}
    with open(ckpt / "CKPT.yaml", encoding="utf-8") as fin:
        meta = ruamel.yaml.YAML(typ="safe").load(fin) or {}
    if "si-snr_i" in meta:
        training["validation SI-SNRi (dB)"] = _fmt(float(meta["si-snr_i"]))
    for key in ("lr", "number_of_epochs"):
        if key in values:
            training[key] = values[key]
    if "data_folder" in values:
        training["data"] = Path(str(values["data_folder"])).name

    card = model_card(
        name,
        count_parameters(yaml_text),
        sample_rate,
        num_spks,
        metrics,
        num_test,
        training,
        repo_id,
    )
    out = write_hub_folder(
        out_dir, yaml_text, checkpoints, card, example, force
    )
    if verify:
        est = verify_hub_folder(out)
        logger.info("verified %s: separated shape %s", out, tuple(est.shape))
    return out


def upload_to_hub(folder: PathLike, repo_id: str, private: bool = False) -> str:
    """Uploads a hub folder to the Hugging Face hub.

    Arguments
    ---------
    folder : str or os.PathLike
        Folder to upload.
    repo_id : str
        ``user/name`` of the model repository (created if needed).
    private : bool
        Creates a private repository.

    Returns
    -------
    str
        URL of the repository.
    """
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ImportError(
            "--upload needs the huggingface_hub package: "
            "pip install huggingface_hub"
        ) from err
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        commit_message="Upload speechbrain-mamba separation model",
    )
    return str(url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.separation.export",
        description="Export a trained separation experiment to a hub folder.",
    )
    parser.add_argument("--exp-dir", required=True, help="experiment folder")
    parser.add_argument("--out", required=True, help="hub folder to create")
    parser.add_argument("--example", help="example mixture (wav)")
    parser.add_argument("--name", help="model name in the model card")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the loading check"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the content of a non-empty --out",
    )
    parser.add_argument("--upload", metavar="REPO_ID", help="push to the hub")
    parser.add_argument(
        "--private", action="store_true", help="private hub repository"
    )
    return parser


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
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export_experiment(
        args.exp_dir,
        args.out,
        example=args.example,
        name=args.name,
        verify=not args.no_verify,
        force=args.force,
        repo_id=args.upload,
    )
    print(f"hub folder written to {out}")
    if args.upload:
        url = upload_to_hub(out, args.upload, private=args.private)
        print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
