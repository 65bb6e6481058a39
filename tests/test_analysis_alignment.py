"""CTC forced alignment for frame-level ASR labels: Viterbi path against a
brute-force search over every path, blank filling and the fallback."""

import itertools

import numpy as np
import pytest
import torch

from speechbrain_mamba.analysis.alignment import (
    ctc_forced_alignment,
    fill_blanks,
    uniform_alignment,
)


def collapse(path, blank=0):
    out, previous = [], None
    for token in path:
        if token != blank and token != previous:
            out.append(token)
        previous = token
    return out


def brute_force(log_probs, tokens, blank=0):
    frames, classes = log_probs.shape
    best, best_path = -np.inf, None
    for path in itertools.product(range(classes), repeat=frames):
        if collapse(path, blank) != list(tokens):
            continue
        score = sum(log_probs[t, c] for t, c in enumerate(path))
        if score > best:
            best, best_path = score, list(path)
    return best, best_path


@pytest.mark.parametrize(
    "frames,tokens,seed",
    [
        (5, [1, 2], 0),
        (6, [1, 1], 1),
        (6, [2, 1, 2], 2),
        (4, [3], 3),
        (5, [1, 1, 2], 4),
        (7, [3, 3, 3], 5),
    ],
)
def test_viterbi_path_is_the_best_path(frames, tokens, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((frames, 4)) * 2
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    path = ctc_forced_alignment(torch.from_numpy(log_probs), tokens)
    best, reference = brute_force(log_probs, tokens)
    assert path is not None
    assert collapse(path.tolist()) == tokens
    score = log_probs[np.arange(frames), path].sum()
    np.testing.assert_allclose(score, best, rtol=0, atol=1e-9)
    assert path.tolist() == reference


def test_alignment_errors_and_infeasible_paths():
    lp = np.log(np.full((3, 3), 1 / 3))
    # "1 1" needs a blank between the repeats: 3 frames, 4 do not fit 3
    assert ctc_forced_alignment(lp, [1, 1]) is not None
    assert ctc_forced_alignment(lp, [1, 1, 2]) is None
    assert ctc_forced_alignment(lp, []).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_alignment(lp, [0, 1])
    with pytest.raises(ValueError, match="token ids"):
        ctc_forced_alignment(lp, [5])
    with pytest.raises(ValueError, match=r"\[T, C\]"):
        ctc_forced_alignment(lp[0], [1])


def test_fill_blanks_and_uniform_alignment():
    assert fill_blanks(np.array([0, 0, 4, 0, 4, 2, 0])).tolist() == [
        4,
        4,
        4,
        4,
        4,
        2,
        2,
    ]
    assert fill_blanks(np.array([0, 0])).tolist() == [0, 0]
    assert uniform_alignment([1, 2, 3], 6).tolist() == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="at least one token"):
        uniform_alignment([], 3)
