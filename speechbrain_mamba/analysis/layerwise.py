"""Layer-wise mutual information of a model: MI(input; layer) and, with
labels, MI(layer; labels), one value per layer.

:func:`collect_layer_states` runs the model over a list of utterances and
keeps, for every captured layer, the valid frames of every utterance,
paired frame by frame with

- the *input reference*: either the input of the first captured layer
  (``"encoder_input"``, as in Zhang et al.: the representation entering the
  encoder) or log-mel filterbanks of the waveform (``"fbank"``, the same for
  every model, so curves of different models share their x variable),
  average-pooled to each layer's frame rate;
- the labels, when given: discrete frame labels (nearest frame) or the
  filterbanks of a target signal (e.g. the clean source).

At most ``max_frames`` frames are kept per layer (a seeded random choice
per utterance that is the same for layers of the same frame rate).
:func:`layerwise_mi` then estimates the MI of each layer.

Author
------
speechbrain-mamba developers
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from speechbrain_mamba.analysis.audio import (
    Utterance,
    pad_batch,
    read_audio,
    read_frame_labels,
)
from speechbrain_mamba.analysis.estimators import estimate_mi
from speechbrain_mamba.analysis.models import AnalysisModel
from speechbrain_mamba.utils.layer_capture import LayerCapture, LayerSpec

logger = logging.getLogger(__name__)

REFERENCES = ("encoder_input", "fbank")


def align_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Resamples ``[T, D]`` features to ``frames`` frames by average
    pooling (repeating frames when ``frames > T``).

    Arguments
    ---------
    x : torch.Tensor
        ``[T, D]``.
    frames : int
        Target number of frames.

    Returns
    -------
    torch.Tensor
        ``[frames, D]``.

    Example
    -------
    >>> align_frames(torch.arange(4.0)[:, None], 2)[:, 0]
    tensor([0.5000, 2.5000])
    """
    if x.shape[0] == frames:
        return x
    pooled = F.adaptive_avg_pool1d(x.t()[None].float(), frames)
    return pooled[0].t().to(x.dtype)


def align_labels(labels: np.ndarray, frames: int) -> np.ndarray:
    """Nearest-frame resampling of a label sequence.

    Arguments
    ---------
    labels : numpy.ndarray
        ``[L]`` labels.
    frames : int
        Target number of frames.

    Returns
    -------
    numpy.ndarray
        ``[frames]``.

    Example
    -------
    >>> align_labels(np.array([1, 2]), 4)
    array([1, 1, 2, 2])
    """
    index = np.floor((np.arange(frames) + 0.5) * len(labels) / frames)
    return labels[np.minimum(index.astype(int), len(labels) - 1)]


@dataclass
class LayerStates:
    """Frames collected by :func:`collect_layer_states`.

    Arguments
    ---------
    names : list of str
        Layer names.
    states : list of torch.Tensor
        ``[N_l, D_l]`` hidden states per layer.
    reference : list of torch.Tensor
        ``[N_l, D_ref]`` input reference paired with each layer.
    labels : list of numpy.ndarray or torch.Tensor, optional
        Labels paired with each layer (``[N_l]`` integers or ``[N_l, D]``).
    label_kind : str, optional
        ``"discrete"`` or ``"continuous"``.
    """

    names: List[str]
    states: List[torch.Tensor]
    reference: List[torch.Tensor]
    labels: Optional[list] = None
    label_kind: Optional[str] = None
    utterances: int = 0
    extra: Dict[str, float] = field(default_factory=dict)


def _fbank(sample_rate: int, n_mels: int):
    from speechbrain.lobes.features import Fbank

    return Fbank(sample_rate=sample_rate, n_mels=n_mels)


def _item_frames(lengths: torch.Tensor, time: int) -> List[int]:
    return [
        max(1, min(time, int(round(float(v) * time)))) for v in lengths.tolist()
    ]


def collect_layer_states(
    model: AnalysisModel,
    utterances: Sequence[Utterance],
    layers: Optional[LayerSpec] = None,
    reference: str = "encoder_input",
    batch_size: int = 4,
    max_frames: Optional[int] = 20000,
    n_mels: int = 40,
    resample: bool = False,
    seed: int = 0,
) -> LayerStates:
    """Runs the model and collects aligned frames per layer.

    Arguments
    ---------
    model : AnalysisModel
        The model (see :mod:`speechbrain_mamba.analysis.models`).
    utterances : sequence of Utterance
        The audio (and optional labels).
    layers : str or list of str, optional
        Layers to capture (default: the model's).
    reference : str
        ``"encoder_input"`` or ``"fbank"``.
    batch_size : int
        Utterances per forward pass.
    max_frames : int, optional
        Frames kept per layer (spread evenly over the utterances).
    n_mels : int
        Filterbank size of the ``"fbank"`` reference and of audio targets.
    resample : bool
        Resample audio at another rate instead of failing.
    seed : int
        Seed of the frame selection.

    Returns
    -------
    LayerStates
    """
    if reference not in REFERENCES:
        raise ValueError(
            f"reference must be one of {REFERENCES}, got {reference!r}"
        )
    if not utterances:
        raise ValueError("no utterances to analyse")
    with_labels = utterances[0].label is not None
    if any((u.label is not None) != with_labels for u in utterances):
        raise ValueError("either every utterance has a label or none has")
    label_kind = None
    if with_labels:
        audio_labels = {u.label_is_audio for u in utterances}
        if len(audio_labels) != 1:
            raise ValueError("labels mix audio files and frame labels")
        label_kind = "continuous" if audio_labels.pop() else "discrete"
    device = model.device
    fbank = _fbank(model.sample_rate, n_mels).to(device)
    per_utt = None
    if max_frames is not None:
        per_utt = max(1, math.ceil(max_frames / len(utterances)))
    spec = model.layers if layers is None else layers
    capture = LayerCapture(
        model.root, spec, capture_input=reference == "encoder_input"
    )
    n_layers = len(capture.names)
    states: List[List[torch.Tensor]] = [[] for _ in range(n_layers)]
    refs: List[List[torch.Tensor]] = [[] for _ in range(n_layers)]
    labels: List[list] = [[] for _ in range(n_layers)]

    for start in range(0, len(utterances), batch_size):
        chunk = list(utterances[start : start + batch_size])
        wavs = [read_audio(u.path, model.sample_rate, resample) for u in chunk]
        batch, wav_lens = pad_batch(wavs)
        batch, wav_lens = batch.to(device), wav_lens.to(device)
        capture.clear()
        with torch.no_grad(), capture:
            output = model.run(batch, wav_lens)
            fb = fbank(batch) if reference == "fbank" else None
        frame_lens = wav_lens
        if model.frame_lengths is not None:
            frame_lens = model.frame_lengths(output, wav_lens)
        padded = capture.states()
        if reference == "fbank":
            ref_padded, ref_lens = fb, wav_lens
        else:
            ref_padded, ref_lens = capture.inputs[-1], frame_lens
        ref_frames = _item_frames(ref_lens, ref_padded.shape[1])
        targets = None
        if label_kind == "continuous":
            tgt = [
                read_audio(u.label, model.sample_rate, resample) for u in chunk
            ]
            tgt_batch, tgt_lens = pad_batch(tgt)
            with torch.no_grad():
                tgt_fb = fbank(tgt_batch.to(device))
            tgt_frames = _item_frames(tgt_lens, tgt_fb.shape[1])
            targets = [tgt_fb[i, :n].cpu() for i, n in enumerate(tgt_frames)]
        elif label_kind == "discrete":
            targets = [read_frame_labels(u.label) for u in chunk]

        for layer, hidden in enumerate(padded):
            if hidden.dim() != 3:
                raise ValueError(
                    f"layer {capture.names[layer]} returned shape "
                    f"{tuple(hidden.shape)}; [batch, time, features] expected"
                )
            frames = _item_frames(frame_lens, hidden.shape[1])
            for i, n in enumerate(frames):
                utt_index = start + i
                h = hidden[i, :n].float().cpu()
                r = ref_padded[i, : ref_frames[i]].float().cpu()
                r = align_frames(r, n)
                keep = None
                if per_utt is not None and n > per_utt:
                    rng = np.random.default_rng([seed, utt_index, n])
                    keep = np.sort(rng.choice(n, per_utt, replace=False))
                    keep_t = torch.from_numpy(keep)
                    h, r = h[keep_t], r[keep_t]
                states[layer].append(h)
                refs[layer].append(r)
                if targets is not None:
                    if label_kind == "discrete":
                        lab = align_labels(targets[i], n)
                        labels[layer].append(lab if keep is None else lab[keep])
                    else:
                        lab = align_frames(targets[i], n)
                        if keep is not None:
                            lab = lab[torch.from_numpy(keep)]
                        labels[layer].append(lab)
    result = LayerStates(
        names=capture.names,
        states=[torch.cat(s) for s in states],
        reference=[torch.cat(r) for r in refs],
        utterances=len(utterances),
    )
    if label_kind is not None:
        result.label_kind = label_kind
        if label_kind == "discrete":
            result.labels = [np.concatenate(lab) for lab in labels]
        else:
            result.labels = [torch.cat(lab) for lab in labels]
    return result


def pca_reduce(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Projects ``[N, D]`` onto its first ``dim`` principal components
    (unchanged when ``D <= dim``).

    Arguments
    ---------
    x : torch.Tensor
        ``[N, D]``.
    dim : int
        Number of components.

    Returns
    -------
    torch.Tensor
        ``[N, min(D, dim)]``.

    Example
    -------
    >>> pca_reduce(torch.randn(50, 6), 2).shape
    torch.Size([50, 2])
    """
    if x.shape[1] <= dim:
        return x
    centered = x.double() - x.double().mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return (centered @ v[:dim].t()).to(x.dtype)


def layerwise_mi(
    collected: LayerStates,
    estimator: str = "mine",
    seed: int = 0,
    device: Optional[str] = None,
    pca_dim: Optional[int] = None,
    **estimator_kwargs,
) -> List[dict]:
    """MI(input; layer) and MI(layer; labels) of every collected layer.

    Arguments
    ---------
    collected : LayerStates
        From :func:`collect_layer_states`.
    estimator : str
        ``"mine"``, ``"infonce"`` or ``"ksg"``.
    seed : int
        Seed of the estimators (the same for every layer).
    device : str, optional
        Device of the neural estimators.
    pca_dim : int, optional
        Reduce continuous variables to this many principal components first
        (useful for ``"ksg"``, which underestimates in high dimensions).
    **estimator_kwargs
        Estimator options (``steps``, ``batch_size``, ``k`` ...).

    Returns
    -------
    list of dict
        One row per layer: ``layer_index`` (1-based), ``layer``,
        ``relative_depth``, ``frames``, ``dim``, ``mi_input`` and, with
        labels, ``mi_label``.
    """
    rows = []
    n_layers = len(collected.names)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        return pca_reduce(t, pca_dim) if pca_dim else t

    for index, name in enumerate(collected.names):
        states = collected.states[index]
        row = {
            "layer_index": index + 1,
            "layer": name,
            "relative_depth": (index + 1) / n_layers,
            "frames": int(states.shape[0]),
            "dim": int(states.shape[1]),
        }
        row["mi_input"] = estimate_mi(
            reduce(collected.reference[index]),
            reduce(states),
            estimator,
            seed=seed,
            device=device,
            **estimator_kwargs,
        )
        if collected.labels is not None:
            discrete = collected.label_kind == "discrete"
            target = collected.labels[index]
            row["mi_label"] = estimate_mi(
                reduce(states),
                target if discrete else reduce(target),
                estimator,
                discrete_y=discrete,
                seed=seed,
                device=device,
                **estimator_kwargs,
            )
        logger.info(
            "%s: MI(input; layer)=%.3f%s",
            name,
            row["mi_input"],
            f", MI(layer; label)={row['mi_label']:.3f}"
            if "mi_label" in row
            else "",
        )
        rows.append(row)
    return rows
