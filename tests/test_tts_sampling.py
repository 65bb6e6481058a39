"""Sampling functions and the generation loop: top-k / top-p correctness,
temperature, EOS handling, length limits."""

import pytest
import torch

from speechbrain_mamba.lobes.tts import CodecAR, CodecNAR
from speechbrain_mamba.tts.generation import (
    SamplingConfig,
    generate_first_codebook,
    synthesize_codes,
)
from speechbrain_mamba.tts.sampling import (
    max_output_frames,
    sample_token,
    top_k_filter,
    top_p_filter,
)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor(
        [[0.1, 2.0, -1.0, 3.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]]
    )
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [
        [False, True, False, True, False],
        [True, True, False, False, False],
    ]
    torch.testing.assert_close(top_k_filter(logits, 0), logits)
    torch.testing.assert_close(top_k_filter(logits, 9), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, -1)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.97, 0.01, 0.01, 0.01]])
    logits = probs.log()
    # 0.4 + 0.3 = 0.7 < 0.75, so 0.2 is needed too
    assert top_p_filter(logits, 0.75).isfinite().tolist() == [
        [False, True, True, True],
        [True, False, False, False],
    ]
    # exactly reaching p stops there
    assert top_p_filter(logits[:1], 0.7).isfinite().tolist() == [
        [False, True, False, True]
    ]
    # the most likely token survives the smallest p
    assert top_p_filter(logits, 1e-6).isfinite().sum(-1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_sampling_follows_distribution_and_temperature():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    draws = sample_token(logits, generator=g)
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(
        freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.02, rtol=0
    )
    cold = sample_token(logits, temperature=0.25, generator=g)
    assert (cold == 0).float().mean() > 0.9  # 0.6^4 / sum ~ 0.94
    hot = sample_token(logits, temperature=100.0, generator=g)
    hot_freq = torch.bincount(hot, minlength=3).float() / len(hot)
    assert hot_freq.min() > 0.3
    assert torch.equal(
        sample_token(logits[:2], temperature=0),
        torch.zeros(2, dtype=torch.long),
    )
    top1 = sample_token(logits[:100], top_k=1, generator=g)
    assert torch.all(top1 == 0)
    nucleus = sample_token(logits, top_p=0.85, generator=g)
    assert set(nucleus.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="temperature"):
        sample_token(logits, temperature=-1)


def test_max_output_frames():
    assert max_output_frames(12, 20.0) == 240
    assert max_output_frames(0, 20.0, minimum=5) == 5
    assert max_output_frames(100, 20.0, maximum=1000) == 1000
    low, high = SamplingConfig(
        frames_per_phoneme=2.0, min_frames_per_phoneme=1.0, max_frames=5
    ).limits(torch.tensor([3, 0]))
    assert low.tolist() == [3, 0] and high.tolist() == [5, 1]


class ScriptedAR(torch.nn.Module):
    """An AR 'model' whose logits follow a script: token 1 + step until the
    item's EOS step, then EOS."""

    def __init__(self, eos_steps, codebook_size=8):
        super().__init__()
        self.eos_steps = torch.tensor(eos_steps)
        self.codebook_size = codebook_size
        self.eos_index = codebook_size

    def _logits(self, step):
        batch = len(self.eos_steps)
        logits = torch.full((batch, self.codebook_size + 1), -10.0)
        token = torch.full((batch,), (step + 1) % self.codebook_size)
        token = torch.where(step >= self.eos_steps, self.eos_index, token)
        logits[torch.arange(batch), token] = 10.0
        return logits

    def start(self, phonemes, phoneme_frames, prompt, prompt_frames):
        self.fed = []
        return self._logits(0), {"step": 0}

    def step(self, tokens, state):
        self.fed.append(tokens.clone())
        state["step"] += 1
        return self._logits(state["step"])


def test_generation_stops_at_eos_and_keeps_feeding_finished_items():
    ar = ScriptedAR([3, 5])
    tokens, ended = generate_first_codebook(
        ar,
        torch.ones(2, 4, dtype=torch.long),
        torch.tensor([4, 4]),
        torch.zeros(2, 1, dtype=torch.long),
        torch.tensor([1, 1]),
        max_frames=20,
        temperature=0,
    )
    assert [t.tolist() for t in tokens] == [[1, 2, 3], [1, 2, 3, 4, 5]]
    assert ended.tolist() == [True, True]
    # the finished item is fed EOS; generation stops when all are done
    assert len(ar.fed) == 5 and ar.fed[3].tolist() == [8, 4]


def test_generation_length_limits():
    ar = ScriptedAR([10, 2])
    tokens, ended = generate_first_codebook(
        ar,
        torch.ones(2, 4, dtype=torch.long),
        torch.tensor([4, 4]),
        torch.zeros(2, 1, dtype=torch.long),
        torch.tensor([1, 1]),
        max_frames=torch.tensor([4, 6]),
        min_frames=torch.tensor([0, 4]),
        temperature=0,
    )
    # item 0 hits max_frames before its EOS; item 1's early EOS is masked
    # until min_frames (greedy then picks the scripted runner-up: -10 ties,
    # the lowest id 0)
    assert tokens[0].tolist() == [1, 2, 3, 4] and not ended[0]
    assert tokens[1].tolist() == [1, 2, 0, 0] and bool(ended[1])


def test_synthesize_codes_gives_all_codebooks_and_keeps_prompt_out():
    ar = CodecAR(10, 16, d_model=32, num_layers=1, nhead=2).eval()
    nar = CodecNAR(10, 16, 3, d_model=32, num_layers=1, nhead=2).eval()
    prompt = torch.randint(0, 16, (2, 3, 5))
    g = torch.Generator().manual_seed(0)
    codes, ended = synthesize_codes(
        ar,
        nar,
        torch.randint(1, 10, (2, 6)),
        torch.tensor([6, 4]),
        torch.tensor([3, 2]),
        prompt,
        torch.tensor([5, 2]),
        SamplingConfig(frames_per_phoneme=2.0),
        g,
    )
    assert len(codes) == 2 and ended.shape == (2,)
    for item, limit in zip(codes, (6, 4)):
        assert item.shape[0] == 3 and 0 < item.shape[1] <= limit
        assert int(item.max()) < 16
    with pytest.raises(ValueError, match="at least one frame"):
        synthesize_codes(
            ar,
            nar,
            torch.randint(1, 10, (1, 6)),
            torch.tensor([6]),
            torch.tensor([3]),
            prompt[:1],
            torch.tensor([0]),
        )
