"""Zero-shot generation of codec tokens: the AR model samples the first
codebook token by token from its cache (until EOS or the length limit),
then the NAR model fills codebooks 2 .. N.

Author
------
speechbrain-mamba developers
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch

from speechbrain_mamba.lobes.tts.ar import CodecAR
from speechbrain_mamba.lobes.tts.nar import CodecNAR
from speechbrain_mamba.lobes.tts.packing import pack_segments, unpack_second
from speechbrain_mamba.lobes.tts.step_graphs import step_graphs_switched
from speechbrain_mamba.tts.sampling import sample_token


@dataclass
class SamplingConfig:
    """How the AR model samples.

    Arguments
    ---------
    temperature : float
        Softmax temperature (0: greedy).
    top_k : int
        Sample among the k most likely tokens (0: all).
    top_p : float
        Nucleus mass (1: all).
    frames_per_phoneme : float
        Length limit: at most this many frames per target phoneme.
    min_frames_per_phoneme : float
        EOS is not allowed before this many frames per target phoneme.
    max_frames : int, optional
        Absolute length limit.
    cuda_graph : bool, optional
        Whether each AR step replays the CUDA graph the AR model records
        itself where it allows it (VALL-M on a GPU; see
        :mod:`speechbrain_mamba.lobes.tts.step_graphs`): True or False for
        this generation, None (default) as the model's ``cuda_graphs``
        option says (on unless switched off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    frames_per_phoneme: float = 20.0
    min_frames_per_phoneme: float = 0.0
    max_frames: Optional[int] = None
    cuda_graph: Optional[bool] = None

    def limits(
        self, target_phonemes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Minimum and maximum frames for each item, [batch] each.

        Arguments
        ---------
        target_phonemes : torch.Tensor
            Phonemes of each target text (prompt transcript excluded).

        Returns
        -------
        (torch.Tensor, torch.Tensor)

        Example
        -------
        >>> SamplingConfig(frames_per_phoneme=3.0).limits(torch.tensor([2]))
        (tensor([0]), tensor([6]))
        """
        count = target_phonemes.float()
        high = torch.ceil(count * self.frames_per_phoneme).long().clamp(min=1)
        if self.max_frames is not None:
            high = high.clamp(max=self.max_frames)
        low = torch.floor(count * self.min_frames_per_phoneme).long()
        return torch.minimum(low, high - 1).clamp(min=0), high


@torch.no_grad()
def generate_first_codebook(
    ar: CodecAR,
    phonemes: torch.Tensor,
    phoneme_frames: torch.Tensor,
    prompt: torch.Tensor,
    prompt_frames: torch.Tensor,
    max_frames: Union[int, torch.Tensor],
    min_frames: Union[int, torch.Tensor] = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
    cuda_graph: Optional[bool] = None,
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Samples first-codebook tokens after the prompt until EOS.

    Each step feeds the last token through the model's cache (key/value
    cache for the Transformer, recurrent state for Mamba), so a step costs
    O(length) for VALL-E and O(1) for VALL-M. A Mamba AR model on a GPU
    replays its step from a CUDA graph it records itself (sampling stays
    eager; ``cuda_graph`` switches it); other models step eagerly.

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    phonemes : torch.Tensor
        [batch, phonemes]: prompt transcript followed by the target text.
    phoneme_frames : torch.Tensor
        Valid phonemes per item, [batch].
    prompt : torch.Tensor
        First-codebook tokens of the prompt audio, [batch, frames].
    prompt_frames : torch.Tensor
        Valid prompt frames per item, [batch].
    max_frames : int or torch.Tensor
        Most frames to generate per item (generation stops there without
        EOS).
    min_frames : int or torch.Tensor
        EOS is masked out before this many frames.
    temperature, top_k, top_p : float, int, float
        See :func:`speechbrain_mamba.tts.sampling.sample_token`.
    generator : torch.Generator, optional
        Random generator for reproducible sampling.
    cuda_graph : bool, optional
        True / False: the AR steps replay the model's own CUDA graph where
        possible / step plainly; None: the model's ``cuda_graphs`` option.

    Returns
    -------
    tokens : list of torch.Tensor
        Generated tokens of each item (EOS excluded).
    ended : torch.Tensor
        [batch] bool: True where the model emitted EOS, False where the
        length limit stopped it.

    Example
    -------
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              nhead=2).eval()
    >>> tokens, ended = generate_first_codebook(
    ...     ar, torch.randint(1, 10, (1, 4)), torch.tensor([4]),
    ...     torch.randint(0, 16, (1, 3)), torch.tensor([3]), max_frames=5)
    >>> len(tokens[0]) <= 5
    True
    """
    batch = phonemes.shape[0]
    device = phonemes.device
    high = torch.as_tensor(max_frames, device=device).long().expand(batch)
    low = torch.as_tensor(min_frames, device=device).long().expand(batch)
    eos = ar.eos_index
    logits, state = ar.start(phonemes, phoneme_frames, prompt, prompt_frames)
    steps, done = [], torch.zeros(batch, dtype=torch.bool, device=device)
    ended = torch.zeros_like(done)
    counts = torch.zeros(batch, dtype=torch.long, device=device)
    with step_graphs_switched(ar, cuda_graph):
        for t in range(int(high.max())):
            logits = logits.float()
            logits[:, eos] = torch.where(t < low, float("-inf"), logits[:, eos])
            token = sample_token(logits, temperature, top_k, top_p, generator)
            token = torch.where(done, eos, token)
            ended |= (token == eos) & ~done
            done |= token == eos
            counts += (~done).long()
            steps.append(token)
            done |= counts >= high
            if bool(done.all()):
                break
            logits = ar.step(token, state)
    sequence = torch.stack(steps, dim=1) if steps else prompt[:, :0]
    return [sequence[b, : counts[b]] for b in range(batch)], ended


@torch.no_grad()
def synthesize_codes(
    ar: CodecAR,
    nar: CodecNAR,
    phonemes: torch.Tensor,
    phoneme_frames: torch.Tensor,
    target_phonemes: torch.Tensor,
    prompt_codes: torch.Tensor,
    prompt_frames: torch.Tensor,
    sampling: Optional[SamplingConfig] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """All codebooks of the target speech: AR sampling, then NAR filling.

    Arguments
    ---------
    ar : CodecAR
        The AR model.
    nar : CodecNAR
        The NAR model.
    phonemes : torch.Tensor
        [batch, phonemes]: prompt transcript then target text.
    phoneme_frames : torch.Tensor
        Valid phonemes per item, [batch].
    target_phonemes : torch.Tensor
        Phonemes of the target text alone, [batch] (sets the length limits).
    prompt_codes : torch.Tensor
        Codec tokens of the prompt audio, [batch, num_codebooks, frames].
    prompt_frames : torch.Tensor
        Valid prompt frames per item, [batch] (at least 1).
    sampling : SamplingConfig, optional
        Sampling settings.
    generator : torch.Generator, optional
        Random generator.

    Returns
    -------
    codes : list of torch.Tensor
        [num_codebooks, frames_b] for each item.
    ended : torch.Tensor
        [batch] bool: whether the AR model emitted EOS.

    Example
    -------
    >>> ar = CodecAR(10, codebook_size=16, d_model=32, num_layers=1,
    ...              nhead=2).eval()
    >>> nar = CodecNAR(10, codebook_size=16, num_codebooks=3, d_model=32,
    ...                num_layers=1, nhead=2).eval()
    >>> codes, _ = synthesize_codes(
    ...     ar, nar, torch.randint(1, 10, (1, 6)), torch.tensor([6]),
    ...     torch.tensor([3]), torch.randint(0, 16, (1, 3, 4)),
    ...     torch.tensor([4]), SamplingConfig(frames_per_phoneme=2))
    >>> codes[0].shape[0], codes[0].shape[1] <= 6
    (3, True)
    """
    sampling = sampling or SamplingConfig()
    if prompt_codes.dim() != 3 or prompt_codes.shape[1] != nar.num_codebooks:
        raise ValueError(
            "prompt_codes must be [batch, num_codebooks="
            f"{nar.num_codebooks}, frames], got {tuple(prompt_codes.shape)}"
        )
    if bool((prompt_frames < 1).any()):
        raise ValueError("every item needs a prompt of at least one frame")
    low, high = sampling.limits(target_phonemes.to(phonemes.device))
    first, ended = generate_first_codebook(
        ar,
        phonemes,
        phoneme_frames,
        prompt_codes[:, 0],
        prompt_frames,
        high,
        low,
        sampling.temperature,
        sampling.top_k,
        sampling.top_p,
        generator,
        sampling.cuda_graph,
    )
    batch, num_codebooks, _ = prompt_codes.shape
    lengths = torch.tensor([len(f) for f in first], device=phonemes.device)
    if int(lengths.max()) == 0:
        return [prompt_codes[b, :, :0] for b in range(batch)], ended
    target = prompt_codes.new_zeros(batch, int(lengths.max()), num_codebooks)
    for b, tokens in enumerate(first):
        target[b, : len(tokens), 0] = tokens
    packed, total = pack_segments(
        prompt_codes.transpose(1, 2), prompt_frames, target, lengths
    )
    codes = packed.transpose(1, 2)
    filled = nar.fill(
        phonemes,
        codes,
        prompt_frames,
        phoneme_lens=phoneme_frames.float() / phonemes.shape[1],
        code_lens=total.float() / codes.shape[-1],
    )
    out = unpack_second(filled.transpose(1, 2), prompt_frames, target.shape[1])
    return [out[b, : lengths[b]].T for b in range(batch)], ended
