"""VALL-E / VALL-M codec language models: cached AR decoding equals the
teacher-forced forward, padding and packing, NAR inputs and masking,
adaptive norms, sizes."""

import pytest
import torch

from speechbrain_mamba.lobes.tts import (
    AdaptiveLayerNorm,
    AdaptiveMambaStack,
    CodecAR,
    CodecNAR,
    build_codec_lm,
)
from speechbrain_mamba.lobes.tts.packing import pack_segments, unpack_second
from speechbrain_mamba.utils.parameters import count_parameters

ATOL = 1e-4
AR_CONFIGS = {
    "transformer": dict(backbone="transformer", nhead=2),
    "mamba": dict(backbone="mamba", d_state=8),
    "mamba+text_encoder": dict(
        backbone="mamba", d_state=8, text_encoder_layers=1
    ),
}


def tiny_ar(name):
    return CodecAR(
        12,
        codebook_size=16,
        d_model=32,
        num_layers=2,
        dropout=0.0,
        **AR_CONFIGS[name],
    ).eval()


def padded_batch():
    phonemes = torch.randint(1, 12, (3, 7))
    codes = torch.randint(0, 16, (3, 9))
    phoneme_frames = torch.tensor([7, 4, 5])
    code_frames = torch.tensor([9, 6, 4])
    return phonemes, codes, phoneme_frames, code_frames


@pytest.mark.parametrize("name", sorted(AR_CONFIGS))
def test_ar_step_by_step_equals_teacher_forced(name):
    ar = tiny_ar(name)
    phonemes, codes, pf, cf = padded_batch()
    prompt_frames = torch.tensor([2, 0, 3])  # ragged prompts, one empty
    with torch.no_grad():
        full = ar(phonemes, codes, pf / 7.0, cf / 9.0)
        logits, state = ar.start(phonemes, pf, codes[:, :3], prompt_frames)
        steps = [logits]
        for s in range(6):
            index = (prompt_frames + s).clamp(max=8)
            steps.append(ar.step(codes.gather(1, index[:, None])[:, 0], state))
    steps = torch.stack(steps, 1)
    for b in range(3):
        first, last = int(prompt_frames[b]), int(cf[b])
        # full[:, t] predicts token t; step s predicts token first + s
        count = min(last + 1 - first, steps.shape[1])
        torch.testing.assert_close(
            steps[b, :count],
            full[b, first : first + count],
            atol=ATOL,
            rtol=1e-4,
        )


@pytest.mark.parametrize("name", ["transformer", "mamba"])
def test_ar_padded_batch_equals_items_alone(name):
    ar = tiny_ar(name)
    phonemes, codes, pf, cf = padded_batch()
    with torch.no_grad():
        batch = ar(phonemes, codes, pf / 7.0, cf / 9.0)
        for b in range(3):
            alone = ar(phonemes[b : b + 1, : pf[b]], codes[b : b + 1, : cf[b]])
            torch.testing.assert_close(
                batch[b, : cf[b] + 1], alone[0], atol=ATOL, rtol=1e-4
            )


@pytest.mark.parametrize("name", ["transformer", "mamba"])
def test_ar_is_causal_over_audio_and_reads_all_phonemes(name):
    ar = tiny_ar(name)
    phonemes, codes = torch.randint(1, 12, (1, 6)), torch.randint(0, 16, (1, 8))
    changed = codes.clone()
    changed[0, 5] = (codes[0, 5] + 1) % 16
    with torch.no_grad():
        a, b = ar(phonemes, codes), ar(phonemes, changed)
        # position t sees tokens < t: outputs up to 5 unchanged, 6 changes
        torch.testing.assert_close(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6], b[:, 6])
        # the last phoneme influences the first audio prediction
        other = phonemes.clone()
        other[0, -1] = phonemes[0, -1] % 11 + 1
        assert not torch.allclose(a[:, 0], ar(other, codes)[:, 0])


def test_ar_targets_have_eos_and_ignore_padding():
    ar = tiny_ar("transformer")
    codes = torch.tensor([[3, 4, 5], [6, 7, 0]])
    targets = ar.targets(codes, torch.tensor([1.0, 2 / 3]))
    assert targets.tolist() == [[3, 4, 5, 16], [6, 7, 16, -100]]


def test_ar_rejects_bad_tokens():
    ar = tiny_ar("mamba")
    with pytest.raises(ValueError, match="codes must hold values in"):
        ar(torch.ones(1, 3, dtype=torch.long), torch.full((1, 4), 16))
    with pytest.raises(ValueError, match="phonemes must hold"):
        ar(torch.full((1, 3), 12), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="text_encoder_layers"):
        CodecAR(12, 16, d_model=32, num_layers=1, text_encoder_layers=1)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_nar_shapes_padding_and_masking(backbone):
    nar = CodecNAR(
        12,
        codebook_size=16,
        num_codebooks=4,
        d_model=32,
        num_layers=1,
        backbone=backbone,
        nhead=2,
        d_state=8,
        dropout=0.0,
    ).eval()
    phonemes = torch.randint(1, 12, (2, 6))
    codes = torch.randint(0, 16, (2, 4, 10))
    pf, cf = torch.tensor([6, 3]), torch.tensor([10, 7])
    prompt, stage = torch.tensor([4, 2]), torch.tensor([2, 1])
    with torch.no_grad():
        logits = nar(phonemes, codes, prompt, stage, pf / 6.0, cf / 10.0)
        assert logits.shape == (2, 10, 16)
        for b in range(2):
            alone = nar(
                phonemes[b : b + 1, : pf[b]],
                codes[b : b + 1, :, : cf[b]],
                prompt[b : b + 1],
                stage[b : b + 1],
            )
            torch.testing.assert_close(
                logits[b, : cf[b]], alone[0], atol=ATOL, rtol=1e-4
            )
        # codebooks >= stage of target frames are not read...
        hidden = codes.clone()
        hidden[0, 2:, 4:] = torch.randint(0, 16, (2, 6))
        hidden[1, 1:, 2:] = torch.randint(0, 16, (3, 8))
        # ...nor is the padding
        hidden[1, :, 7:] = torch.randint(0, 16, (4, 3))
        again = nar(phonemes, hidden, prompt, stage, pf / 6.0, cf / 10.0)
        torch.testing.assert_close(again[0], logits[0], atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(
            again[1, :7], logits[1, :7], atol=ATOL, rtol=1e-4
        )
        # while all codebooks of the prompt frames are
        seen = codes.clone()
        seen[0, 3, 1] = (codes[0, 3, 1] + 1) % 16
        moved = nar(phonemes, seen, prompt, stage, pf / 6.0, cf / 10.0)
        assert not torch.allclose(moved[0], logits[0])
        # and the stage changes the prediction (adaptive norm + head)
        other = nar(phonemes, codes, prompt, stage + 1, pf / 6.0, cf / 10.0)
        assert not torch.allclose(other[0], logits[0])


def test_nar_fill_only_writes_target_frames_of_upper_codebooks():
    nar = CodecNAR(
        12,
        codebook_size=16,
        num_codebooks=3,
        d_model=32,
        num_layers=1,
        nhead=2,
    ).eval()
    codes = torch.randint(0, 16, (1, 3, 8))
    filled = nar.fill(torch.randint(1, 12, (1, 5)), codes, torch.tensor([3]))
    assert torch.equal(filled[:, :, :3], codes[:, :, :3])
    assert torch.equal(filled[:, 0], codes[:, 0])
    with pytest.raises(ValueError, match="stage must be in"):
        nar(
            torch.ones(1, 2, dtype=torch.long),
            codes,
            torch.tensor([1]),
            torch.tensor([3]),
        )
    with pytest.raises(ValueError, match="codebooks"):
        nar(
            torch.ones(1, 2, dtype=torch.long),
            codes[:, :2],
            torch.tensor([1]),
            torch.tensor([1]),
        )


def test_every_parameter_learns_in_one_joint_step():
    # no unused parameters (DDP without find_unused_parameters)
    for kind in ("valle", "vallm"):
        ar, nar = build_codec_lm(
            kind, "tiny", num_symbols=12, codebook_size=16, num_codebooks=3
        )
        phonemes = torch.randint(1, 12, (2, 5))
        codes = torch.randint(0, 16, (2, 3, 6))
        loss = (
            ar(phonemes, codes[:, 0]).sum()
            + nar(
                phonemes, codes, torch.tensor([2, 3]), torch.tensor([1, 2])
            ).sum()
        )
        loss.backward()
        for module in (ar, nar):
            missing = [
                n for n, p in module.named_parameters() if p.grad is None
            ]
            assert not missing, (kind, missing)


def test_adaptive_norms_are_per_item():
    norm = AdaptiveLayerNorm(8, 3)
    with torch.no_grad():
        norm.affine.weight[2, :8] = 2.0
    x = torch.randn(2, 4, 8)
    y = norm(x, torch.tensor([0, 2]))
    base = torch.nn.functional.layer_norm(x, (8,))
    torch.testing.assert_close(y[0], base[0])
    torch.testing.assert_close(y[1], 2 * base[1])
    with pytest.raises(ValueError, match="condition must be in"):
        norm(x, torch.tensor([0, 3]))
    stack = AdaptiveMambaStack(16, 1, num_conditions=2, d_state=8)
    z = torch.randn(1, 5, 16)
    # both conditions start as a plain LayerNorm...
    torch.testing.assert_close(
        stack(z, torch.tensor([0])), stack(z, torch.tensor([1]))
    )
    with torch.no_grad():
        stack.norms[0].affine.weight[1, 16:] = 0.5
    # ...and diverge once condition 1 learns its own bias
    assert not torch.allclose(
        stack(z, torch.tensor([0])), stack(z, torch.tensor([1]))
    )


def test_packing_round_trip():
    text = torch.randn(2, 4, 3)
    audio = torch.randn(2, 5, 3)
    tf, af = torch.tensor([4, 2]), torch.tensor([3, 5])
    packed, total = pack_segments(text, tf, audio, af)
    assert packed.shape == (2, 7, 3) and total.tolist() == [7, 7]
    torch.testing.assert_close(packed[1, :2], text[1, :2])
    torch.testing.assert_close(packed[1, 2:7], audio[1])
    back = unpack_second(packed, tf, 5)
    torch.testing.assert_close(back[0, :3], audio[0, :3])
    torch.testing.assert_close(back[1], audio[1])


def test_sizes_have_similar_parameter_counts():
    counts = {}
    for kind in ("valle", "vallm"):
        ar, nar = build_codec_lm(kind, "small", num_symbols=100)
        counts[kind] = (count_parameters(ar), count_parameters(nar))
    for index in range(2):
        ratio = counts["vallm"][index] / counts["valle"][index]
        assert 0.9 < ratio < 1.2, counts


@pytest.mark.parametrize("name", ["valle", "vallm"])
def test_model_definition_yamls_build(name):
    from pathlib import Path

    from hyperpyyaml import load_hyperpyyaml

    path = Path(__file__).parents[1] / "hparams" / "tts" / f"{name}.yaml"
    small = {"d_model": 32, "num_layers": 1, "num_symbols": 20}
    if name == "valle":
        small.update(nhead=2, d_ffn=64)
    with open(path) as fin:
        hp = load_hyperpyyaml(fin, small)
    backbone = "mamba" if name == "vallm" else "transformer"
    assert hp["ar"].backbone_type == hp["nar"].backbone_type == backbone
    assert hp["nar"].num_codebooks == 8 and hp["ar"].codebook_size == 1024


@pytest.mark.parametrize("name", ["transformer", "mamba"])
def test_decoding_state_reorder_follows_beams(name):
    ar = tiny_ar(name)
    phonemes, codes, pf, _ = padded_batch()
    phonemes, codes, pf = phonemes[:2], codes[:2], pf[:2]
    prompt_frames = torch.tensor([3, 2])
    index = torch.tensor([1, 1, 0])
    with torch.no_grad():
        _, state = ar.start(phonemes, pf, codes[:, :3], prompt_frames)
        ar.step(codes[:, 4], state)
        state = state.reorder(index)
        continued = ar.step(codes[index, 5], state)
        _, fresh = ar.start(
            phonemes[index], pf[index], codes[index, :3], prompt_frames[index]
        )
        ar.step(codes[index, 4], fresh)
        expected = ar.step(codes[index, 5], fresh)
    torch.testing.assert_close(continued, expected, atol=ATOL, rtol=1e-4)
