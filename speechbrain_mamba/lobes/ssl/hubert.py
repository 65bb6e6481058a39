"""HuBERT-style masked-prediction model with a Mamba (or Transformer)
encoder.

The model follows HuBERT (Hsu et al., 2021):

    waveform -> CNN feature extractor (stride 320, 20 ms at 16 kHz)
    -> LayerNorm -> linear projection -> span masking (learned mask vector)
    -> encoder -> projection -> cosine similarity with one embedding per
       cluster / temperature = logits over the k-means targets

and the encoder is one of

- ``"bimamba"``: a stack of pre-norm residual BiMamba blocks
  (:class:`~speechbrain_mamba.nnet.MambaStack`);
- ``"mamba"``: the same with unidirectional Mamba blocks, i.e. a causal
  encoder usable for streaming (the CNN front end looks 25 ms ahead);
- ``"conmamba"``: the ConMamba encoder (Conformer with BiMamba in place of
  self-attention, :mod:`speechbrain_mamba.lobes.asr.conmamba`), causal
  (unidirectional Mamba, causal convolutions) with ``causal=True``;
- ``"transformer"``: SpeechBrain's pre-norm Transformer encoder with
  wav2vec 2.0's convolutional positional embedding, the baseline (causal
  attention mask with ``causal=True``).

The training objective (cross-entropy on masked frames) lives in
:mod:`speechbrain_mamba.ssl.brain`.

Author
------
speechbrain-mamba developers
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_mamba.lobes.ssl.masking import span_mask
from speechbrain_mamba.nnet import MambaStack
from speechbrain_mamba.nnet.padding import valid_mask, zero_padding

#: ``(channels, kernel, stride)`` of wav2vec 2.0 / HuBERT's CNN.
DEFAULT_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
ENCODER_TYPES = ("bimamba", "mamba", "conmamba", "transformer")


def normalize_waveform(
    wavs: torch.Tensor, num_samples: torch.Tensor
) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples;
    padding stays zero.

    Arguments
    ---------
    wavs : torch.Tensor
        ``[B, T]`` waveforms.
    num_samples : torch.Tensor
        Valid samples per utterance, ``[B]``.

    Returns
    -------
    torch.Tensor
        ``[B, T]``.

    Example
    -------
    >>> w = torch.tensor([[1.0, 3.0, 0.0], [2.0, 4.0, 6.0]])
    >>> normalize_waveform(w, torch.tensor([2, 3]))[0].round(decimals=3)
    tensor([-1.,  1.,  0.])
    """
    mask = valid_mask(num_samples.to(wavs.device), wavs.shape[1]).to(wavs.dtype)
    count = mask.sum(1, keepdim=True).clamp_min(1.0)
    mean = (wavs * mask).sum(1, keepdim=True) / count
    var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / count
    return torch.where(mask > 0, (wavs - mean) / torch.sqrt(var + 1e-5), 0.0)


class MaskedChannelNorm(nn.Module):
    """Per-channel normalisation over time (GroupNorm with one group per
    channel) that ignores padded frames, with an affine transform.

    Arguments
    ---------
    channels : int
        Number of channels.
    eps : float
        Added to the variance.

    Example
    -------
    >>> norm = MaskedChannelNorm(2)
    >>> x = torch.tensor([[[1.0, 3.0, 9.0], [2.0, 2.0, 9.0]]])
    >>> norm(x, torch.tensor([2]))[0, 0]
    tensor([-1.0000,  1.0000,  0.0000], grad_fn=<SelectBackward0>)
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, frames: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Normalises ``[B, C, T]`` over the first ``frames`` steps of each
        item (all steps when None); padded steps become zero."""
        if frames is None:
            frames = torch.full((x.shape[0],), x.shape[2], device=x.device)
        mask = valid_mask(frames.to(x.device), x.shape[2])[:, None, :]
        maskf = mask.to(x.dtype)
        count = maskf.sum(-1, keepdim=True).clamp_min(1.0)
        mean = (x * maskf).sum(-1, keepdim=True) / count
        var = (((x - mean) * maskf) ** 2).sum(-1, keepdim=True) / count
        y = (x - mean) / torch.sqrt(var + self.eps)
        y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return torch.where(
            mask, y, torch.zeros((), dtype=y.dtype, device=y.device)
        )


class ConvFeatureExtractor(nn.Module):
    """wav2vec 2.0 / HuBERT convolutional waveform encoder.

    Every layer is a bias-free ``Conv1d`` followed by GELU. The first one is
    also normalised: with ``norm="channel"``, each channel over time, like
    wav2vec 2.0's GroupNorm but over the valid frames only (so that padding
    a batch changes nothing); with ``norm="layer"``, each frame over the
    channels (wav2vec 2.0 large), which keeps the front end causal.

    Arguments
    ---------
    conv_layers : sequence of (int, int, int)
        ``(channels, kernel, stride)`` per layer.
    norm : str
        ``"channel"`` or ``"layer"``.

    Example
    -------
    >>> cnn = ConvFeatureExtractor(((8, 10, 5), (8, 3, 2)))
    >>> cnn(torch.randn(2, 1600)).shape
    torch.Size([2, 159, 8])
    >>> cnn.num_frames(torch.tensor([1600, 20]))
    tensor([159,   1])
    """

    def __init__(
        self,
        conv_layers: Sequence[Tuple[int, int, int]] = DEFAULT_CONV_LAYERS,
        norm: str = "channel",
    ):
        super().__init__()
        if norm not in ("channel", "layer"):
            raise ValueError(f"norm must be 'channel' or 'layer', got {norm!r}")
        conv_layers = [tuple(int(v) for v in layer) for layer in conv_layers]
        if not conv_layers:
            raise ValueError("conv_layers must not be empty")
        self.conv_layers = conv_layers
        convs = []
        in_channels = 1
        for channels, kernel, stride in conv_layers:
            convs.append(
                nn.Conv1d(in_channels, channels, kernel, stride, bias=False)
            )
            in_channels = channels
        self.convs = nn.ModuleList(convs)
        self.norm_type = norm
        if norm == "channel":
            self.norm = MaskedChannelNorm(conv_layers[0][0])
        else:
            self.norm = nn.LayerNorm(conv_layers[0][0])
        self.out_channels = in_channels

    @property
    def stride(self) -> int:
        """Samples per output frame."""
        total = 1
        for _, _, stride in self.conv_layers:
            total *= stride
        return total

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame."""
        field = 1
        for _, kernel, stride in reversed(self.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    def num_frames(
        self,
        num_samples: Union[int, torch.Tensor],
        layers: Optional[int] = None,
    ) -> Union[int, torch.Tensor]:
        """Output frames for ``num_samples`` input samples (at least 1: a
        shorter input is padded to the receptive field).

        Arguments
        ---------
        num_samples : int or torch.Tensor
            Input length(s).
        layers : int, optional
            Count after the first ``layers`` convolutions only.

        Returns
        -------
        int or torch.Tensor
        """
        n = num_samples
        for _, kernel, stride in self.conv_layers[:layers]:
            n = (n - kernel) // stride + 1
        if isinstance(n, torch.Tensor):
            return n.clamp_min(1)
        return max(int(n), 1)

    def forward(
        self, wavs: torch.Tensor, num_samples: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Encodes waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms.
        num_samples : torch.Tensor, optional
            Valid samples per item (None: all).

        Returns
        -------
        torch.Tensor
            ``[B, frames, channels]``.
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"wavs must be [batch, samples], got shape {tuple(wavs.shape)}"
            )
        field = self.receptive_field
        if wavs.shape[1] < field:
            wavs = F.pad(wavs, (0, field - wavs.shape[1]))
        x = wavs.unsqueeze(1)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if index == 0 and self.norm_type == "layer":
                x = self.norm(x.transpose(1, 2)).transpose(1, 2)
            elif index == 0:
                frames = None
                if num_samples is not None:
                    frames = self.num_frames(num_samples, layers=1)
                x = self.norm(x, frames)
            x = F.gelu(x)
        return x.transpose(1, 2)


class ConvPositionalEmbedding(nn.Module):
    """wav2vec 2.0's relative positional embedding: a grouped convolution
    over time whose output is added to its input.

    Arguments
    ---------
    d_model : int
        Feature size.
    kernel_size : int
        Convolution width in frames.
    groups : int
        Convolution groups (must divide ``d_model``).
    causal : bool
        Only look at past frames.

    Example
    -------
    >>> pos = ConvPositionalEmbedding(8, kernel_size=5, groups=2)
    >>> pos(torch.randn(2, 7, 8)).shape
    torch.Size([2, 7, 8])
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 128,
        groups: int = 16,
        causal: bool = False,
    ):
        super().__init__()
        if d_model % groups:
            raise ValueError(f"groups={groups} must divide d_model={d_model}")
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=groups)
        self.kernel_size = kernel_size
        self.causal = causal

    def forward(
        self, x: torch.Tensor, frames: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Adds the positional embedding to x ``[B, T, D]``."""
        x = zero_padding(x, frames)
        k = self.kernel_size
        left = k - 1 if self.causal else k // 2
        right = k - 1 - left
        y = F.pad(x.transpose(1, 2), (left, right))
        return x + F.gelu(self.conv(y)).transpose(1, 2)


class SSLEncoder(nn.Module):
    """The encoder of :class:`HuBERTModel`: BiMamba, Mamba (causal),
    ConMamba or Transformer layers with a common interface.

    Arguments
    ---------
    encoder_type : str
        One of :data:`ENCODER_TYPES`.
    d_model : int
        Feature size.
    num_layers : int
        Number of layers.
    causal : bool
        Causal encoder (implied by ``"mamba"``; not possible for
        ``"bimamba"``).
    d_state, d_conv, expand : int
        Mamba mixer sizes.
    nhead : int
        Attention heads (Transformer).
    d_ffn : int
        Feed-forward width (Transformer, ConMamba).
    kernel_size : int
        Convolution module width (ConMamba).
    pos_kernel_size, pos_groups : int
        Positional convolution (Transformer).
    dropout : float
        Dropout inside the layers.

    Example
    -------
    >>> enc = SSLEncoder("bimamba", 16, 2, d_state=4)
    >>> enc(torch.randn(2, 9, 16), torch.tensor([9, 5])).shape
    torch.Size([2, 9, 16])
    >>> enc.layer_names()
    ['net.layers.0', 'net.layers.1']
    """

    def __init__(
        self,
        encoder_type: str,
        d_model: int,
        num_layers: int,
        causal: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        nhead: int = 4,
        d_ffn: int = 1024,
        kernel_size: int = 31,
        pos_kernel_size: int = 128,
        pos_groups: int = 16,
        dropout: float = 0.1,
    ):
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(
                f"encoder_type must be one of {ENCODER_TYPES}, got "
                f"{encoder_type!r}"
            )
        if encoder_type == "mamba":
            causal = True
        if encoder_type == "bimamba" and causal:
            raise ValueError(
                "a causal encoder cannot be bidirectional: use "
                "encoder_type='mamba' for the causal Mamba encoder"
            )
        self.encoder_type = encoder_type
        self.causal = causal
        self.d_model = d_model
        mixer = {"d_state": d_state, "d_conv": d_conv, "expand": expand}
        self.pos = None
        if encoder_type in ("bimamba", "mamba"):
            self.net = MambaStack(
                d_model,
                num_layers,
                bidirectional=encoder_type == "bimamba",
                **mixer,
            )
        elif encoder_type == "conmamba":
            from speechbrain_mamba.lobes.asr.conmamba import ConMambaEncoder

            self.net = ConMambaEncoder(
                num_layers,
                d_model,
                d_ffn,
                kernel_size=kernel_size,
                dropout=dropout,
                causal=causal,
                mamba_config=dict(mixer, bidirectional=not causal),
            )
        else:
            from speechbrain.lobes.models.transformer.Transformer import (
                TransformerEncoder,
            )

            self.pos = ConvPositionalEmbedding(
                d_model, pos_kernel_size, pos_groups, causal=causal
            )
            self.net = TransformerEncoder(
                num_layers,
                nhead,
                d_ffn,
                d_model=d_model,
                dropout=dropout,
                activation=nn.GELU,
                normalize_before=True,
            )

    def layer_names(self) -> List[str]:
        """Dotted names (relative to this module) of the encoder layers."""
        return [f"net.layers.{i}" for i in range(len(self.net.layers))]

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Encodes ``[B, T, D]`` with ``frames`` valid frames per item;
        padded output frames are zero."""
        time = x.shape[1]
        frames = frames.to(x.device)
        if self.encoder_type in ("bimamba", "mamba"):
            return self.net(x, lengths=frames.float() / time)
        padding = ~valid_mask(frames, time)
        if self.encoder_type == "conmamba":
            out, _ = self.net(x, src_key_padding_mask=padding)
            return out
        x = self.pos(x, frames)
        src_mask = None
        if self.causal:
            src_mask = torch.triu(
                torch.ones(time, time, dtype=torch.bool, device=x.device), 1
            )
        out, _ = self.net(x, src_mask=src_mask, src_key_padding_mask=padding)
        return zero_padding(out, frames)


@dataclass
class HuBERTOutput:
    """What :meth:`HuBERTModel.forward` returns.

    Arguments
    ---------
    hidden : torch.Tensor
        Encoder output, ``[B, T, d_model]`` (zero on padding).
    logits : torch.Tensor or None
        Cluster logits, ``[B, T, num_clusters]``.
    mask : torch.Tensor or None
        ``[B, T]`` bool, True on masked frames.
    frames : torch.Tensor
        Valid frames per utterance, ``[B]``.
    """

    hidden: torch.Tensor
    logits: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    frames: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Relative lengths of the frame sequences."""
        return self.frames.float() / self.hidden.shape[1]


class HuBERTModel(nn.Module):
    """HuBERT-style masked-prediction model (see the module docstring).

    Arguments
    ---------
    num_clusters : int
        Number of target classes (k-means clusters).
    encoder_type : str
        ``"bimamba"``, ``"mamba"`` (causal), ``"conmamba"`` or
        ``"transformer"``.
    d_model : int
        Encoder width.
    num_layers : int
        Encoder layers.
    causal : bool
        Causal encoder (``"conmamba"``, ``"transformer"``; implied by
        ``"mamba"``).
    conv_layers : sequence of (int, int, int)
        CNN front end, ``(channels, kernel, stride)`` per layer.
    final_dim : int
        Size of the projection compared with the cluster embeddings.
    logit_temp : float
        Temperature of the cosine-similarity logits.
    mask_prob : float
        Span-masking rate (see
        :func:`~speechbrain_mamba.lobes.ssl.masking.span_mask`).
    mask_length : int
        Span length in frames.
    dropout_input : float
        Dropout on the projected CNN features.
    normalize_wav : bool, optional
        Normalise each waveform to zero mean and unit variance (default:
        only for non-causal models, as it looks at the whole utterance).
    extractor_norm : str, optional
        ``"channel"`` or ``"layer"`` normalisation in the CNN (default:
        ``"layer"`` for causal models, which keeps them streamable).
    **encoder_kwargs
        Further :class:`SSLEncoder` arguments (``d_state``, ``nhead``,
        ``d_ffn``, ``dropout`` ...).

    Example
    -------
    >>> model = HuBERTModel(
    ...     10, "bimamba", d_model=16, num_layers=2,
    ...     conv_layers=((8, 10, 5), (8, 4, 4)), d_state=4,
    ... )
    >>> out = model(torch.randn(2, 3200), torch.tensor([1.0, 0.5]), mask=True)
    >>> out.logits.shape, out.frames.tolist()
    (torch.Size([2, 159, 10]), [159, 79])
    >>> bool(out.mask[1, 79:].any())
    False
    """

    def __init__(
        self,
        num_clusters: int,
        encoder_type: str = "bimamba",
        d_model: int = 768,
        num_layers: int = 12,
        causal: bool = False,
        conv_layers: Sequence[Tuple[int, int, int]] = DEFAULT_CONV_LAYERS,
        final_dim: int = 256,
        logit_temp: float = 0.1,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        dropout_input: float = 0.1,
        normalize_wav: Optional[bool] = None,
        extractor_norm: Optional[str] = None,
        **encoder_kwargs,
    ):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        self.num_clusters = num_clusters
        self.mask_prob = mask_prob
        self.mask_length = mask_length
        self.logit_temp = logit_temp
        causal = causal or encoder_type == "mamba"
        self.causal = causal
        self.normalize_wav = (
            not causal if normalize_wav is None else normalize_wav
        )
        if extractor_norm is None:
            extractor_norm = "layer" if causal else "channel"
        self.feature_extractor = ConvFeatureExtractor(
            conv_layers, extractor_norm
        )
        channels = self.feature_extractor.out_channels
        self.layer_norm = nn.LayerNorm(channels)
        self.post_extract_proj = nn.Linear(channels, d_model)
        self.dropout_input = nn.Dropout(dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(d_model).uniform_())
        self.encoder = SSLEncoder(
            encoder_type, d_model, num_layers, causal=causal, **encoder_kwargs
        )
        self.final_proj = nn.Linear(d_model, final_dim)
        self.label_embs = nn.Parameter(torch.empty(num_clusters, final_dim))
        nn.init.uniform_(self.label_embs)
        self.d_model = d_model

    @property
    def frame_stride(self) -> int:
        """Waveform samples per output frame."""
        return self.feature_extractor.stride

    def layer_names(self) -> List[str]:
        """Dotted names of the encoder layers (for layer capture)."""
        return [f"encoder.{n}" for n in self.encoder.layer_names()]

    def num_frames(self, num_samples):
        """Output frames for ``num_samples`` waveform samples."""
        return self.feature_extractor.num_frames(num_samples)

    def cluster_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the projected states with each cluster
        embedding, divided by the temperature: ``[..., num_clusters]``."""
        proj = F.normalize(self.final_proj(hidden).float(), dim=-1)
        embs = F.normalize(self.label_embs.float(), dim=-1)
        return proj @ embs.t() / self.logit_temp

    def forward(
        self,
        wavs: torch.Tensor,
        wav_lens: Optional[torch.Tensor] = None,
        mask: Union[bool, torch.Tensor] = False,
        generator: Optional[torch.Generator] = None,
        return_logits: bool = True,
    ) -> HuBERTOutput:
        """Encodes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].
        mask : bool or torch.Tensor
            True draws span masks (``mask_prob``, ``mask_length``), a
            ``[B, frames]`` bool tensor gives them, False masks nothing.
        generator : torch.Generator, optional
            CPU generator for the masks.
        return_logits : bool
            Compute the cluster logits.

        Returns
        -------
        HuBERTOutput
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"wavs must be [batch, samples], got shape {tuple(wavs.shape)}"
            )
        batch, total = wavs.shape
        if wav_lens is None:
            num_samples = torch.full((batch,), total, device=wavs.device)
        else:
            num_samples = torch.round(wav_lens.to(wavs.device) * total).long()
        if self.normalize_wav:
            wavs = normalize_waveform(wavs, num_samples)
        feats = self.feature_extractor(wavs, num_samples)
        time = feats.shape[1]
        frames = self.num_frames(num_samples).clamp(1, time)
        x = self.post_extract_proj(self.layer_norm(feats))
        x = self.dropout_input(x)
        mask_tensor = None
        if isinstance(mask, torch.Tensor):
            if mask.shape != (batch, time):
                raise ValueError(
                    f"mask must be [batch={batch}, frames={time}], got "
                    f"{tuple(mask.shape)}"
                )
            mask_tensor = mask.to(x.device).bool()
        elif mask:
            mask_tensor = span_mask(
                frames,
                time,
                self.mask_prob,
                self.mask_length,
                generator=generator,
            ).to(x.device)
        if mask_tensor is not None:
            x = torch.where(
                mask_tensor[..., None], self.mask_emb.to(x.dtype), x
            )
        hidden = self.encoder(zero_padding(x, frames), frames)
        logits = self.cluster_logits(hidden) if return_logits else None
        return HuBERTOutput(hidden, logits, mask_tensor, frames)
