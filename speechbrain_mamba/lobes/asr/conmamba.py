"""ConMamba encoder: a Conformer whose self-attention is a (bidirectional)
Mamba mixer.

Each layer computes (macaron layout, as in the Conformer)::

    x = x + 1/2 FFN(x)
    x = x + BiMamba(LN(x))
    x = x + ConvModule(x)
    x = LN(x + 1/2 FFN(x))

Unlike the reference implementation, padding is respected everywhere: the
Mamba mixers receive the true lengths (so the backward direction starts at
each utterance's last real frame) and the convolution module zeroes padded
frames *before* its depthwise convolution, so that a padded batch gives every
utterance exactly the encoder output it gets when encoded alone.

The encoder has the interface of SpeechBrain's ``ConformerEncoder`` so that it
can sit inside ``TransformerASR`` (see
:class:`speechbrain_mamba.lobes.asr.transformer_asr.MambaTransformerASR`).

Author
------
speechbrain-mamba developers
"""

from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.nnet.attention import PositionalwiseFeedForward
from speechbrain.nnet.normalization import LayerNorm
from torch import nn

from speechbrain_mamba.lobes.asr.layer_stack import NormedLayerStack
from speechbrain_mamba.nnet import BiMamba, Mamba
from speechbrain_mamba.nnet.padding import (
    check_input_dtype,
    check_sequence_input,
    lengths_to_frames,
    valid_mask,
)
from speechbrain_mamba.utils.bucketed_graphs import SelfGraphedModule

MambaConfig = Optional[Dict[str, Any]]


def split_mamba_config(
    mamba_config: MambaConfig, causal: bool = False
) -> Tuple[bool, Dict[str, Any]]:
    """Splits a Mamba-ASR style ``mamba_config`` dictionary into the
    direction flag and the keyword arguments of the Mamba mixer.

    Arguments
    ---------
    mamba_config : dict, optional
        Mixer arguments (``d_state``, ``expand``, ``d_conv``, ...) plus an
        optional ``bidirectional`` flag (default True).
    causal : bool
        A causal model is never bidirectional.

    Returns
    -------
    bidirectional : bool
        Whether to use a bidirectional mixer.
    mixer_kwargs : dict
        The remaining arguments, for ``Mamba`` / ``BiMamba``.

    Example
    -------
    >>> split_mamba_config({"d_state": 8, "bidirectional": False})
    (False, {'d_state': 8})
    >>> split_mamba_config(None, causal=True)
    (False, {})
    """
    kwargs = dict(mamba_config or {})
    bidirectional = bool(kwargs.pop("bidirectional", True)) and not causal
    for key in ("d_model",):
        if key in kwargs:
            raise ValueError(
                f"mamba_config must not set {key!r}: it comes from the model"
            )
    return bidirectional, kwargs


def key_padding_mask_to_lengths(
    src_key_padding_mask: Optional[torch.Tensor],
) -> Optional[torch.Tensor]:
    """Converts a key padding mask (True on padded frames) into SpeechBrain
    relative lengths.

    Arguments
    ---------
    src_key_padding_mask : torch.Tensor, optional
        Boolean mask, [batch, time], True where a frame is padding.

    Returns
    -------
    torch.Tensor or None
        Relative lengths in (0, 1], [batch].

    Example
    -------
    >>> mask = torch.tensor([[False, False, True, True], [False] * 4])
    >>> key_padding_mask_to_lengths(mask)
    tensor([0.5000, 1.0000])
    """
    if src_key_padding_mask is None:
        return None
    if src_key_padding_mask.dim() != 2:
        raise ValueError(
            "src_key_padding_mask must be [batch, time]; got shape "
            f"{tuple(src_key_padding_mask.shape)}"
        )
    time = src_key_padding_mask.shape[1]
    valid = (~src_key_padding_mask.bool()).sum(dim=1)
    return valid.float() / max(time, 1)


class MaskedConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module, made padding-safe.

    SpeechBrain's module only masks its *output*; the depthwise convolution
    still reads the (non-zero) pointwise outputs of padded frames, so those
    leak into the last real frames. This version zeroes padded frames after
    the pointwise/GLU stage, right before the depthwise convolution, which
    makes a padded frame look exactly like the convolution's own zero padding.
    Parameters (and their names) are those of ``ConvolutionModule``.

    Arguments
    ---------
    input_size : int
        Feature dimension.
    kernel_size : int
        Kernel size of the depthwise convolution.
    bias : bool
        Whether the convolutions have biases.
    activation : type
        Activation class used after the depthwise convolution.
    dropout : float
        Dropout rate.
    causal : bool
        Left-only (causal) convolution.
    dilation : int
        Dilation of the depthwise convolution.

    Example
    -------
    >>> conv = MaskedConvolutionModule(8, kernel_size=3).eval()
    >>> x = torch.rand(2, 5, 8)
    >>> mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    >>> out = conv(x, mask.unsqueeze(-1))
    >>> torch.allclose(out[1, :3], conv(x[1:2, :3])[0], atol=1e-6)
    True
    >>> out[1, 3:].abs().sum().item()
    0.0
    """

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        dynchunktrain_config: Optional[Any] = None,
    ) -> torch.Tensor:
        """Applies the convolution module.

        Arguments
        ---------
        x : torch.Tensor
            Input, [batch, time, channels].
        mask : torch.Tensor, optional
            Boolean, [batch, time, 1] (or [batch, time]), True on padding.
        dynchunktrain_config : DynChunkTrainConfig, optional
            Not supported here (raises).

        Returns
        -------
        torch.Tensor
            [batch, time, channels]; padded frames are zero.
        """
        if dynchunktrain_config is not None:
            raise NotImplementedError(
                "Dynamic chunk training is not supported by the ConMamba "
                "encoder (its Mamba mixers see the whole utterance)."
            )
        if mask is not None and mask.dim() == 2:
            mask = mask.unsqueeze(-1)
        out = self.layer_norm(x).transpose(1, 2)
        out = self.bottleneck(out)
        if mask is not None:
            out = out.masked_fill(mask.transpose(1, 2), 0.0)
        out = self.conv(out)
        if self.causal:
            out = out[..., : -self.padding]
        out = self.after_conv(out.transpose(1, 2))
        if mask is not None:
            out = out.masked_fill(mask, 0.0)
        return out


class ConMambaEncoderLayer(nn.Module):
    """One ConMamba layer: Conformer with BiMamba in place of attention.

    Arguments
    ---------
    d_model : int
        Model dimension.
    d_ffn : int
        Hidden size of the two macaron feed-forward modules.
    kernel_size : int
        Kernel size of the convolution module (31 in the paper).
    activation : type
        Activation class of the feed-forward and convolution modules.
    bias : bool
        Biases in the convolution module.
    dropout : float
        Dropout of the feed-forward and convolution modules.
    causal : bool
        Causal model: unidirectional Mamba and causal convolution.
    mamba_config : dict, optional
        Mixer arguments (``d_state``, ``d_conv``, ``expand``, ...) and
        ``bidirectional`` (default True).

    Example
    -------
    >>> layer = ConMambaEncoderLayer(16, 32, kernel_size=3)
    >>> out, attn = layer(torch.rand(2, 7, 16))
    >>> out.shape, attn
    (torch.Size([2, 7, 16]), None)
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        kernel_size: int = 31,
        activation: type = nn.GELU,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        mamba_config: MambaConfig = None,
    ):
        super().__init__()
        bidirectional, mixer_kwargs = split_mamba_config(mamba_config, causal)
        mixer_class = BiMamba if bidirectional else Mamba
        self.mamba = mixer_class(d_model, **mixer_kwargs)
        self.convolution_module = MaskedConvolutionModule(
            d_model, kernel_size, bias, activation, dropout, causal=causal
        )
        self.ffn_module1 = self._ffn(d_model, d_ffn, activation, dropout)
        self.ffn_module2 = self._ffn(d_model, d_ffn, activation, dropout)
        self.norm1 = LayerNorm(d_model)
        self.norm2 = LayerNorm(d_model)

    @staticmethod
    def _ffn(d_model, d_ffn, activation, dropout):
        return nn.Sequential(
            nn.LayerNorm(d_model),
            PositionalwiseFeedForward(
                d_ffn=d_ffn,
                input_size=d_model,
                dropout=dropout,
                activation=activation,
            ),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        dynchunktrain_config: Optional[Any] = None,
    ) -> Tuple[torch.Tensor, None]:
        """Runs the layer.

        Arguments
        ---------
        x : torch.Tensor
            Input, [batch, time, d_model].
        src_mask : torch.Tensor, optional
            Ignored (the Mamba mixers are inherently causal or bidirectional).
        src_key_padding_mask : torch.Tensor, optional
            Boolean, [batch, time], True on padded frames.
        pos_embs : torch.Tensor, optional
            Ignored (Mamba needs no positional embedding).
        dynchunktrain_config : DynChunkTrainConfig, optional
            Not supported (raises).

        Returns
        -------
        output : torch.Tensor
            [batch, time, d_model].
        attention : None
            No attention weights (kept for the Conformer interface).
        """
        lengths = key_padding_mask_to_lengths(src_key_padding_mask)
        conv_mask = None
        if src_key_padding_mask is not None:
            conv_mask = src_key_padding_mask.bool().unsqueeze(-1)
        x = x + 0.5 * self.ffn_module1(x)
        x = x + self.mamba(self.norm1(x), lengths=lengths)
        x = x + self.convolution_module(
            x, conv_mask, dynchunktrain_config=dynchunktrain_config
        )
        x = self.norm2(x + 0.5 * self.ffn_module2(x))
        return x, None


class ConMambaEncoder(NormedLayerStack, SelfGraphedModule):
    """Stack of :class:`ConMambaEncoderLayer` with a final LayerNorm, with the
    interface of SpeechBrain's ``ConformerEncoder``.

    Arguments
    ---------
    num_layers : int
        Number of layers.
    d_model : int
        Model dimension.
    d_ffn : int
        Hidden size of the feed-forward modules.
    kernel_size : int
        Kernel size of the convolution modules.
    activation : type
        Activation class.
    bias : bool
        Biases in the convolution modules.
    dropout : float
        Dropout rate.
    causal : bool
        Causal encoder (unidirectional Mamba, causal convolutions).
    mamba_config : dict, optional
        See :class:`ConMambaEncoderLayer`.
    output_hidden_states : bool
        Also return the output of every layer.
    layerdrop_prob : float
        Probability of skipping a layer during training.
    cuda_graphs : bool
        Calls on CUDA replay CUDA graphs that the encoder records itself,
        one per (batch, bucket of the length, dtype, autocast, training or
        inference) key, the first call of a key recording it: training
        steps (forward, and backward through autograd, gradients
        accumulated into ``.grad`` as usual) and inference (``eval()``
        with ``torch.no_grad`` or ``torch.inference_mode``). The time axis
        is padded by less than 12.5 % and the padding mask rebuilt from
        the valid lengths, so outputs and gradients are those of the eager
        call (padded frames change no valid output), without the host's
        per-kernel launch cost (see
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`).
        Dropout is recorded (each replay draws new numbers). Eager
        instead: on CPU, with ``output_hidden_states``, while training
        with ``layerdrop_prob > 0``, under DDP (several processes), while
        forward hooks watch a layer, beyond the limits below. False: every
        call is eager.
    max_cuda_graphs : int
        Most inference graphs kept; calls of other keys run eagerly.
    max_training_graphs : int
        Most training graph pairs kept (other keys train eagerly); they
        share one memory pool for their activations and one set of
        gradient buffers. Batches of varying sizes and lengths make a key
        per (batch size, length bucket).

    Example
    -------
    >>> enc = ConMambaEncoder(2, 16, 32, kernel_size=3).eval()
    >>> x = torch.rand(2, 9, 16)
    >>> pad = torch.zeros(2, 9, dtype=torch.bool)
    >>> pad[1, 5:] = True
    >>> out, _ = enc(x, src_key_padding_mask=pad)
    >>> alone, _ = enc(x[1:, :5])
    >>> torch.allclose(out[1, :5], alone[0], atol=1e-5)
    True
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        kernel_size: int = 31,
        activation: type = nn.GELU,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        mamba_config: MambaConfig = None,
        output_hidden_states: bool = False,
        layerdrop_prob: float = 0.0,
        cuda_graphs: bool = True,
        max_cuda_graphs: int = 16,
        max_training_graphs: int = 16,
    ):
        make_layer = partial(
            ConMambaEncoderLayer,
            d_model=d_model,
            d_ffn=d_ffn,
            kernel_size=kernel_size,
            activation=activation,
            bias=bias,
            dropout=dropout,
            causal=causal,
            mamba_config=mamba_config,
        )
        super().__init__(num_layers, d_model, make_layer, norm_eps=1e-6)
        self.d_model = d_model
        self.output_hidden_states = output_hidden_states
        self.layerdrop_prob = layerdrop_prob
        self.init_cuda_graphs(cuda_graphs, max_cuda_graphs, max_training_graphs)

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        dynchunktrain_config: Optional[Any] = None,
    ) -> Union[
        Tuple[torch.Tensor, List[None]],
        Tuple[torch.Tensor, List[None], List[torch.Tensor]],
    ]:
        """Encodes a batch.

        Arguments
        ---------
        src : torch.Tensor
            Input, [batch, time, d_model].
        src_mask : torch.Tensor, optional
            Ignored (see :class:`ConMambaEncoderLayer`).
        src_key_padding_mask : torch.Tensor, optional
            Boolean, [batch, time], True on padded frames, which must be
            at the end of each item (right padding, as SpeechBrain's masks
            are): the Mamba layers and the CUDA graphs take each item's
            number of valid frames from it.
        pos_embs : torch.Tensor, optional
            Ignored.
        dynchunktrain_config : DynChunkTrainConfig, optional
            Not supported (raises).

        Returns
        -------
        output : torch.Tensor
            [batch, time, d_model]; padded frames are zero.
        attention_lst : list
            One None per layer run (no attention weights).
        hidden_state_lst : list of torch.Tensor
            Only when ``output_hidden_states``: the input and every layer's
            output.
        """
        check_sequence_input(src, self.d_model, name="src")
        check_input_dtype(src, self.norm.norm.weight.dtype, name="src")
        if src.shape[1] == 0:
            raise ValueError(
                "src has 0 time frames (shape "
                f"{tuple(src.shape)}); the encoder needs at least one frame"
            )
        if dynchunktrain_config is not None:
            raise NotImplementedError(
                "Dynamic chunk training is not supported by the ConMamba "
                "encoder."
            )
        if src_key_padding_mask is not None and (
            src_key_padding_mask.shape != src.shape[:2]
        ):
            raise ValueError(
                "src_key_padding_mask must be [batch, time] of src "
                f"{tuple(src.shape[:2])}; got shape "
                f"{tuple(src_key_padding_mask.shape)}"
            )
        if self.graphs_apply():
            # the mask becomes valid lengths (right padding, as SpeechBrain's
            # masks); the bucket-padded call rebuilds it from them
            lengths = key_padding_mask_to_lengths(src_key_padding_mask)
            calls = self.cuda_graph_calls(self._encode, 1, 1)
            return calls(src, lengths), [None] * len(self.layers)
        keep = None
        if self.training and self.layerdrop_prob > 0.0:
            keep = (torch.rand(len(self.layers)) > self.layerdrop_prob).tolist()
        output, attention_lst, hidden_state_lst = self.run_layers(
            src,
            lambda _, layer, x: layer(
                x, src_key_padding_mask=src_key_padding_mask
            ),
            keep,
        )
        if src_key_padding_mask is not None:
            output = output.masked_fill(
                src_key_padding_mask.bool().unsqueeze(-1), 0.0
            )
        if self.output_hidden_states:
            return output, attention_lst, hidden_state_lst
        return output, attention_lst

    def graphs_apply(self) -> bool:
        """Whether this call goes through the encoder's own CUDA graphs
        (which still run eagerly on CPU and in the other cases
        :class:`~speechbrain_mamba.utils.bucketed_graphs.BucketedGraphs`
        lists).

        Returns
        -------
        bool
            False with ``cuda_graphs=False``, with ``output_hidden_states``
            (several outputs) and while training with LayerDrop (drawn on
            the host for each step).

        Example
        -------
        >>> enc = ConMambaEncoder(2, 8, 16, kernel_size=3, layerdrop_prob=0.5)
        >>> enc.graphs_apply(), enc.eval().graphs_apply()
        (False, True)
        """
        layerdrop = self.training and self.layerdrop_prob > 0.0
        return (
            self.uses_cuda_graphs()
            and not self.output_hidden_states
            and not layerdrop
        )

    def _encode(
        self, x: torch.Tensor, lengths: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The layers and the final norm on ``x`` whose valid frames are
        given by relative ``lengths`` (None: all), padded output frames
        zero: the call the CUDA graphs record (no host synchronisation;
        the lengths were checked on the real input)."""
        frames = lengths_to_frames(lengths, x.shape[0], x.shape[1], x.device)
        padding = None if frames is None else ~valid_mask(frames, x.shape[1])
        output, _, _ = self.run_layers(
            x, lambda _, layer, h: layer(h, src_key_padding_mask=padding)
        )
        if padding is None:
            return output
        return output.masked_fill(padding.unsqueeze(-1), 0.0)
