"""k-means targets for HuBERT-style pretraining.

First iteration: MFCC features (13 coefficients with deltas and delta-deltas)
at the frame rate of the model (20 ms). Second iteration: the output of one
layer of a previously pretrained model. In both cases a k-means model is fitted
on a random subset of the training frames and every utterance of every split
is labelled.

Outputs in ``out_dir``:

- ``kmeans.pt``: the fitted k-means model;
- ``<split>.km``: one line per utterance, ``ID label label ...`` (one label
  per frame, fairseq's HuBERT format with the ID in front);
- ``targets.json``: the options, frame rate and label statistics (the
  frequency of the most common label is the chance level of masked
  prediction).

Extraction shows progress bars and is resumable: ``kmeans.pt`` is reused
when the options match, and labels go to ``<split>.km.partial`` line by line
(flushed), so a killed run continues with the first utterance not yet
written; the file is renamed to ``<split>.km`` when complete.

Author
------
speechbrain-mamba developers
"""

import csv
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from speechbrain_mamba.ssl.kmeans import KMeans
from speechbrain_mamba.utils.atomic import atomic_write_text
from speechbrain_mamba.utils.io import PathLike

logger = logging.getLogger(__name__)

INFO_FILE = "targets.json"
KMEANS_FILE = "kmeans.pt"


def read_csv_audio(
    csv_path: PathLike, data_root: Optional[PathLike] = None
) -> List[tuple]:
    """``(ID, audio path)`` of every row of a SpeechBrain CSV (``wav``
    column, ``$data_root`` replaced).

    Arguments
    ---------
    csv_path : str or os.PathLike
        The CSV file.
    data_root : str or os.PathLike, optional
        Replacement of ``$data_root``.

    Returns
    -------
    list of tuple
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data CSV not found: {csv_path}")
    with open(csv_path, encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        if not reader.fieldnames or not {"ID", "wav"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} needs the columns ID and wav")
        rows = [
            (r["ID"], r["wav"].replace("$data_root", str(data_root or "")))
            for r in reader
        ]
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    return rows


class MFCCFeatures:
    """MFCC + deltas + delta-deltas (39 values) of one waveform.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the audio.
    hop_length_ms : float
        Frame shift (the model's frame stride, 20 ms for HuBERT's CNN).

    Example
    -------
    >>> feats = MFCCFeatures(16000, 20.0)
    >>> feats(torch.randn(16000)).shape
    torch.Size([51, 39])
    """

    def __init__(self, sample_rate: int = 16000, hop_length_ms: float = 20.0):
        from speechbrain.lobes.features import MFCC

        self.name = "mfcc"
        self.sample_rate = sample_rate
        self.mfcc = MFCC(
            deltas=True,
            context=False,
            sample_rate=sample_rate,
            n_mfcc=13,
            hop_length=hop_length_ms,
        )

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """``[T]`` waveform -> ``[frames, 39]``."""
        with torch.no_grad():
            return self.mfcc(wav[None].float())[0]


class LayerFeatures:
    """The output of one encoder layer of a pretrained
    :class:`~speechbrain_mamba.lobes.ssl.hubert.HuBERTModel` (second iteration).

    Arguments
    ---------
    model : HuBERTModel
        The pretrained model (evaluation mode is set).
    layer : int
        Layer index (1-based: 1 is the first encoder layer).
    device : str
        Device to run on.
    """

    def __init__(self, model, layer: int, device: str = "cpu"):
        from speechbrain_mamba.utils.layer_capture import LayerCapture

        names = model.layer_names()
        if not 1 <= layer <= len(names):
            raise ValueError(
                f"layer must be in 1..{len(names)} for this model, got {layer}"
            )
        self.name = f"layer{layer}"
        self.model = model.to(device).eval()
        self.device = device
        self.capture = LayerCapture(model, [names[layer - 1]])

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """``[T]`` waveform -> ``[frames, d_model]``."""
        self.capture.clear()
        with torch.no_grad(), self.capture:
            self.model(wav[None].to(self.device), return_logits=False)
        return self.capture.states()[0][0].float()


def _read(path: str, sample_rate: int) -> torch.Tensor:
    from speechbrain_mamba.utils.io import read_audio

    return read_audio(path, sample_rate)


def _progress(iterable, desc: str, total: Optional[int] = None):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)


def fit_kmeans(
    rows: Sequence[tuple],
    features: Callable[[torch.Tensor], torch.Tensor],
    n_clusters: int,
    sample_rate: int,
    max_frames: int = 250000,
    seed: int = 0,
    device: Optional[str] = None,
    **kmeans_kwargs,
) -> KMeans:
    """Fits k-means on the frames of randomly chosen utterances.

    Arguments
    ---------
    rows : sequence of (ID, path)
        Training utterances.
    features : callable
        Waveform -> ``[frames, D]``.
    n_clusters : int
        Number of clusters.
    sample_rate : int
        Audio sample rate.
    max_frames : int
        Stop collecting once this many frames are gathered.
    seed : int
        Seed of the utterance order and of k-means.
    device : str, optional
        k-means device.
    **kmeans_kwargs
        More :class:`~speechbrain_mamba.ssl.kmeans.KMeans` options.

    Returns
    -------
    KMeans
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    chunks, total = [], 0
    for index in _progress(order, "features for k-means"):
        feats = features(_read(rows[index][1], sample_rate)).cpu()
        chunks.append(feats)
        total += feats.shape[0]
        if total >= max_frames:
            break
    data = torch.cat(chunks)[:max_frames]
    logger.info(
        "fitting k-means (%d clusters) on %d frames", n_clusters, len(data)
    )
    return KMeans(n_clusters, seed=seed, device=device, **kmeans_kwargs).fit(
        data
    )


def read_km(path: PathLike) -> Dict[str, np.ndarray]:
    """Reads a ``.km`` label file.

    Arguments
    ---------
    path : str or os.PathLike
        File with ``ID label label ...`` lines.

    Returns
    -------
    dict
        ID -> ``int16`` label array.

    Example
    -------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.km"
    >>> _ = p.write_text("u1 3 3 0\\n")
    >>> read_km(p)["u1"].tolist()
    [3, 3, 0]
    """
    labels = {}
    with open(path, encoding="utf-8") as fin:
        for line_no, line in enumerate(fin, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(
                    f"{path}:{line_no}: no labels for {parts[0]!r}"
                )
            labels[parts[0]] = np.array(parts[1:], dtype=np.int16)
    return labels


def _complete_lines(path: Path) -> Dict[str, str]:
    """Complete lines of a partial label file (a truncated last line from a
    killed run is dropped and the file is cut back to the last newline)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fout:
            fout.truncate(end)
    done = {}
    for line in data[:end].decode("utf-8").splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2 and parts[1].strip():
            done[parts[0]] = line
    return done


def label_split(
    rows: Sequence[tuple],
    features: Callable[[torch.Tensor], torch.Tensor],
    kmeans: KMeans,
    out_file: PathLike,
    sample_rate: int,
    desc: str = "labels",
) -> Path:
    """Labels every utterance of a split (resumable).

    Arguments
    ---------
    rows : sequence of (ID, path)
        The split's utterances.
    features : callable
        Waveform -> ``[frames, D]``.
    kmeans : KMeans
        Fitted model.
    out_file : str or os.PathLike
        Destination ``.km`` file.
    sample_rate : int
        Audio sample rate.
    desc : str
        Progress bar label.

    Returns
    -------
    pathlib.Path
        ``out_file``.
    """
    out_file = Path(out_file)
    partial = out_file.with_name(out_file.name + ".partial")
    done = _complete_lines(partial)
    if done:
        logger.info(
            "%s: resuming after %d utterances", out_file.name, len(done)
        )
    todo = [r for r in rows if r[0] not in done]
    with open(partial, "a", encoding="utf-8") as fout:
        for utt_id, path in _progress(todo, desc, total=len(todo)):
            labels = kmeans.predict(features(_read(path, sample_rate)))
            fout.write(
                utt_id + " " + " ".join(map(str, labels.tolist())) + "\n"
            )
            fout.flush()
    done = _complete_lines(partial)
    missing = [r[0] for r in rows if r[0] not in done]
    if missing:
        raise RuntimeError(f"{partial}: no labels for {missing[:5]}")
    ordered = "".join(done[r[0]] + "\n" for r in rows)
    atomic_write_text(out_file, ordered)
    partial.unlink()
    return out_file


def extract_targets(
    csv_files: Dict[str, PathLike],
    out_dir: PathLike,
    n_clusters: int = 100,
    train_split: str = "train",
    features: Union[str, Callable] = "mfcc",
    sample_rate: int = 16000,
    frame_stride: int = 320,
    data_root: Optional[PathLike] = None,
    max_fit_frames: int = 250000,
    seed: int = 0,
    device: Optional[str] = None,
    kmeans_kwargs: Optional[dict] = None,
) -> dict:
    """Fits k-means on the training split and labels every split.

    Arguments
    ---------
    csv_files : dict
        Split name -> SpeechBrain CSV (``ID``, ``wav``).
    out_dir : str or os.PathLike
        Output folder (see the module docstring).
    n_clusters : int
        Number of clusters.
    train_split : str
        Key of ``csv_files`` used to fit k-means.
    features : str or callable
        ``"mfcc"`` or a callable waveform -> ``[frames, D]`` (e.g.
        :class:`LayerFeatures`; give it a ``name`` attribute).
    sample_rate : int
        Audio sample rate.
    frame_stride : int
        Samples per model frame (the MFCC hop).
    data_root : str or os.PathLike, optional
        Replacement of ``$data_root`` in the CSVs.
    max_fit_frames : int
        Frames used to fit k-means.
    seed : int
        Seed.
    device : str, optional
        Device of k-means (and of layer features).
    kmeans_kwargs : dict, optional
        More :class:`~speechbrain_mamba.ssl.kmeans.KMeans` options.

    Returns
    -------
    dict
        The content of ``targets.json``.
    """
    if train_split not in csv_files:
        raise KeyError(f"csv_files has no {train_split!r} split")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hop_ms = 1000.0 * frame_stride / sample_rate
    if features == "mfcc":
        features = MFCCFeatures(sample_rate, hop_ms)
    elif isinstance(features, str):
        raise ValueError(
            f"unknown features {features!r} (use 'mfcc' or a callable)"
        )
    feature_name = getattr(features, "name", type(features).__name__)
    rows = {k: read_csv_audio(v, data_root) for k, v in csv_files.items()}
    options = {
        "features": feature_name,
        "n_clusters": int(n_clusters),
        "sample_rate": int(sample_rate),
        "frame_stride": int(frame_stride),
        "max_fit_frames": int(max_fit_frames),
        "seed": int(seed),
        "train_utterances": len(rows[train_split]),
    }
    info_path = out_dir / INFO_FILE
    kmeans_path = out_dir / KMEANS_FILE
    previous = None
    if info_path.is_file():
        previous = json.loads(info_path.read_text(encoding="utf-8"))
    if (
        previous
        and previous.get("options") == options
        and kmeans_path.is_file()
    ):
        kmeans = KMeans.load(kmeans_path, device=device)
        logger.info("reusing %s", kmeans_path)
    else:
        if previous is not None:
            for stale in out_dir.glob("*.km*"):
                stale.unlink()
        kmeans = fit_kmeans(
            rows[train_split],
            features,
            n_clusters,
            sample_rate,
            max_fit_frames,
            seed,
            device,
            **(kmeans_kwargs or {}),
        )
        kmeans.save(kmeans_path)
        atomic_write_text(
            info_path,
            json.dumps({"options": options, "complete": False}, indent=2),
        )
    splits = {}
    for split, split_rows in rows.items():
        km_file = out_dir / f"{split}.km"
        if not km_file.is_file():
            label_split(
                split_rows,
                features,
                kmeans,
                km_file,
                sample_rate,
                f"labels {split}",
            )
        labels = read_km(km_file)
        counts = np.bincount(
            np.concatenate(list(labels.values())).astype(np.int64),
            minlength=n_clusters,
        )
        splits[split] = {
            "file": km_file.name,
            "utterances": len(labels),
            "frames": int(counts.sum()),
            "majority_fraction": float(counts.max() / counts.sum()),
            "used_clusters": int((counts > 0).sum()),
        }
    info = {
        "options": options,
        "complete": True,
        "kmeans_inertia": kmeans.inertia,
        "splits": splits,
        "chance_majority": splits[train_split]["majority_fraction"],
        "chance_uniform": 1.0 / n_clusters,
    }
    atomic_write_text(info_path, json.dumps(info, indent=2))
    return info
