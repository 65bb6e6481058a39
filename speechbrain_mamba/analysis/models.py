"""Loading trained models for layer-wise analysis.

A model is given as a folder with a ``hyperparams.yaml``: a hub folder or a
recipe's output folder, loaded with
:func:`~speechbrain_mamba.utils.model_folders.load_trained_hparams`.

:func:`analysis_model` then recognises the model from the YAML keys and
returns an :class:`AnalysisModel`: a callable forward pass from waveforms,
the module whose layers are hooked and the default layer pattern.

==================  ==================================  ======================
YAML keys           model                               layers
==================  ==================================  ======================
``ssl_model``       :class:`~speechbrain_mamba.lobes.   the encoder layers
                    ssl.hubert.HuBERTModel`
``Encoder``,        separation / enhancement            ``MaskNet``'s longest
``MaskNet``         (Mamba-TasNet, ...)                 ``*layers`` list
``Transformer``,    ASR (ConMamba, Conformer,           ``encoder.layers.*``
``CNN``             Transformer encoders)
==================  ==================================  ======================

Author
------
speechbrain-mamba developers
"""

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from speechbrain_mamba.utils.io import PathLike
from speechbrain_mamba.utils.layer_capture import LayerSpec
from speechbrain_mamba.utils.model_folders import load_trained_hparams

MODEL_KINDS = ("ssl", "separation", "asr")


@dataclass
class AnalysisModel:
    """A model prepared for layer capture.

    Arguments
    ---------
    name : str
        Label used in tables and plots.
    kind : str
        ``"ssl"``, ``"separation"`` or ``"asr"``.
    root : torch.nn.Module
        Module whose sub-modules are captured.
    layers : str or list of str
        Default layers (pattern or names, relative to ``root``).
    sample_rate : int
        Sample rate the model expects.
    run : callable
        ``run(wavs [B, T], wav_lens [B])`` runs the forward pass.
    modules : torch.nn.ModuleDict
        Every module of the model (moved with :meth:`to`).
    frame_lengths : callable, optional
        ``frame_lengths(output, wav_lens)``: relative lengths of the layer
        frame sequences, when they differ from ``wav_lens`` (e.g. a CNN
        front end that drops incomplete frames).
    """

    name: str
    kind: str
    root: nn.Module
    layers: LayerSpec
    sample_rate: int
    run: Callable[[torch.Tensor, torch.Tensor], Any]
    modules: nn.ModuleDict
    frame_lengths: Optional[Callable[[Any, torch.Tensor], torch.Tensor]] = None

    def to(self, device: Union[str, torch.device]) -> "AnalysisModel":
        """Moves the model to ``device`` and sets evaluation mode.

        ``nn.Module.to`` moves parameters and buffers only, and does not
        call the ``to`` of sub-modules. Sub-modules that keep tensors in
        plain attributes and move them in their own ``to`` (SpeechBrain's
        ``InputNormalization`` keeps its global mean and standard deviation
        that way) would stay on the CPU; their ``to`` is called here.
        """
        self.modules.to(device).eval()
        for module in self.modules.modules():
            if type(module).to is not nn.Module.to:
                module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the first parameter."""
        for param in self.modules.parameters():
            return param.device
        return torch.device("cpu")


def _accepts(module: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def detect_kind(hparams: Dict[str, Any]) -> str:
    """Recognises the model type from the hyperparameter keys.

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters.

    Returns
    -------
    str
        One of :data:`MODEL_KINDS`.

    Example
    -------
    >>> detect_kind({"Encoder": 1, "MaskNet": 2, "Decoder": 3})
    'separation'
    >>> detect_kind({"x": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: cannot tell the model type from the hyperparameters ...
    """
    if "ssl_model" in hparams:
        return "ssl"
    if "Encoder" in hparams and "MaskNet" in hparams:
        return "separation"
    if "Transformer" in hparams and "CNN" in hparams:
        return "asr"
    raise ValueError(
        "cannot tell the model type from the hyperparameters (keys: "
        f"{sorted(hparams)[:20]}); expected 'ssl_model', 'Encoder' + "
        "'MaskNet' or 'Transformer' + 'CNN'"
    )


def analysis_model(
    hparams: Dict[str, Any], name: str = "model", kind: Optional[str] = None
) -> AnalysisModel:
    """Wraps loaded hyperparameters (with trained weights) for analysis.

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters holding the modules.
    name : str
        Label of the model.
    kind : str, optional
        Force the model type (default: :func:`detect_kind`).

    Returns
    -------
    AnalysisModel

    Example
    -------
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> from speechbrain_mamba.lobes.mamba_tasnet import MambaTasNetMaskNet
    >>> hp = {"Encoder": Encoder(kernel_size=16, out_channels=8),
    ...       "MaskNet": MambaTasNetMaskNet(8, num_layers=2, num_spks=1),
    ...       "Decoder": Decoder(8, 1, kernel_size=16, stride=8),
    ...       "sample_rate": 8000}
    >>> model = analysis_model(hp, "tasnet")
    >>> model.kind, model.layers, model.sample_rate
    ('separation', 'auto', 8000)
    """
    kind = kind or detect_kind(hparams)
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if "sample_rate" not in hparams:
        raise KeyError("the hyperparameters lack 'sample_rate'")
    sample_rate = int(hparams["sample_rate"])

    if kind == "ssl":
        ssl_model = hparams["ssl_model"]

        def run(wavs, wav_lens):
            return ssl_model(wavs, wav_lens, mask=False, return_logits=False)

        modules = nn.ModuleDict({"ssl_model": ssl_model})
        return AnalysisModel(
            name,
            kind,
            ssl_model,
            ssl_model.layer_names(),
            sample_rate,
            run,
            modules,
        )

    if kind == "separation":
        encoder, masknet = hparams["Encoder"], hparams["MaskNet"]
        with_lengths = _accepts(masknet, "lengths")

        def run(wavs, wav_lens):
            mix_w = encoder(wavs)
            if with_lengths:
                return masknet(mix_w, lengths=wav_lens)
            return masknet(mix_w)

        modules = nn.ModuleDict({"encoder": encoder, "masknet": masknet})
        return AnalysisModel(
            name, kind, masknet, "auto", sample_rate, run, modules
        )

    transformer, cnn = hparams["Transformer"], hparams["CNN"]
    features = hparams["compute_features"]
    normalize = hparams.get("normalize")

    def run(wavs, wav_lens):
        feats = features(wavs)
        if normalize is not None:
            feats = normalize(feats, wav_lens)
        return transformer.encode(cnn(feats), wav_lens)

    modules = nn.ModuleDict({"transformer": transformer, "cnn": cnn})
    if isinstance(normalize, nn.Module):
        modules["normalize"] = normalize
    return AnalysisModel(
        name, kind, transformer, "encoder.layers.*", sample_rate, run, modules
    )


def load_model(
    source: PathLike,
    name: Optional[str] = None,
    kind: Optional[str] = None,
    ckpt_key: Optional[str] = None,
    ckpt_key_max: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> AnalysisModel:
    """Loads a hub or experiment folder as an :class:`AnalysisModel`.

    Arguments
    ---------
    source : str or os.PathLike
        The folder.
    name : str, optional
        Label (default: the folder name).
    kind : str, optional
        Model type (default: detected).
    ckpt_key : str, optional
        Checkpoint ranking key for experiment folders.
    ckpt_key_max : bool
        Highest (True) or lowest ``ckpt_key``.
    device : str or torch.device, optional
        Defaults to CUDA when available.

    Returns
    -------
    AnalysisModel
        On ``device``, in evaluation mode.

    Example
    -------
    >>> load_model("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder /nonexistent does not exist
    """
    folder = Path(source)
    hparams = load_trained_hparams(folder, ckpt_key, ckpt_key_max)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = analysis_model(hparams, name or folder.name, kind)
    return model.to(device)
