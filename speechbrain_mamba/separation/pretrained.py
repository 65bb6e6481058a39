"""The separation model shipped with the package, and scoring a hub model
on the mixtures of a WSJ0-2mix style folder.

:data:`MINI_WSJ0MIX_MODEL` is a hub folder (the layout
:mod:`speechbrain_mamba.separation.export` writes, loadable with
SpeechBrain's own ``SepformerSeparation.from_hparams``): Mamba-TasNet S
trained for 6.3 minutes on one H200 on the mini WSJ0-2mix corpus
(Festival and espeak-ng voices, dynamic mixing). Its ``README.md`` gives
the training and export commands and the metrics it was measured with.

:func:`score_separator` runs such a model over the mixtures of one split
of a WSJ0-2mix style folder (``wav8k/min/tt/{mix,s1,s2}``), scores every
mixture against its references and writes the estimates, the per-mixture
metrics and their average.

Author
------
speechbrain-mamba developers
"""

import logging
import re
from pathlib import Path
from typing import Callable, Optional

import soundfile as sf
import torch

from speechbrain_mamba.separation.metrics import METRICS, separation_metrics
from speechbrain_mamba.separation.results import (
    average_row,
    write_results_csv,
)
from speechbrain_mamba.utils.atomic import atomic_write_wav
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)


#: Hub folder of the shipped Mamba-TasNet S (8 kHz, two speakers).
MINI_WSJ0MIX_MODEL = (
    Path(__file__).resolve().parents[1]
    / "pretrained"
    / "mamba_tasnet_S_mini_wsj0mix"
)


def load_separator(
    source: PathLike = MINI_WSJ0MIX_MODEL,
    savedir: Optional[PathLike] = None,
    device: str = "cpu",
):
    """Loads a hub folder with SpeechBrain's ``SepformerSeparation``.

    Arguments
    ---------
    source : str or os.PathLike
        Hub folder (default: the shipped model) or hub repository id.
    savedir : str or os.PathLike, optional
        Where SpeechBrain links the files (default: a new temporary
        folder).
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    speechbrain.inference.separation.SepformerSeparation
        The model, in eval mode.

    Example
    -------
    >>> model = load_separator(savedir=getfixture("tmp_path"))
    >>> est = model.separate_batch(torch.zeros(1, 800) + 1e-3)
    >>> tuple(est.shape)
    (1, 800, 2)
    """
    from speechbrain.inference.separation import SepformerSeparation

    source = Path(source) if Path(source).is_dir() else source
    if isinstance(source, Path) and not (source / "hyperparams.yaml").is_file():
        raise FileNotFoundError(
            f"{source} is not a hub folder (no hyperparams.yaml)"
        )
    if savedir is None:
        import tempfile

        savedir = tempfile.mkdtemp(prefix="sbmamba-separator-")
    return SepformerSeparation.from_hparams(
        source=str(source), savedir=str(savedir), run_opts={"device": device}
    )


def split_mixtures(root: PathLike, subset: str = "tt") -> list:
    """The mixture files of one split of a WSJ0-2mix style folder, sorted.

    Arguments
    ---------
    root : str or os.PathLike
        Folder holding ``wav8k``.
    subset : str
        ``tr``, ``cv`` or ``tt``.

    Returns
    -------
    list of pathlib.Path
        ``wav8k/min/<subset>/mix/*.wav``.

    Example
    -------
    >>> split_mixtures(getfixture("tmp_path"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: no mixtures in .../wav8k/min/tt/mix
    """
    folder = Path(root) / "wav8k" / "min" / subset / "mix"
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no mixtures in {folder}")
    return files


def _read(path: Path) -> torch.Tensor:
    data, rate = sf.read(str(path), dtype="float32")
    if rate != 8000 or data.ndim != 1:
        raise ValueError(f"{path}: expected mono 8 kHz audio")
    return torch.from_numpy(data)


def score_separator(
    separator,
    mixtures: list,
    out_dir: Optional[PathLike] = None,
    compute_pesq: bool = True,
    compute_stoi: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list:
    """Separates WSJ0-2mix style mixtures and scores each one.

    Arguments
    ---------
    separator : SepformerSeparation
        A loaded model (:func:`load_separator`).
    mixtures : list of pathlib.Path
        ``.../mix/NAME.wav`` files; the references are the files of the
        same name in the sibling ``s1`` and ``s2`` folders.
    out_dir : str or os.PathLike, optional
        If given, receives ``NAME_mix.wav``, ``NAME_s{1,2}_hat.wav`` (the
        estimates in the references' order) and ``results.csv``.
    compute_pesq, compute_stoi : bool
        Set to False to skip the perceptual metrics (NaN).
    progress : callable, optional
        Called as ``progress(done, total)`` after each mixture.

    Returns
    -------
    list of dict
        One row per mixture: ``snt_id``, ``seconds`` and
        :data:`~speechbrain_mamba.separation.metrics.METRICS`.
    """
    rows = []
    for k, path in enumerate(mixtures):
        path = Path(path)
        mix = _read(path)
        refs = torch.stack(
            [_read(path.parents[1] / f"s{i}" / path.name) for i in (1, 2)], 1
        )
        with torch.no_grad():
            est = separator.separate_batch(mix[None])[0].float().cpu()
        metrics = separation_metrics(
            est, refs, mix, 8000, compute_pesq, compute_stoi
        )
        rows.append(
            {"snt_id": path.stem, "seconds": len(mix) / 8000, **metrics}
        )
        if out_dir is not None:
            _write_estimates(Path(out_dir), path.stem, mix, est, refs)
        if progress is not None:
            progress(k + 1, len(mixtures))
    if out_dir is not None:
        write_results_csv(
            Path(out_dir) / "results.csv", rows, ("seconds", *METRICS)
        )
    return rows


def _write_estimates(
    out: Path, name: str, mix: torch.Tensor, est: torch.Tensor, refs
) -> None:
    """Writes the mixture and the estimates, ordered like the references
    (the permutation with the higher correlation)."""
    same = (est[:, 0] * refs[:, 0]).sum() + (est[:, 1] * refs[:, 1]).sum()
    swap = (est[:, 0] * refs[:, 1]).sum() + (est[:, 1] * refs[:, 0]).sum()
    if swap > same:
        est = est[:, [1, 0]]
    peak = float(est.abs().max().clamp_min(1e-8))
    scale = min(1.0, 0.99 / peak)
    atomic_write_wav(out / f"{name}_mix.wav", mix, 8000)
    for i in range(2):
        atomic_write_wav(
            out / f"{name}_s{i + 1}_hat.wav", est[:, i] * scale, 8000
        )


#: Heading of the model card section written by :func:`reference_section`.
REFERENCE_HEADING = "## Re-measured with these weights on CPU"

_ROW = re.compile(r"^\| `([^`]+)` \| (-?[0-9.]+) \| (-?[0-9.]+) \|", re.M)


def reference_section(
    rows: list, command: str, corpus: str, shown: int = 3
) -> str:
    """Model card section with the metrics a re-evaluation can check.

    Arguments
    ---------
    rows : list of dict
        Rows of :func:`score_separator` (all mixtures of the set).
    command : str
        The command that measured them.
    corpus : str
        How the mixtures were made.
    shown : int
        Mixtures listed one by one (the others enter the mean only).

    Returns
    -------
    str
        Markdown text starting with :data:`REFERENCE_HEADING`.

    Example
    -------
    >>> rows = [{"snt_id": "a", "si-snr_i": 9.0, "sdr_i": 9.5, "pesq": 2.0,
    ...          "stoi": 0.9}, {"snt_id": "b", "si-snr_i": 7.0,
    ...          "sdr_i": 7.5, "pesq": 1.8, "stoi": 0.8}]
    >>> text = reference_section(rows, "cmd", "corpus", shown=1)
    >>> read_reference_rows(text)
    {'a': (9.0, 9.5)}
    >>> "| mean of 2 mixtures | 8.00 | 8.50 | 1.90 | 0.850 |" in text
    True
    """
    mean = average_row(rows, ("si-snr_i", "sdr_i", "pesq", "stoi"))
    lines = [
        REFERENCE_HEADING,
        "",
        f"Command: `{command}`",
        "",
        f"Mixtures: {corpus}",
        "",
        "| mixture | SI-SNRi (dB) | SDRi (dB) | PESQ | STOI |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows[:shown]:
        lines.append(
            f"| `{r['snt_id']}` | {float(r['si-snr_i']):.2f} | "
            f"{float(r['sdr_i']):.2f} | {float(r['pesq']):.2f} | "
            f"{float(r['stoi']):.3f} |"
        )
    lines.append(
        f"| mean of {len(rows)} mixtures | {mean['si-snr_i']:.2f} | "
        f"{mean['sdr_i']:.2f} | {mean['pesq']:.2f} | {mean['stoi']:.3f} |"
    )
    return "\n".join(lines) + "\n"


def read_reference_rows(card_text: str) -> dict:
    """The per-mixture ``(SI-SNRi, SDRi)`` a model card lists.

    Arguments
    ---------
    card_text : str
        Model card (or its :func:`reference_section`).

    Returns
    -------
    dict
        Mixture name -> ``(SI-SNRi, SDRi)`` in dB.

    Example
    -------
    >>> read_reference_rows("| `m1` | 10.50 | 11.00 | 2.00 | 0.900 |")
    {'m1': (10.5, 11.0)}
    """
    return {
        m.group(1): (float(m.group(2)), float(m.group(3)))
        for m in _ROW.finditer(card_text)
    }
