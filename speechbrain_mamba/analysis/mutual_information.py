"""Layer-wise mutual-information analysis of trained speech models
(Zhang et al., "Rethinking Mamba in speech processing by self-supervised
models").

For every model and every encoder layer, estimates MI(input; layer) and,
when the audio list has labels, MI(layer; labels); writes one CSV per model,
a CSV with all models and a PNG with one curve per model::

    python -m speechbrain_mamba.analysis.mutual_information \\
        --model results/ssl/hubert_bimamba/1234 \\
        --model transformer=results/ssl/hubert_transformer/1234 \\
        --audio results/ssl/hubert_bimamba/1234/test-clean.csv \\
        --out mi_results --estimator mine --seed 0

``--model`` takes a hub folder or a recipe's output folder, optionally
prefixed by ``NAME=``; ``--audio`` a CSV (``ID`` + ``wav`` / ``mix_wav`` /
``noisy_wav`` column, or ``--audio-column``) or a folder of audio files.
``--label-column`` names a CSV column of frame labels or target audio
files; ``--label-file`` gives frame labels as ``ID label label ...`` lines
(e.g. the ``.km`` k-means targets of the SSL recipe). Runs on the GPU when
there is one (``--device``). The same seed gives the same numbers on the
same device.

Outputs in ``--out``: ``mi_<NAME>.csv`` (per model), ``mi_layers.csv``
(all models) and ``mi_curves.png``.

Author
------
speechbrain-mamba developers
"""

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from speechbrain_mamba.analysis.audio import list_utterances
from speechbrain_mamba.analysis.estimators import ESTIMATORS
from speechbrain_mamba.analysis.layerwise import (
    REFERENCES,
    collect_layer_states,
    layerwise_mi,
)
from speechbrain_mamba.analysis.models import AnalysisModel, load_model

logger = logging.getLogger(__name__)

COLUMNS = (
    "model",
    "layer_index",
    "layer",
    "relative_depth",
    "frames",
    "dim",
    "estimator",
    "reference",
    "mi_input",
    "mi_label",
)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def parse_model_arg(value: str) -> tuple:
    """Splits ``NAME=PATH`` (NAME optional) into ``(name, path)``.

    Arguments
    ---------
    value : str
        The ``--model`` argument.

    Returns
    -------
    tuple
        ``(name or None, path)``.

    Example
    -------
    >>> parse_model_arg("mamba=exp/a")
    ('mamba', 'exp/a')
    >>> parse_model_arg("exp/a")
    (None, 'exp/a')
    """
    if "=" in value:
        name, path = value.split("=", 1)
        if name and "/" not in name:
            return name, path
    return None, value


def analyse_model(
    model: AnalysisModel,
    utterances,
    estimator: str = "mine",
    reference: str = "encoder_input",
    layers=None,
    seed: int = 0,
    batch_size: int = 4,
    max_frames: Optional[int] = 20000,
    pca_dim: Optional[int] = None,
    resample: bool = False,
    **estimator_kwargs,
) -> List[dict]:
    """Collects the layer states of one model and estimates the MI.

    Arguments
    ---------
    model : AnalysisModel
        The model.
    utterances : list of Utterance
        Audio (and labels).
    estimator : str
        Estimator name.
    reference : str
        ``"encoder_input"`` or ``"fbank"``.
    layers : str or list of str, optional
        Layers (default: the model's).
    seed : int
        Seed.
    batch_size : int
        Utterances per forward pass.
    max_frames : int, optional
        Frames per layer.
    pca_dim : int, optional
        PCA reduction before estimating.
    resample : bool
        Resample audio at other rates.
    **estimator_kwargs
        Estimator options.

    Returns
    -------
    list of dict
        Rows with the columns :data:`COLUMNS`.
    """
    torch.manual_seed(seed)
    collected = collect_layer_states(
        model,
        utterances,
        layers=layers,
        reference=reference,
        batch_size=batch_size,
        max_frames=max_frames,
        resample=resample,
        seed=seed,
    )
    device = str(model.device)
    rows = layerwise_mi(
        collected,
        estimator,
        seed=seed,
        device=device,
        pca_dim=pca_dim,
        **estimator_kwargs,
    )
    for row in rows:
        row.update(model=model.name, estimator=estimator, reference=reference)
        row.setdefault("mi_label", "")
    return rows


def write_rows(path: Union[str, Path], rows: Sequence[dict]) -> Path:
    """Writes rows under :data:`COLUMNS` (atomically).

    Arguments
    ---------
    path : str or pathlib.Path
        Destination CSV.
    rows : sequence of dict
        Result rows.

    Returns
    -------
    pathlib.Path
    """
    from speechbrain_mamba.utils.atomic import atomic_write_csv

    def fmt(row):
        out = dict(row)
        for key in ("mi_input", "mi_label", "relative_depth"):
            if isinstance(out.get(key), float):
                out[key] = f"{out[key]:.6f}"
        return out

    return atomic_write_csv(path, COLUMNS, [fmt(r) for r in rows])


def plot_curves(
    rows: Sequence[dict],
    path: Union[str, Path],
    x_axis: str = "auto",
    title: Optional[str] = None,
) -> Path:
    """Plots MI(input; layer) (and MI(layer; labels)) per layer, one line
    per model, into a PNG (written atomically).

    Arguments
    ---------
    rows : sequence of dict
        Rows of one or several models.
    path : str or pathlib.Path
        Destination ``.png``.
    x_axis : str
        ``"index"`` (layer number), ``"depth"`` (layer / number of layers)
        or ``"auto"`` (depth when the models differ in depth).
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "the MI plot needs matplotlib: pip install matplotlib"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechbrain_mamba.utils.atomic import atomic_target

    models: Dict[str, List[dict]] = {}
    for row in rows:
        models.setdefault(row["model"], []).append(row)
    depths = {len(r) for r in models.values()}
    if x_axis == "auto":
        x_axis = "depth" if len(depths) > 1 else "index"
    if x_axis not in ("index", "depth"):
        raise ValueError(f"x_axis must be index, depth or auto, got {x_axis!r}")
    has_label = any(r.get("mi_label") not in (None, "") for r in rows)
    panels = [("mi_input", "MI(input; layer) [nats]")]
    if has_label:
        panels.append(("mi_label", "MI(layer; labels) [nats]"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False
    )
    for ax, (key, label) in zip(axes[0], panels):
        for name, model_rows in models.items():
            model_rows = sorted(model_rows, key=lambda r: int(r["layer_index"]))
            values = [
                float(r[key]) if r.get(key) not in (None, "") else np.nan
                for r in model_rows
            ]
            if x_axis == "depth":
                xs = [float(r["relative_depth"]) for r in model_rows]
            else:
                xs = [int(r["layer_index"]) for r in model_rows]
            ax.plot(xs, values, marker="o", label=name)
        if x_axis == "index":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("relative depth" if x_axis == "depth" else "layer")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    estimators = sorted({r.get("estimator", "") for r in rows})
    fig.suptitle(
        title or f"Layer-wise mutual information ({', '.join(estimators)})"
    )
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_target(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def run_analysis(
    models: Sequence[str],
    audio: Union[str, Path],
    out_dir: Union[str, Path],
    estimator: str = "mine",
    reference: str = "encoder_input",
    layers: Optional[str] = None,
    audio_column: Optional[str] = None,
    label_column: Optional[str] = None,
    data_root: Optional[str] = None,
    max_utterances: Optional[int] = None,
    max_frames: Optional[int] = 20000,
    batch_size: int = 4,
    seed: int = 0,
    device: Optional[str] = None,
    label_file: Optional[str] = None,
    pca_dim: Optional[int] = None,
    resample: bool = False,
    x_axis: str = "auto",
    ckpt_key: Optional[str] = None,
    ckpt_key_min: bool = False,
    **estimator_kwargs,
) -> Dict[str, Path]:
    """Runs the whole analysis (see the module docstring).

    Arguments
    ---------
    models : sequence of str
        ``[NAME=]FOLDER`` per model.
    audio : str or pathlib.Path
        CSV file or folder.
    out_dir : str or pathlib.Path
        Output folder.
    estimator, reference, layers, audio_column, label_column, data_root,
    max_utterances, max_frames, batch_size, seed, device, label_file, pca_dim,
    resample, x_axis, ckpt_key, ckpt_key_min, **estimator_kwargs
        See the command-line help.

    Returns
    -------
    dict
        Output name -> path (``"all"``, ``"plot"`` and one per model).
    """
    if not models:
        raise ValueError("give at least one model")
    out_dir = Path(out_dir)
    utterances = list_utterances(
        audio,
        audio_column,
        label_column,
        data_root,
        max_utterances,
        seed,
        label_file=label_file,
    )
    logger.info("%d utterances from %s", len(utterances), audio)
    written: Dict[str, Path] = {}
    all_rows: List[dict] = []
    seen = set()
    for spec in models:
        name, path = parse_model_arg(spec)
        model = load_model(
            path,
            name=name,
            ckpt_key=ckpt_key,
            ckpt_key_max=not ckpt_key_min,
            device=device,
        )
        if model.name in seen:
            raise ValueError(
                f"two models are named {model.name!r}: use NAME=FOLDER"
            )
        seen.add(model.name)
        rows = analyse_model(
            model,
            utterances,
            estimator=estimator,
            reference=reference,
            layers=layers,
            seed=seed,
            batch_size=batch_size,
            max_frames=max_frames,
            pca_dim=pca_dim,
            resample=resample,
            **estimator_kwargs,
        )
        written[model.name] = write_rows(
            out_dir / f"mi_{_safe_name(model.name)}.csv", rows
        )
        all_rows += rows
        del model
    written["all"] = write_rows(out_dir / "mi_layers.csv", all_rows)
    written["plot"] = plot_curves(all_rows, out_dir / "mi_curves.png", x_axis)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_mamba.analysis.mutual_information",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="[NAME=]FOLDER: hub folder or recipe output folder (repeatable)",
    )
    parser.add_argument(
        "--audio", required=True, help="CSV file or audio folder"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="mine")
    parser.add_argument(
        "--reference", choices=REFERENCES, default="encoder_input"
    )
    parser.add_argument(
        "--layers", default=None, help="layer pattern, e.g. 'encoder.layers.*'"
    )
    parser.add_argument("--audio-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument(
        "--label-file", default=None, help="'ID label label ...' lines"
    )
    parser.add_argument("--data-root", default=None, help="replaces $data_root")
    parser.add_argument("--max-utterances", type=int, default=None)
    parser.add_argument("--max-frames", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default=None, help="default: cuda if present"
    )
    parser.add_argument("--steps", type=int, default=1000, help="MINE/InfoNCE")
    parser.add_argument("--hidden", type=int, default=128, help="critic width")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=3, help="KSG neighbours")
    parser.add_argument("--pca-dim", type=int, default=None)
    parser.add_argument("--resample", action="store_true")
    parser.add_argument(
        "--x-axis", choices=("auto", "index", "depth"), default="auto"
    )
    parser.add_argument("--ckpt-key", default=None, help="checkpoint meta key")
    parser.add_argument(
        "--ckpt-key-min", action="store_true", help="lowest ckpt-key is best"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point.

    Arguments
    ---------
    argv : sequence of str, optional
        Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.estimator == "ksg":
        est_kwargs = {"k": args.k}
    else:
        est_kwargs = {"steps": args.steps, "hidden": args.hidden, "lr": args.lr}
    written = run_analysis(
        args.model,
        args.audio,
        args.out,
        estimator=args.estimator,
        reference=args.reference,
        layers=args.layers,
        audio_column=args.audio_column,
        label_column=args.label_column,
        data_root=args.data_root,
        max_utterances=args.max_utterances,
        max_frames=args.max_frames,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        label_file=args.label_file,
        pca_dim=args.pca_dim,
        resample=args.resample,
        x_axis=args.x_axis,
        ckpt_key=args.ckpt_key,
        ckpt_key_min=args.ckpt_key_min,
        **est_kwargs,
    )
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
