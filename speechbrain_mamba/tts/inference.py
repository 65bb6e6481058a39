"""Inference interface of the zero-shot TTS models: a SpeechBrain
``Pretrained`` class that loads an exported folder (or hub repository) with
``from_hparams`` and synthesises speech in the voice of a prompt::

    import speechbrain_mamba
    from speechbrain_mamba.tts.inference import ZeroShotTTS

    tts = ZeroShotTTS.from_hparams(source="hub/vallm_libritts",
                                   run_opts={"device": "cuda"})
    wav, rate = tts.tts("Text to say.", "prompt.wav",
                        "Transcript of the prompt audio.")

Author
------
speechbrain-mamba developers
"""

import dataclasses
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from speechbrain.inference.interfaces import Pretrained

from speechbrain_mamba.tts.audio import load_audio, resample, write_audio
from speechbrain_mamba.tts.synthesis import ZeroShotSynthesizer
from speechbrain_mamba.utils.io import PathLike


class ZeroShotTTS(Pretrained):
    """Zero-shot TTS with a VALL-E or VALL-M model.

    The hyperparameters file defines ``ar``, ``nar``, ``codec`` (modules),
    ``text_frontend`` and ``sampling`` (see
    :mod:`speechbrain_mamba.tts.export`).

    Arguments
    ---------
    *args, **kwargs
        Those of ``speechbrain.inference.interfaces.Pretrained`` (use
        :meth:`from_hparams`).
    """

    HPARAMS_NEEDED = ["text_frontend", "sampling"]
    MODULES_NEEDED = ["ar", "nar", "codec"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.synthesizer = ZeroShotSynthesizer(
            self.mods.ar,
            self.mods.nar,
            self.mods.codec,
            self.hparams.text_frontend,
            self.hparams.sampling,
        )

    @property
    def sample_rate(self) -> int:
        """Sample rate of the synthesised speech."""
        return self.mods.codec.sample_rate

    def _prompt_waveform(
        self, prompt_wav, prompt_sample_rate: Optional[int]
    ) -> torch.Tensor:
        if isinstance(prompt_wav, (str, os.PathLike)):
            return load_audio(prompt_wav, self.sample_rate)
        if not isinstance(prompt_wav, torch.Tensor):
            raise ValueError(
                "prompt_wav must be a file path or a waveform tensor, got "
                f"{type(prompt_wav)}"
            )
        if prompt_sample_rate is None:
            raise ValueError(
                "prompt_sample_rate is needed with a waveform tensor (the "
                f"model works at {self.sample_rate} Hz)"
            )
        wav = prompt_wav.float()
        if wav.dim() == 2 and wav.shape[0] == 1:
            wav = wav[0]
        if wav.dim() != 1:
            raise ValueError(
                "prompt_wav must be mono, [time] or [1, time], got shape "
                f"{tuple(prompt_wav.shape)}"
            )
        return resample(wav.cpu(), int(prompt_sample_rate), self.sample_rate)

    @torch.no_grad()
    def tts(
        self,
        text: str,
        prompt_wav: Union[PathLike, torch.Tensor],
        prompt_text: str,
        prompt_sample_rate: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        cuda_graph: Optional[bool] = None,
    ) -> Tuple[torch.Tensor, int]:
        """Says ``text`` in the voice of the prompt.

        Arguments
        ---------
        text : str
            Text to synthesise.
        prompt_wav : str, Path or torch.Tensor
            A few seconds of enrolment audio: a file, or a mono waveform
            (then ``prompt_sample_rate`` is required).
        prompt_text : str
            Transcript of the prompt audio.
        prompt_sample_rate : int, optional
            Sample rate of a waveform prompt.
        temperature, top_k, top_p : optional
            Override the model's sampling settings.
        seed : int, optional
            Seed for reproducible sampling.
        cuda_graph : bool, optional
            Replay VALL-M's AR steps from its own CUDA graph (on a GPU)
            or step plainly (False); None: the model's ``cuda_graphs``
            option, or the sampling settings when they say.

        Returns
        -------
        waveform : torch.Tensor
            [time] float on the CPU.
        sample_rate : int
        """
        sampling = self.hparams.sampling
        changes = {
            k: v
            for k, v in (
                ("temperature", temperature),
                ("top_k", top_k),
                ("top_p", top_p),
                ("cuda_graph", cuda_graph),
            )
            if v is not None
        }
        if changes:
            sampling = dataclasses.replace(sampling, **changes)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        prompt = self._prompt_waveform(prompt_wav, prompt_sample_rate)
        wav, _ = self.synthesizer.synthesize(
            text, prompt, prompt_text, sampling, generator
        )
        return wav, self.sample_rate

    def tts_to_file(
        self,
        path: PathLike,
        text: str,
        prompt_wav: Union[PathLike, torch.Tensor],
        prompt_text: str,
        **kwargs,
    ) -> Path:
        """Like :meth:`tts`, writing a 16-bit WAV file.

        Arguments
        ---------
        path : str or Path
            Output file.
        text, prompt_wav, prompt_text
            See :meth:`tts`.
        **kwargs
            Other arguments of :meth:`tts`.

        Returns
        -------
        Path
        """
        wav, rate = self.tts(text, prompt_wav, prompt_text, **kwargs)
        write_audio(path, wav, rate)
        return Path(path)
