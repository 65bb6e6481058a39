"""Frame-level token labels for CTC models: Viterbi forced alignment of a
transcript to the model's CTC output, for MI(layer; labels) of ASR
encoders.

:func:`ctc_forced_alignment` finds the most likely CTC path (one token or
blank per frame) that collapses to the transcript. :func:`fill_blanks`
then gives every blank frame the token of the nearest aligned token
before it (the token after it for leading blanks), so that each frame
carries the token being spoken. :func:`ctc_frame_labels` runs both for a
trained SpeechBrain CTC ASR model (``compute_features``, ``normalize``,
``CNN``, ``Transformer``, ``ctc_lin``) over a list of utterances.

Author
------
speechbrain-mamba developers
"""

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from speechbrain_mamba.analysis.audio import Utterance, read_audio

logger = logging.getLogger(__name__)


def ctc_forced_alignment(
    log_probs: Any, tokens: Sequence[int], blank: int = 0
) -> Optional[np.ndarray]:
    """Most likely CTC path that collapses to ``tokens`` (Viterbi).

    Arguments
    ---------
    log_probs : numpy.ndarray or torch.Tensor
        ``[T, C]`` log-probabilities of one utterance.
    tokens : sequence of int
        Target token ids (no blanks).
    blank : int
        Index of the blank.

    Returns
    -------
    numpy.ndarray or None
        ``[T]`` int64 path (a token id or ``blank`` per frame), or None
        when no path fits in ``T`` frames.

    Example
    -------
    >>> lp = np.log(np.array([[.1, .8, .1], [.7, .2, .1], [.1, .1, .8]]))
    >>> ctc_forced_alignment(lp, [1, 2]).tolist()
    [1, 0, 2]
    >>> ctc_forced_alignment(lp, [1, 1, 1]) is None
    True
    """
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().float().cpu().numpy()
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be [T, C]; got shape {lp.shape}")
    tokens = [int(t) for t in tokens]
    if any(t == blank for t in tokens):
        raise ValueError("tokens must not contain the blank index")
    if any(t < 0 or t >= lp.shape[1] for t in tokens):
        raise ValueError(
            f"token ids must be in [0, {lp.shape[1]}); got {tokens}"
        )
    frames = lp.shape[0]
    if not tokens:
        return np.full(frames, blank, dtype=np.int64)
    ext = np.full(2 * len(tokens) + 1, blank, dtype=np.int64)
    ext[1::2] = tokens
    states = len(ext)
    # a token may skip the blank before it unless it repeats the previous one
    skip = np.zeros(states, dtype=bool)
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(states, -np.inf)
    score[:2] = lp[0, ext[:2]]
    back = np.zeros((frames, states), dtype=np.int8)
    for t in range(1, frames):
        stay = score
        step = np.concatenate(([-np.inf], score[:-1]))
        jump = np.concatenate(([-np.inf, -np.inf], score[:-2]))
        jump = np.where(skip, jump, -np.inf)
        options = np.stack([stay, step, jump])
        choice = np.argmax(options, axis=0)
        score = options[choice, np.arange(states)] + lp[t, ext]
        back[t] = choice
    last = max((states - 1, states - 2), key=lambda s: score[s])
    if not np.isfinite(score[last]):
        return None
    path = np.empty(frames, dtype=np.int64)
    state = last
    for t in range(frames - 1, -1, -1):
        path[t] = ext[state]
        state -= int(back[t, state])
    return path


def fill_blanks(path: np.ndarray, blank: int = 0) -> np.ndarray:
    """Gives every blank frame of a CTC path the token before it (the
    first token for leading blanks).

    Arguments
    ---------
    path : numpy.ndarray
        ``[T]`` CTC path.
    blank : int
        Index of the blank.

    Returns
    -------
    numpy.ndarray
        ``[T]`` labels; all ``blank`` when the path has no token.

    Example
    -------
    >>> fill_blanks(np.array([0, 3, 0, 0, 5, 0])).tolist()
    [3, 3, 3, 3, 5, 5]
    """
    path = np.asarray(path, dtype=np.int64)
    tokens = np.flatnonzero(path != blank)
    if tokens.size == 0:
        return path.copy()
    index = np.maximum.accumulate(
        np.where(path != blank, np.arange(len(path)), -1)
    )
    index[index < 0] = tokens[0]
    return path[index]


def uniform_alignment(tokens: Sequence[int], frames: int) -> np.ndarray:
    """Spreads ``tokens`` evenly over ``frames`` frames (the fallback when
    no CTC path fits).

    Arguments
    ---------
    tokens : sequence of int
        Token ids (at least one).
    frames : int
        Number of frames.

    Returns
    -------
    numpy.ndarray
        ``[frames]`` labels.

    Example
    -------
    >>> uniform_alignment([4, 5], 4).tolist()
    [4, 4, 5, 5]
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size == 0:
        raise ValueError("uniform_alignment needs at least one token")
    index = np.floor((np.arange(frames) + 0.5) * len(tokens) / frames)
    return tokens[np.minimum(index.astype(int), len(tokens) - 1)]


def ctc_frame_labels(
    hparams: Dict[str, Any],
    utterances: Sequence[Utterance],
    transcripts: Dict[str, str],
    tokenizer: Any,
    device: str = "cpu",
    blank: Optional[int] = None,
) -> Tuple[Dict[str, np.ndarray], int]:
    """Frame token labels of a CTC ASR model from its own forced alignment.

    Each utterance is run alone through features, normalisation, CNN,
    encoder and CTC layer; the transcript, encoded by ``tokenizer``, is
    aligned to the log-probabilities (:func:`ctc_forced_alignment`) and the
    blanks are filled (:func:`fill_blanks`). When no path fits, the tokens
    are spread uniformly (counted in the second return value).

    Arguments
    ---------
    hparams : dict
        Loaded hyperparameters of a trained CTC recipe (``compute_features``,
        ``CNN``, ``Transformer``, ``ctc_lin``, optionally ``normalize``,
        ``blank_index``, ``sample_rate``), modules on ``device``.
    utterances : sequence of Utterance
        Audio to label.
    transcripts : dict
        Utterance ID -> text.
    tokenizer : sentencepiece.SentencePieceProcessor
        The recipe's tokenizer (``encode_as_ids``).
    device : str
        Device of the modules.
    blank : int, optional
        Blank index (default ``hparams["blank_index"]`` or 0).

    Returns
    -------
    labels : dict
        Utterance ID -> ``[T]`` int64 labels (one per encoder frame).
    fallbacks : int
        Utterances aligned uniformly.
    """
    if blank is None:
        blank = int(hparams.get("blank_index", 0))
    features = hparams["compute_features"]
    normalize = hparams.get("normalize")
    cnn, transformer = hparams["CNN"], hparams["Transformer"]
    ctc_lin = hparams["ctc_lin"]
    for module in (cnn, transformer, ctc_lin):
        module.eval()
    if isinstance(normalize, torch.nn.Module):
        normalize.eval()
    rate = int(hparams["sample_rate"])
    labels, fallbacks = {}, 0
    for utt in utterances:
        if utt.id not in transcripts:
            raise KeyError(f"no transcript for utterance {utt.id}")
        tokens = [
            t
            for t in tokenizer.encode_as_ids(transcripts[utt.id])
            if t != blank
        ]
        wav = read_audio(utt.path, rate)[None].to(device)
        lens = torch.ones(1, device=device)
        with torch.no_grad():
            feats = features(wav)
            if normalize is not None:
                feats = normalize(feats, lens)
            enc = transformer.encode(cnn(feats), lens)
            log_probs = torch.log_softmax(ctc_lin(enc)[0].float(), dim=-1)
        path = (
            ctc_forced_alignment(log_probs, tokens, blank) if tokens else None
        )
        if path is None:
            if not tokens:
                path = np.full(log_probs.shape[0], blank, dtype=np.int64)
            else:
                path = uniform_alignment(tokens, log_probs.shape[0])
                fallbacks += 1
        labels[utt.id] = fill_blanks(path, blank)
    if fallbacks:
        logger.warning(
            "%d of %d utterances had no CTC alignment; their tokens were "
            "spread uniformly",
            fallbacks,
            len(utterances),
        )
    return labels, fallbacks
