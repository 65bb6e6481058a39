"""EnCodec audio codec (24 kHz; 6 kbps = 8 codebooks of 1024 entries at
75 frames/s) through the maintained implementation of HuggingFace
``transformers`` (``EncodecModel``), loadable from a local folder or a hub
id such as ``facebook/encodec_24khz``.

:func:`build_random_codec` writes a small randomly initialised codec of the
same architecture to a folder (for tests, CI and offline benchmarks); it
loads through the same :meth:`EncodecCodec.from_pretrained` path.

Author
------
speechbrain-mamba developers
"""

import contextlib
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from speechbrain_mamba.utils.io import PathLike

#: Default hub id of the 24 kHz EnCodec model.
DEFAULT_CODEC = "facebook/encodec_24khz"

#: Config keys that describe the file, not the model.
_META_KEYS = {
    "transformers_version",
    "architectures",
    "model_type",
    "_name_or_path",
    "torch_dtype",
    "dtype",
}


def _transformers():
    """Imports transformers or raises an ImportError saying how to get it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "The EnCodec codec needs the 'transformers' package: "
            "pip install transformers  (or pip install speechbrain-mamba[tts])"
        ) from err
    return transformers


@contextlib.contextmanager
def _no_onednn(device: torch.device):
    """On CPU, runs without oneDNN: it builds new kernels for every new
    input length (seconds per utterance for the LSTM), which plain ATen
    kernels do not."""
    if device.type != "cpu":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield


class EncodecCodec(nn.Module):
    """Encodes waveforms to EnCodec tokens and decodes tokens to waveforms.

    The wrapped model stays frozen in eval mode.

    Arguments
    ---------
    model : transformers.EncodecModel
        The codec.
    bandwidth : float
        Target bandwidth in kbps (one of the model's
        ``target_bandwidths``); it sets the number of codebooks.

    Example
    -------
    >>> import tempfile
    >>> folder = build_random_codec(tempfile.mkdtemp(), num_filters=2,
    ...                             hidden_size=8, codebook_size=16,
    ...                             target_bandwidths=(2.4,))
    >>> codec = EncodecCodec.from_pretrained(folder, bandwidth=2.4)
    >>> codes, _ = codec.encode(torch.randn(1, 24000))
    >>> codes.shape
    torch.Size([1, 8, 75])
    >>> codec.decode(codes)[0].shape
    torch.Size([1, 24000])
    """

    def __init__(self, model: nn.Module, bandwidth: float = 6.0):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        bandwidths = list(model.config.target_bandwidths)
        if bandwidth not in bandwidths:
            raise ValueError(
                f"bandwidth {bandwidth} kbps is not supported by this codec; "
                f"choose one of {bandwidths}"
            )
        self.bandwidth = float(bandwidth)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: PathLike = DEFAULT_CODEC,
        bandwidth: float = 6.0,
        cache_dir: Optional[PathLike] = None,
        local_files_only: bool = False,
    ) -> "EncodecCodec":
        """Loads a codec saved with ``save_pretrained`` (local folder) or
        from the HuggingFace hub.

        Arguments
        ---------
        source : str or Path
            Local folder with ``config.json`` and the weights, or a hub id.
        bandwidth : float
            Target bandwidth in kbps (6.0: 8 codebooks for EnCodec 24 kHz).
        cache_dir : str or Path, optional
            HuggingFace cache folder.
        local_files_only : bool
            Do not try to download.

        Returns
        -------
        EncodecCodec
        """
        transformers = _transformers()
        path = Path(source)
        looks_local = path.exists() or str(source).startswith((".", "/"))
        if looks_local:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"{path} is not a codec folder: it has no config.json "
                    "(expected an EncodecModel saved with save_pretrained, "
                    f"or a hub id such as {DEFAULT_CODEC})"
                )
        try:
            model = transformers.EncodecModel.from_pretrained(
                str(source),
                cache_dir=None if cache_dir is None else str(cache_dir),
                local_files_only=local_files_only,
            )
        except (OSError, ValueError) as err:
            raise OSError(
                f"could not load the EnCodec codec from {source!r}: {err}. "
                "Pass a local folder holding a saved EncodecModel, or a hub "
                "id reachable from this machine (or in the HuggingFace "
                "cache)."
            ) from err
        return cls(model, bandwidth)

    @classmethod
    def from_config(
        cls, config: Dict[str, Any], bandwidth: float = 6.0
    ) -> "EncodecCodec":
        """Builds a codec of the given architecture with untrained weights
        (load a state dict into it afterwards, e.g. from a hub folder).

        Arguments
        ---------
        config : dict
            ``EncodecConfig`` arguments (see :meth:`config_dict`).
        bandwidth : float
            Target bandwidth in kbps.

        Returns
        -------
        EncodecCodec
        """
        transformers = _transformers()
        config = {k: v for k, v in config.items() if k not in _META_KEYS}
        model = transformers.EncodecModel(transformers.EncodecConfig(**config))
        return cls(model, bandwidth)

    def config_dict(self) -> Dict[str, Any]:
        """The model's ``EncodecConfig`` as a plain dict (for export)."""
        return {
            k: v
            for k, v in self.model.config.to_diff_dict().items()
            if k not in _META_KEYS and not k.startswith("_")
        }

    # -- properties ---------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Sample rate of the waveforms."""
        return int(self.model.config.sampling_rate)

    @property
    def hop_length(self) -> int:
        """Samples per codec frame."""
        return int(self.model.config.hop_length)

    @property
    def frame_rate(self) -> float:
        """Codec frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        """Codebooks used at the chosen bandwidth."""
        quantizer = self.model.quantizer
        return quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)

    @property
    def codebook_size(self) -> int:
        """Entries per codebook."""
        return int(self.model.config.codebook_size)

    def describe(self) -> Dict[str, Any]:
        """What identifies the tokens this codec produces."""
        return {
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "bandwidth": self.bandwidth,
        }

    def frames_for(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Codec frames of waveforms of ``num_samples`` samples."""
        return torch.div(
            num_samples + self.hop_length - 1,
            self.hop_length,
            rounding_mode="floor",
        )

    # -- coding -------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, wavs: torch.Tensor, wav_lens: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveforms to tokens.

        Arguments
        ---------
        wavs : torch.Tensor
            [batch, time] (or [time]) float at :attr:`sample_rate`.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], [batch].

        Returns
        -------
        codes : torch.Tensor
            [batch, num_codebooks, frames] (long).
        code_lens : torch.Tensor
            Relative lengths of the codes, [batch].
        """
        if wavs.dim() == 1:
            wavs = wavs[None]
        if wavs.dim() != 2 or not torch.is_floating_point(wavs):
            raise ValueError(
                "wavs must be a float tensor [batch, time] or [time], got "
                f"{tuple(wavs.shape)} {wavs.dtype}"
            )
        if wavs.shape[1] == 0:
            raise ValueError("cannot encode empty audio (0 samples)")
        if not bool(torch.isfinite(wavs).all()):
            raise ValueError("wavs contains NaN or infinite values")
        batch, time = wavs.shape
        samples = torch.full((batch,), time, device=wavs.device)
        if wav_lens is not None:
            samples = torch.round(wav_lens.to(wavs.device) * time).long()
            positions = torch.arange(time, device=wavs.device)[None, :]
            wavs = wavs * (positions < samples[:, None]).to(wavs.dtype)
        param = next(self.model.parameters())
        with _no_onednn(param.device):
            out = self.model.encode(
                wavs[:, None].to(param.device, param.dtype),
                bandwidth=self.bandwidth,
                return_dict=True,
            )
        codes = out.audio_codes[0].long()  # [batch, codebooks, frames]
        frames = self.frames_for(samples.to(codes.device))
        return codes, frames.float() / codes.shape[-1]

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, code_lens: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens to waveforms.

        Arguments
        ---------
        codes : torch.Tensor
            [batch, num_codebooks, frames] (long).
        code_lens : torch.Tensor, optional
            Relative lengths, [batch].

        Returns
        -------
        wavs : torch.Tensor
            [batch, frames * hop_length] float.
        wav_lens : torch.Tensor
            Relative lengths, [batch].
        """
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(
                f"codes must be [batch, num_codebooks={self.num_codebooks}, "
                f"frames], got {tuple(codes.shape)}"
            )
        if codes.shape[-1] == 0:
            raise ValueError("cannot decode 0 frames")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        device = next(self.model.parameters()).device
        with _no_onednn(device):
            wavs = self.model.decode(
                codes[None].to(device), [None], return_dict=True
            ).audio_values[:, 0]
        wavs = wavs[:, : codes.shape[-1] * self.hop_length].float()
        if code_lens is None:
            code_lens = torch.ones(codes.shape[0], device=wavs.device)
        return wavs, code_lens.to(wavs.device).float()


def _initialise_codebooks(
    model: nn.Module,
    calibration: Sequence[torch.Tensor],
    generator: torch.Generator,
) -> None:
    """Fills the (zero-initialised) RVQ codebooks with encoder outputs of the
    calibration audio, stage by stage on the residuals, so that the tokens
    of a random codec are spread over the codebooks."""
    with torch.no_grad(), _no_onednn(torch.device("cpu")):
        latents = [
            model.encoder(wav.float()[None, None])[0].T for wav in calibration
        ]
        residual = torch.cat(latents, dim=0)  # [frames, dim]
        for layer in model.quantizer.layers:
            codebook = layer.codebook
            size = codebook.embed.shape[0]
            pick = torch.randint(
                0, residual.shape[0], (size,), generator=generator
            )
            noise = torch.randn(
                size, residual.shape[1], generator=generator
            ) * (1e-3 + 1e-2 * residual.std())
            embed = residual[pick] + noise
            codebook.embed.copy_(embed)
            codebook.embed_avg.copy_(embed)
            codebook.inited.fill_(1.0)
            indices = codebook.encode(residual[None])[0]
            residual = residual - codebook.decode(indices)


def build_random_codec(
    out_dir: PathLike,
    seed: int = 0,
    num_filters: int = 4,
    hidden_size: int = 16,
    codebook_size: int = 1024,
    target_bandwidths: Iterable[float] = (1.5, 3.0, 6.0),
    num_lstm_layers: int = 1,
    num_residual_layers: int = 1,
    calibration: Optional[Sequence[torch.Tensor]] = None,
    sample_rate: int = 24000,
) -> Path:
    """Writes a randomly initialised EnCodec of the 24 kHz architecture
    (strides 8, 5, 4, 2: 75 frames/s) with small sizes to a folder, loadable
    with :meth:`EncodecCodec.from_pretrained`.

    Its codebooks are initialised from encoder outputs of ``calibration``
    audio (white noise when not given), so tokens are spread over the
    codebook entries. With ``codebook_size=1024`` the 6 kbps bandwidth uses
    8 codebooks, as the real model.

    Arguments
    ---------
    out_dir : str or Path
        Destination folder (replaced atomically).
    seed : int
        Seed of the weights.
    num_filters : int
        Channels of the first convolution (32 in the real model).
    hidden_size : int
        Latent and codebook dimension (128 in the real model).
    codebook_size : int
        Entries per codebook (1024 in the real model).
    target_bandwidths : iterable of float
        Supported bandwidths in kbps; the largest sets the number of
        codebooks stored.
    num_lstm_layers : int
        LSTM layers of encoder and decoder (2 in the real model).
    num_residual_layers : int
        Residual layers per block.
    calibration : sequence of torch.Tensor, optional
        1-D waveforms at ``sample_rate`` used to initialise the codebooks.
    sample_rate : int
        Sample rate of the codec.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Example
    -------
    >>> import tempfile
    >>> folder = build_random_codec(tempfile.mkdtemp(), num_filters=2,
    ...                             hidden_size=8)
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors']
    """
    transformers = _transformers()
    generator = torch.Generator().manual_seed(seed)
    config = transformers.EncodecConfig(
        sampling_rate=sample_rate,
        num_filters=num_filters,
        hidden_size=hidden_size,
        codebook_dim=hidden_size,
        codebook_size=codebook_size,
        target_bandwidths=[float(b) for b in target_bandwidths],
        num_lstm_layers=num_lstm_layers,
        num_residual_layers=num_residual_layers,
        upsampling_ratios=[8, 5, 4, 2],
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = transformers.EncodecModel(config).eval()
    finally:
        torch.random.set_rng_state(state)
    if not calibration:
        calibration = [0.1 * torch.randn(sample_rate, generator=generator)]
    _initialise_codebooks(model, calibration, generator)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    model.save_pretrained(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def codec_from_config(
    config: Dict[str, Any], bandwidth: float = 6.0
) -> EncodecCodec:
    """:meth:`EncodecCodec.from_config` as a function (for HyperPyYAML).

    Arguments
    ---------
    config : dict
        ``EncodecConfig`` arguments.
    bandwidth : float
        Target bandwidth in kbps.

    Returns
    -------
    EncodecCodec
    """
    return EncodecCodec.from_config(config, bandwidth)


def codec_from_pretrained(
    source: PathLike = DEFAULT_CODEC, bandwidth: float = 6.0
) -> EncodecCodec:
    """:meth:`EncodecCodec.from_pretrained` as a function (for HyperPyYAML).

    Arguments
    ---------
    source : str or Path
        Local folder or hub id.
    bandwidth : float
        Target bandwidth in kbps.

    Returns
    -------
    EncodecCodec
    """
    return EncodecCodec.from_pretrained(source, bandwidth)
