"""Evaluation of synthesised speech: word error rate of an ASR model's
transcripts and speaker similarity (cosine of speaker embeddings) to the
prompt and to the real recording, with SpeechBrain pretrained models given
by the user.

Author
------
speechbrain-mamba developers
"""

import re
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from speechbrain_mamba.tts.audio import resample
from speechbrain_mamba.utils.atomic import atomic_write_csv
from speechbrain_mamba.utils.io import PathLike

Transcriber = Callable[[torch.Tensor, int], str]
Embedder = Callable[[torch.Tensor, int], torch.Tensor]


def normalize_words(text: str) -> List[str]:
    """Upper-cased words without punctuation (apostrophes kept).

    Arguments
    ---------
    text : str

    Returns
    -------
    list of str

    Example
    -------
    >>> normalize_words("Where's Anna, Mr. Smith?")
    ["WHERE'S", 'ANNA', 'MR', 'SMITH']
    """
    return re.sub(r"[^\w' ]+", " ", text.upper()).split()


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _input_rate(model) -> int:
    normalizer = getattr(model, "audio_normalizer", None)
    return int(getattr(normalizer, "sample_rate", 16000))


def speechbrain_transcriber(
    source: str,
    interface: str = "speechbrain.inference.ASR.EncoderDecoderASR",
    savedir: Optional[PathLike] = None,
    device: str = "cpu",
) -> Transcriber:
    """A transcriber from a SpeechBrain ASR model (hub id or folder).

    Arguments
    ---------
    source : str
        Model source for ``from_hparams``.
    interface : str
        Import path of the SpeechBrain interface class.
    savedir : str or Path, optional
        Where the model files are collected.
    device : str
        Device of the model.

    Returns
    -------
    callable
        ``(waveform [time], sample_rate) -> text``.
    """
    model = _import(interface).from_hparams(
        source=source, savedir=savedir, run_opts={"device": device}
    )
    rate = _input_rate(model)

    def transcribe(wav: torch.Tensor, sample_rate: int) -> str:
        wav = resample(wav.float().cpu(), sample_rate, rate)
        words, _ = model.transcribe_batch(
            wav[None].to(model.device), torch.ones(1, device=model.device)
        )
        return words[0] if isinstance(words[0], str) else " ".join(words[0])

    return transcribe


def speechbrain_embedder(
    source: str,
    interface: str = "speechbrain.inference.speaker.SpeakerRecognition",
    savedir: Optional[PathLike] = None,
    device: str = "cpu",
) -> Embedder:
    """A speaker embedder from a SpeechBrain model (e.g. ECAPA-TDNN).

    Arguments
    ---------
    source : str
        Model source for ``from_hparams``.
    interface : str
        Import path of the SpeechBrain interface class (with
        ``encode_batch``).
    savedir : str or Path, optional
        Where the model files are collected.
    device : str
        Device of the model.

    Returns
    -------
    callable
        ``(waveform [time], sample_rate) -> embedding [dim]``.
    """
    model = _import(interface).from_hparams(
        source=source, savedir=savedir, run_opts={"device": device}
    )
    rate = _input_rate(model)

    def embed(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        wav = resample(wav.float().cpu(), sample_rate, rate)
        out = model.encode_batch(
            wav[None].to(model.device), torch.ones(1, device=model.device)
        )
        return out.reshape(-1).float().cpu()

    return embed


class SynthesisEvaluator:
    """Collects WER and speaker similarity of synthesised utterances.

    Arguments
    ---------
    transcribe : callable, optional
        ``(waveform, sample_rate) -> text``; WER is skipped without it.
    embed : callable, optional
        ``(waveform, sample_rate) -> embedding``; similarity is skipped
        without it.

    Example
    -------
    >>> ev = SynthesisEvaluator(transcribe=lambda w, sr: "a cat sat",
    ...                         embed=lambda w, sr: w[:2])
    >>> w = torch.tensor([1.0, 0.0, 0.5])
    >>> ev.add("u1", w, 16000, "A cat sat.", prompt=w, reference=-w)
    >>> ev.add("u2", w, 16000, "the cat sat")
    >>> s = ev.summarize()
    >>> round(s["wer"], 2), s["sim_prompt"], s["sim_reference"]
    (16.67, 1.0, -1.0)
    """

    def __init__(
        self,
        transcribe: Optional[Transcriber] = None,
        embed: Optional[Embedder] = None,
    ):
        self.transcribe = transcribe
        self.embed = embed
        self.rows: List[Dict[str, object]] = []
        self.errors = 0
        self.words = 0

    @property
    def enabled(self) -> bool:
        """Whether any metric can be computed."""
        return self.transcribe is not None or self.embed is not None

    def add(
        self,
        utt_id: str,
        wav: torch.Tensor,
        sample_rate: int,
        text: str,
        prompt: Optional[torch.Tensor] = None,
        reference: Optional[torch.Tensor] = None,
    ) -> None:
        """Scores one synthesised utterance.

        Arguments
        ---------
        utt_id : str
            Utterance id.
        wav : torch.Tensor
            Synthesised waveform, [time].
        sample_rate : int
            Its sample rate (also that of prompt and reference).
        text : str
            Text it should say.
        prompt : torch.Tensor, optional
            The enrolment audio.
        reference : torch.Tensor, optional
            The real recording of ``text`` by the same speaker.
        """
        row: Dict[str, object] = {"id": utt_id, "text": text}
        if self.transcribe is not None:
            from speechbrain.utils.edit_distance import wer_details_for_batch

            hyp = self.transcribe(wav, sample_rate)
            ref_words, hyp_words = normalize_words(text), normalize_words(hyp)
            details = wer_details_for_batch([utt_id], [ref_words], [hyp_words])[
                0
            ]
            errors = (
                details["insertions"]
                + details["deletions"]
                + details["substitutions"]
            )
            self.errors += errors
            self.words += len(ref_words)
            row.update(hypothesis=hyp, word_errors=errors)
        if self.embed is not None:
            synth = self.embed(wav, sample_rate)
            for name, other in (("prompt", prompt), ("reference", reference)):
                if other is not None:
                    sim = F.cosine_similarity(
                        synth, self.embed(other, sample_rate), dim=0
                    )
                    row[f"sim_{name}"] = float(sim)
        self.rows.append(row)

    def summarize(self) -> Dict[str, float]:
        """``wer`` (%), ``sim_prompt`` and ``sim_reference`` (means)."""
        out: Dict[str, float] = {"utterances": len(self.rows)}
        if self.transcribe is not None and self.words:
            out["wer"] = 100.0 * self.errors / self.words
        for key in ("sim_prompt", "sim_reference"):
            values = [r[key] for r in self.rows if key in r]
            if values:
                out[key] = sum(values) / len(values)
        return out

    def write(self, path: PathLike) -> Path:
        """Writes one CSV row per utterance (atomically)."""
        path = Path(path)
        keys: List[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        return atomic_write_csv(path, keys, self.rows)
