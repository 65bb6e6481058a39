"""Zero-shot synthesis: text + a prompt (a few seconds of enrolment audio
with its transcript) -> waveform in the prompt's voice, from an AR model, a
NAR model, the codec and the text front end. Shared by the inference
interface and the recipe's test stage.

Author
------
speechbrain-mamba developers
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from speechbrain_mamba.lobes.tts.ar import CodecAR
from speechbrain_mamba.lobes.tts.nar import CodecNAR
from speechbrain_mamba.tts.codec import EncodecCodec
from speechbrain_mamba.tts.generation import SamplingConfig, synthesize_codes
from speechbrain_mamba.tts.text import WORD_BOUNDARY, TextFrontEnd


class ZeroShotSynthesizer:
    """Synthesises speech in the voice of a prompt.

    The phoneme input is the prompt transcript, a word boundary, then the
    target text; the AR model continues the prompt's first-codebook tokens
    until EOS, the NAR model fills the other codebooks, and the codec
    decodes the new frames.

    Arguments
    ---------
    ar : CodecAR
        AR model.
    nar : CodecNAR
        NAR model.
    codec : EncodecCodec
        The codec the models were trained on.
    frontend : TextFrontEnd
        Text front end with the models' symbol table.
    sampling : SamplingConfig, optional
        Default sampling settings.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_mamba.tts.codec import build_random_codec
    >>> codec = EncodecCodec.from_pretrained(build_random_codec(
    ...     tempfile.mkdtemp(), num_filters=2, hidden_size=8,
    ...     codebook_size=16, target_bandwidths=(2.4,)), bandwidth=2.4)
    >>> front = TextFrontEnd("characters").fit(["hello world"])
    >>> ar = CodecAR(len(front), 16, d_model=32, num_layers=1, nhead=2)
    >>> nar = CodecNAR(len(front), 16, 8, d_model=32, num_layers=1, nhead=2)
    >>> tts = ZeroShotSynthesizer(ar.eval(), nar.eval(), codec, front,
    ...                           SamplingConfig(frames_per_phoneme=2))
    >>> wav, info = tts.synthesize("hello", torch.randn(4800), "world")
    >>> wav.dim(), info["frames"] <= 12, wav.shape[0] == info["frames"] * 320
    (1, True, True)
    """

    def __init__(
        self,
        ar: CodecAR,
        nar: CodecNAR,
        codec: EncodecCodec,
        frontend: TextFrontEnd,
        sampling: Optional[SamplingConfig] = None,
    ):
        if codec.num_codebooks != nar.num_codebooks:
            raise ValueError(
                f"the codec has {codec.num_codebooks} codebooks, the NAR "
                f"model {nar.num_codebooks}"
            )
        if codec.codebook_size != ar.codebook_size:
            raise ValueError(
                f"codebook size mismatch: codec {codec.codebook_size}, AR "
                f"model {ar.codebook_size}"
            )
        if len(frontend) > ar.num_symbols:
            raise ValueError(
                f"the symbol table has {len(frontend)} symbols but the "
                f"model only {ar.num_symbols}"
            )
        self.ar = ar
        self.nar = nar
        self.codec = codec
        self.frontend = frontend
        self.sampling = sampling or SamplingConfig()

    @property
    def device(self) -> torch.device:
        """Device of the AR model."""
        return next(self.ar.parameters()).device

    def phoneme_input(
        self, target: Sequence[str], prompt: Sequence[str]
    ) -> Tuple[torch.Tensor, int]:
        """Ids of ``prompt ; boundary ; target`` and the target count.

        Arguments
        ---------
        target : sequence of str
            Symbols of the text to say.
        prompt : sequence of str
            Symbols of the prompt transcript.

        Returns
        -------
        (torch.Tensor, int)
        """
        if not target:
            raise ValueError("the text to synthesise has no symbols")
        symbols = list(prompt) + [WORD_BOUNDARY] + list(target)
        return self.frontend.encode_tokens(symbols), len(target) + 1

    @torch.no_grad()
    def synthesize_from_tokens(
        self,
        target_symbols: Sequence[str],
        prompt_codes: torch.Tensor,
        prompt_symbols: Sequence[str],
        sampling: Optional[SamplingConfig] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, Dict[str, object]]:
        """Synthesis from symbols and prompt codec tokens.

        Arguments
        ---------
        target_symbols : sequence of str
            Front-end symbols of the text to say.
        prompt_codes : torch.Tensor
            Codec tokens of the prompt, [num_codebooks, frames].
        prompt_symbols : sequence of str
            Front-end symbols of the prompt transcript.
        sampling : SamplingConfig, optional
            Overrides the default sampling.
        generator : torch.Generator, optional
            Random generator (on the model's device).

        Returns
        -------
        wav : torch.Tensor
            [time] float on the CPU (empty when the model ends at once).
        info : dict
            ``frames`` generated, ``ended`` (EOS reached), ``codes``.
        """
        device = self.device
        ids, num_target = self.phoneme_input(target_symbols, prompt_symbols)
        if prompt_codes.dim() != 2 or prompt_codes.shape[-1] == 0:
            raise ValueError(
                "prompt_codes must be [num_codebooks, frames] with frames > "
                f"0, got {tuple(prompt_codes.shape)}"
            )
        codes, ended = synthesize_codes(
            self.ar,
            self.nar,
            ids[None].to(device),
            torch.tensor([len(ids)], device=device),
            torch.tensor([num_target], device=device),
            prompt_codes[None].long().to(device),
            torch.tensor([prompt_codes.shape[-1]], device=device),
            sampling or self.sampling,
            generator,
        )
        codes = codes[0]
        info: Dict[str, object] = {
            "frames": int(codes.shape[-1]),
            "ended": bool(ended[0]),
            "codes": codes.cpu(),
        }
        if codes.shape[-1] == 0:
            return torch.zeros(0), info
        wav, _ = self.codec.decode(codes[None])
        return wav[0].cpu(), info

    @torch.no_grad()
    def synthesize(
        self,
        text: str,
        prompt_wav: torch.Tensor,
        prompt_text: str,
        sampling: Optional[SamplingConfig] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, Dict[str, object]]:
        """Synthesis from text and a prompt waveform.

        Arguments
        ---------
        text : str
            Text to say.
        prompt_wav : torch.Tensor
            Prompt audio at the codec's sample rate, [time].
        prompt_text : str
            Transcript of the prompt audio.
        sampling : SamplingConfig, optional
            Overrides the default sampling.
        generator : torch.Generator, optional
            Random generator.

        Returns
        -------
        (torch.Tensor, dict)
            As :meth:`synthesize_from_tokens`.
        """
        if prompt_wav.dim() != 1 or prompt_wav.shape[0] == 0:
            raise ValueError(
                "prompt_wav must be a non-empty 1-D waveform, got shape "
                f"{tuple(prompt_wav.shape)}"
            )
        tokens: List[List[str]] = self.frontend.tokenize_batch(
            [text, prompt_text]
        )
        prompt_codes, _ = self.codec.encode(prompt_wav[None].to(self.device))
        return self.synthesize_from_tokens(
            tokens[0], prompt_codes[0], tokens[1], sampling, generator
        )
