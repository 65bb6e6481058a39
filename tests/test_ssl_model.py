"""HuBERT-style model: span masking, CNN front end, the four encoders,
padding invariance, causal streaming, masked-prediction loss."""

from pathlib import Path

import pytest
import torch

from speechbrain_mamba.lobes.ssl.hubert import (
    ENCODER_TYPES,
    ConvFeatureExtractor,
    HuBERTModel,
)
from speechbrain_mamba.lobes.ssl.masking import span_mask
from speechbrain_mamba.ssl.brain import frame_targets
from speechbrain_mamba.utils.parameters import count_parameters

CONV = ((16, 10, 5), (16, 8, 4))  # stride 20, receptive field 45
HPARAMS = (
    Path(__file__).resolve().parents[1]
    / "recipes/LibriSpeech/self-supervised-learning/hparams"
)
MODEL_HPARAMS = Path(__file__).resolve().parents[1] / "hparams" / "ssl"


@pytest.fixture(autouse=True)
def _tiny_cpu_setup(monkeypatch):
    monkeypatch.setenv("SBMAMBA_NUMBA", "0")  # no one-off numba compilation
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(encoder_type="bimamba", causal=False, **kwargs):
    return HuBERTModel(
        num_clusters=7,
        encoder_type=encoder_type,
        causal=causal,
        d_model=16,
        num_layers=2,
        conv_layers=CONV,
        final_dim=8,
        d_state=4,
        nhead=2,
        d_ffn=32,
        kernel_size=3,
        pos_kernel_size=8,
        pos_groups=4,
        dropout=0.0,
        dropout_input=0.0,
        **kwargs,
    ).eval()


def test_span_mask_statistics_and_padding():
    g = torch.Generator().manual_seed(0)
    frames = torch.tensor([400, 200, 1, 30])
    mask = span_mask(frames, 400, mask_prob=0.8, span=10, generator=g)
    assert mask.shape == (4, 400)
    assert not mask[1, 200:].any() and not mask[3, 30:].any()
    assert not mask[2].any()  # one frame: nothing to predict from
    # HuBERT's setting masks about half of the frames
    assert 0.4 < mask[0].float().mean() < 0.65
    assert not mask[3, :30].all()  # something stays visible
    # masks come in spans of at least `span` frames
    runs = torch.diff(torch.nonzero(torch.diff(mask[0].int())).flatten())
    assert (runs[::2] >= 10).all() if mask[0, 0] == 0 else True
    again = span_mask(
        frames, 400, 0.8, 10, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(mask, again)
    assert not span_mask(frames, 400, 0.0).any()
    with pytest.raises(ValueError, match="mask_prob"):
        span_mask(frames, 400, 1.5)


def test_feature_extractor_frames_and_stride():
    cnn = ConvFeatureExtractor(CONV)
    assert cnn.stride == 20 and cnn.receptive_field == 45
    for n in (45, 100, 1234):
        assert cnn(torch.randn(1, n)).shape[1] == cnn.num_frames(n)
    assert cnn(torch.randn(1, 10)).shape[1] == 1  # padded to the field
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        cnn(torch.randn(2, 3, 100))


@pytest.mark.parametrize("encoder_type", ENCODER_TYPES)
def test_encoders_padding_invariance_and_shapes(encoder_type):
    model = tiny(encoder_type)
    wavs = torch.randn(2, 2000)
    lens = torch.tensor([1.0, 0.55])
    out = model(wavs, lens, mask=False)
    assert out.logits.shape == (2, model.num_frames(2000), 7)
    assert out.frames.tolist() == [
        model.num_frames(2000),
        model.num_frames(1100),
    ]
    n = int(out.frames[1])
    alone = model(wavs[1:, :1100])
    torch.testing.assert_close(
        out.hidden[1, :n], alone.hidden[0], atol=1e-5, rtol=1e-4
    )
    assert out.hidden[1, n:].abs().max() == 0
    assert len(model.layer_names()) == 2


@pytest.mark.parametrize("encoder_type", ["mamba", "conmamba", "transformer"])
def test_causal_encoders_do_not_look_ahead(encoder_type):
    model = tiny(encoder_type, causal=True)
    assert model.causal and not model.normalize_wav
    wavs = torch.randn(1, 3000)
    full = model(wavs).hidden
    prefix = model(wavs[:, :1500]).hidden
    n = prefix.shape[1]
    torch.testing.assert_close(full[0, :n], prefix[0], atol=1e-5, rtol=1e-4)
    # a bidirectional model does look ahead
    bi = tiny("bimamba")
    diff = bi(wavs).hidden[0, :n] - bi(wavs[:, :1500]).hidden[0]
    assert diff.abs().max() > 1e-3


def test_bimamba_cannot_be_causal():
    with pytest.raises(ValueError, match="cannot be bidirectional"):
        tiny("bimamba", causal=True)
    with pytest.raises(ValueError, match="encoder_type"):
        tiny("lstm")


def test_masking_replaces_frames_with_mask_embedding():
    model = tiny()
    wavs = torch.randn(2, 2000)
    out = model(wavs, mask=True, generator=torch.Generator().manual_seed(1))
    assert out.mask.any() and not out.mask.all()
    given = torch.zeros_like(out.mask)
    clean = model(wavs, mask=given)
    assert clean.mask is not None and not clean.mask.any()
    torch.testing.assert_close(clean.hidden, model(wavs).hidden)
    assert not torch.allclose(out.hidden, clean.hidden)
    with pytest.raises(ValueError, match="mask must be"):
        model(wavs, mask=torch.zeros(2, 3, dtype=torch.bool))


def test_masked_prediction_learns_a_simple_target():
    """Labels = the tone frequency of long segments: a masked frame's label
    can be read from the visible frames around it."""
    seed = 0
    torch.manual_seed(seed)
    model = tiny(mask_prob=0.4)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    samples, seg = 2000, 40
    frames = model.num_frames(samples)
    g = torch.Generator().manual_seed(seed)

    def batch(size):
        labels = torch.randint(0, 3, (size, frames // seg + 1), generator=g)
        labels = labels.repeat_interleave(seg, dim=1)[:, :frames]
        freq = (0.05 + 0.1 * labels.float()).repeat_interleave(20, dim=1)
        phase = torch.cumsum(2 * torch.pi * freq, dim=1)
        wav = torch.sin(phase) + 0.3 * torch.randn(phase.shape, generator=g)
        wav = torch.nn.functional.pad(wav, (0, samples - wav.shape[1]))
        return wav, labels

    def step(wav, labels, train):
        model.train(train)
        mask_gen = None if train else torch.Generator().manual_seed(1)
        with torch.set_grad_enabled(train):
            out = model(wav, mask=True, generator=mask_gen)
            targets, valid = frame_targets(
                labels, torch.ones(len(wav)), out.frames, out.logits.shape[1]
            )
            sel = out.mask & valid
            loss = torch.nn.functional.cross_entropy(
                out.logits[sel], targets[sel]
            )
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()
        hits = out.logits[sel].argmax(-1) == targets[sel]
        return float(hits.float().mean())

    eval_wav, eval_labels = batch(32)
    before = step(eval_wav, eval_labels, False)
    for _ in range(60):
        step(*batch(8), True)
    after = step(eval_wav, eval_labels, False)
    assert after > 0.7 and after > before + 0.3  # chance is about 1/3


def test_recipe_hparams_have_similar_sizes(tmp_path):
    """The four pretraining configurations load and have 88-97 M
    parameters (HuBERT base: 95 M); the fine-tuning one loads too."""
    from hyperpyyaml import load_hyperpyyaml

    folder = HPARAMS
    counts = {}
    for name in ("bimamba", "mamba_causal", "conmamba", "transformer"):
        with open(folder / f"pretrain_{name}.yaml") as fin:
            hp = load_hyperpyyaml(
                fin,
                {"data_folder": str(tmp_path), "output_folder": str(tmp_path)},
            )
        counts[name] = count_parameters(hp["ssl_model"]) / 1e6
        assert hp["ssl_model"].causal == (name == "mamba_causal")
        del hp
        # the model-only definition in hparams/ssl/ is the same model
        with open(MODEL_HPARAMS / f"hubert_{name}.yaml") as fin:
            model = load_hyperpyyaml(fin)["ssl_model"]
        assert count_parameters(model) / 1e6 == counts[name]
        del model
    assert all(88 < c < 97 for c in counts.values()), counts
    with open(folder / "finetune_ctc.yaml") as fin:
        hp = load_hyperpyyaml(
            fin,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path),
                "pretrained_folder": None,
                "num_layers": 1,
            },
        )
    assert hp["ctc_lin"].w.out_features == hp["output_neurons"]
