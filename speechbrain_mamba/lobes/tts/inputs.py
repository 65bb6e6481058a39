"""Input layers shared by the AR and NAR codec language models: the
phoneme and codec-token embeddings, the sinusoidal positions of the text
and audio segments, the embedding dropout and the valid frames of both
segments.

The layers are registered on the model itself (``text_embedding``,
``audio_embedding``, ``dropout``, ``text_positions``, ``audio_positions``),
so the parameter names of the models, and their checkpoints, do not depend
on this base class.

Author
------
speechbrain-mamba developers
"""

from typing import Optional, Tuple

import torch
from torch import nn

from speechbrain_mamba.lobes.tts.common import check_tokens, frames_of
from speechbrain_mamba.lobes.tts.positional import ScaledSinusoidalPositions


class CodecLMInputs(nn.Module):
    """Base class of :class:`~speechbrain_mamba.lobes.tts.ar.CodecAR` and
    :class:`~speechbrain_mamba.lobes.tts.nar.CodecNAR`: builds and applies
    their input layers.

    A subclass calls :meth:`build_inputs` in its constructor (where the
    layers should appear in its ``state_dict``), then embeds the phonemes
    with :meth:`embed_phonemes` and finishes its audio embeddings with
    :meth:`prepare_audio`. Text and audio positions each count from 0.

    Example
    -------
    >>> class Toy(CodecLMInputs):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.build_inputs(10, 16, d_model=8, dropout=0.0,
    ...                           positional=True)
    >>> toy = Toy()
    >>> sorted(toy.state_dict())  # doctest: +NORMALIZE_WHITESPACE
    ['audio_embedding.weight', 'audio_positions.alpha',
     'text_embedding.weight', 'text_positions.alpha']
    >>> phonemes = torch.tensor([[1, 2, 3]])
    >>> toy.embed_phonemes(phonemes).shape
    torch.Size([1, 3, 8])
    >>> audio = toy.audio_embedding(torch.tensor([[4, 5]]))
    >>> toy.prepare_audio(audio, torch.arange(2)[None, :]).shape
    torch.Size([1, 2, 8])
    >>> toy.segment_frames(phonemes, torch.zeros(1, 4, dtype=torch.long),
    ...                    torch.tensor([2 / 3]), None)
    (tensor([2]), tensor([4]))
    """

    def build_inputs(
        self,
        num_symbols: int,
        num_audio_tokens: int,
        d_model: int,
        dropout: float,
        positional: bool,
    ) -> None:
        """Creates the input layers (in this order): ``text_embedding``,
        ``audio_embedding``, ``dropout`` and, with ``positional``,
        ``text_positions`` and ``audio_positions`` (None otherwise).

        Arguments
        ---------
        num_symbols : int
            Size of the phoneme symbol table (with padding at 0).
        num_audio_tokens : int
            Rows of the audio embedding table.
        d_model : int
            Embedding size.
        dropout : float
            Dropout applied to the text and audio embeddings.
        positional : bool
            Add scaled sinusoidal positions to text and audio.
        """
        self.num_symbols = num_symbols
        self.text_embedding = nn.Embedding(num_symbols, d_model)
        self.audio_embedding = nn.Embedding(num_audio_tokens, d_model)
        self.dropout = nn.Dropout(dropout)
        self.text_positions = self.audio_positions = None
        if positional:
            self.text_positions = ScaledSinusoidalPositions(d_model)
            self.audio_positions = ScaledSinusoidalPositions(d_model)

    def embed_phonemes(self, phonemes: torch.Tensor) -> torch.Tensor:
        """Checks and embeds the phonemes, adds their positions (when
        used) and applies the dropout.

        Arguments
        ---------
        phonemes : torch.Tensor
            Phoneme ids, [batch, phonemes] (integer, < num_symbols).

        Returns
        -------
        torch.Tensor
            [batch, phonemes, d_model].
        """
        check_tokens(phonemes, "phonemes", self.num_symbols, 2)
        x = self.text_embedding(phonemes)
        if self.text_positions is not None:
            positions = torch.arange(phonemes.shape[1], device=x.device)
            x = self.text_positions(x, positions[None, :])
        return self.dropout(x)

    def prepare_audio(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Adds the audio positions (when used) to audio embeddings and
        applies the dropout.

        Arguments
        ---------
        x : torch.Tensor
            Audio embeddings, [batch, frames, d_model].
        positions : torch.Tensor
            Audio position of each frame, [batch, frames] (or
            broadcastable).

        Returns
        -------
        torch.Tensor
            [batch, frames, d_model].
        """
        if self.audio_positions is not None:
            x = self.audio_positions(x, positions)
        return self.dropout(x)

    @staticmethod
    def segment_frames(
        phonemes: torch.Tensor,
        codes: torch.Tensor,
        phoneme_lens: Optional[torch.Tensor],
        code_lens: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Valid phonemes and audio frames of each item.

        Arguments
        ---------
        phonemes : torch.Tensor
            [batch, phonemes].
        codes : torch.Tensor
            [batch, ..., frames]: the frames are the last dimension.
        phoneme_lens, code_lens : torch.Tensor, optional
            Relative lengths in (0, 1], [batch]; None: all frames valid.

        Returns
        -------
        text_frames, code_frames : torch.Tensor
            Long tensors [batch].
        """
        batch, time = codes.shape[0], codes.shape[-1]
        text_frames = frames_of(
            phoneme_lens, batch, phonemes.shape[1], phonemes.device
        )
        code_frames = frames_of(code_lens, batch, time, codes.device)
        return text_frames, code_frames
