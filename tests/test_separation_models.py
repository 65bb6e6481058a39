"""Tests of the separation models: Mamba-TasNet mask network, DPMamba block,
paper sizes, YAML definitions and survival of the Mamba initialisation
through SpeechBrain's recipe re-initialisation."""

import copy
import io
import math
from pathlib import Path

import pytest
import ruamel.yaml
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.lobes.models.dual_path import (
    Decoder,
    Dual_Path_Model,
    Encoder,
)

from speechbrain_mamba.lobes.dpmamba import DPMambaBlock
from speechbrain_mamba.lobes.mamba_tasnet import (
    MAMBA_TASNET_SIZES,
    MambaTasNetMaskNet,
)
from speechbrain_mamba.nnet import BiMamba, Mamba
from speechbrain_mamba.separation.brain import reset_layer_recursively

ROOT = Path(__file__).resolve().parents[1]
TOP = ROOT / "hparams" / "separation"
RECIPES = [ROOT / "recipes" / d / "separation" for d in ("WSJ0Mix", "LibriMix")]

PAPER_PARAMS_M = {
    **{f"mamba_tasnet_{k}": v.params_m for k, v in MAMBA_TASNET_SIZES.items()},
    "dpmamba_XS": 2.3,
    "dpmamba_S": 8.1,
    "dpmamba_M": 15.9,
    "dpmamba_L": 59.8,
}


def _count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_paper_parameter_counts(name):
    """Encoder + mask network + decoder sizes of the model-only YAMLs."""
    with open(TOP / f"{name}.yaml", encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin)
    total = _count(hp["Encoder"], hp["MaskNet"], hp["Decoder"])
    expected = PAPER_PARAMS_M[name] * 1e6
    assert abs(total - expected) / expected < 0.02, (name, total)


@pytest.mark.parametrize("size", sorted(MAMBA_TASNET_SIZES))
def test_model_yaml_matches_the_size_table(size):
    """hparams/separation/mamba_tasnet_<size>.yaml builds the table's size."""
    with open(TOP / f"mamba_tasnet_{size}.yaml", encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin)
    channels, num_layers, _ = MAMBA_TASNET_SIZES[size]
    assert hp["N_encoder_out"] == hp["out_channels"] == channels
    assert len(hp["MaskNet"].mamba_net.layers) == num_layers


def _model_nodes(path):
    """Encoder / MaskNet / Decoder YAML subtrees with references resolved."""
    with open(path, encoding="utf-8") as fin:
        text = resolve_references(fin, {"data_folder": "/x"}).getvalue()
    doc = ruamel.yaml.YAML().load(io.StringIO(text))

    def plain(node):
        if isinstance(node, dict):
            tag = getattr(getattr(node, "tag", None), "value", None)
            return (tag, {k: plain(v) for k, v in node.items()})
        if isinstance(node, list):
            return [plain(v) for v in node]
        return node

    return {k: plain(doc[k]) for k in ("Encoder", "MaskNet", "Decoder")}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_recipe_models_equal_model_definitions(recipe, name):
    """Each recipe YAML defines the same model as the top-level YAML."""
    assert _model_nodes(recipe / "hparams" / f"{name}.yaml") == _model_nodes(
        TOP / f"{name}.yaml"
    )


def test_masknet_contract_with_speechbrain_encoder_decoder():
    encoder = Encoder(kernel_size=16, out_channels=32)
    masknet = MambaTasNetMaskNet(32, out_channels=24, num_layers=2, num_spks=3)
    decoder = Decoder(
        in_channels=32, out_channels=1, kernel_size=16, stride=8, bias=False
    )
    mix = torch.randn(2, 800)
    mix_w = encoder(mix)
    masks = masknet(mix_w)
    assert masks.shape == (3, 2, 32, mix_w.shape[-1])
    assert (masks >= 0).all()
    est = decoder(mix_w.unsqueeze(0)[0] * masks[1])
    assert est.shape == (2, 800)


def test_masknet_matches_its_formulation():
    """Forward equals LayerNorm -> 1x1 conv -> MambaStack -> 1x1 conv ->
    ReLU, computed step by step from the sub-modules."""
    net = MambaTasNetMaskNet(12, out_channels=8, num_layers=2, num_spks=2)
    x = torch.randn(2, 12, 30)
    y = F.layer_norm(
        x.transpose(1, 2),
        (12,),
        net.layer_norm.weight,
        net.layer_norm.bias,
        1e-8,
    )
    y = y @ net.bottleneck_conv1x1.weight[:, :, 0].t()
    y = net.mamba_net(y)
    scores = y @ net.mask_conv1x1.weight[:, :, 0].t()  # [B, L, 2 * 12]
    expected = F.relu(scores.view(2, 30, 2, 12).permute(2, 0, 3, 1))
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)


def test_masknet_padding_matches_single_items():
    net = MambaTasNetMaskNet(8, num_layers=2).eval()
    a, b = torch.randn(1, 8, 40), torch.randn(1, 8, 25)
    batch = torch.cat([a, F.pad(b, (0, 15))], dim=0)
    out = net(batch, lengths=torch.tensor([1.0, 25 / 40]))
    torch.testing.assert_close(out[:, :1], net(a), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 1:, :, :25], net(b), rtol=1e-5, atol=1e-6)
    assert torch.all(out[:, 1:, :, 25:] == 0)


def test_masknet_rejects_bad_input():
    net = MambaTasNetMaskNet(8, num_layers=1)
    with pytest.raises(ValueError, match="N=8"):
        net(torch.randn(2, 9, 10))
    with pytest.raises(ValueError, match="mask_activation"):
        MambaTasNetMaskNet(8, mask_activation="tanh")


def test_masknet_softmax_masks_sum_to_one():
    net = MambaTasNetMaskNet(8, num_layers=1, mask_activation="softmax")
    masks = net(torch.randn(1, 8, 12))
    torch.testing.assert_close(masks.sum(0), torch.ones(1, 8, 12))


def test_dpmamba_in_dual_path_model_with_deepcopy():
    block = DPMambaBlock(1, 16)
    model = Dual_Path_Model(
        16,
        16,
        block,
        copy.deepcopy(block),
        num_layers=2,
        K=10,
        linear_layer_after_inter_intra=False,
        skip_around_intra=False,
    )
    out = model(torch.rand(2, 16, 37))
    assert out.shape == (2, 2, 16, 37)
    # the dual-path layers hold independent copies of the blocks
    first = model.dual_mdl[0].intra_mdl.mdl.layers[0].mixer.in_proj.weight
    second = model.dual_mdl[1].intra_mdl.mdl.layers[0].mixer.in_proj.weight
    assert first.data_ptr() != second.data_ptr()
    # the block is the bidirectional stack
    x = torch.randn(3, 11, 16)
    torch.testing.assert_close(block(x), block.mdl(x))
    assert isinstance(block.mdl.layers[0].mixer, BiMamba)
    with pytest.raises(ValueError, match="DPMambaBlock expects"):
        block(torch.randn(3, 11, 15))


def _mixers(module):
    return [m for m in module.modules() if isinstance(m, Mamba)]


def speechbrain_recipe_reset(layer):
    """The re-initialisation of SpeechBrain's separation recipe
    (``Separation.reset_layer_recursively`` in recipes/WSJ0Mix/separation/
    train.py), written out here to test against it directly."""
    if hasattr(layer, "reset_parameters"):
        layer.reset_parameters()
    for child_layer in layer.modules():
        if layer != child_layer:
            speechbrain_recipe_reset(child_layer)


def _assert_mamba_init(module, dt_min=0.001, dt_max=0.1):
    mixers = _mixers(module)
    assert mixers
    for mixer in mixers:
        suffixes = ["", "_b"] if isinstance(mixer, BiMamba) else [""]
        for s in suffixes:
            dt = F.softplus(getattr(mixer, f"dt_proj{s}").bias.detach())
            assert dt.min() >= dt_min * (1 - 1e-4)
            assert dt.max() <= dt_max * (1 + 1e-4)
            assert dt.std() > 0  # random, not a constant reset value
            A_log = getattr(mixer, "A_log" if s == "" else "A_b_log")
            expected = torch.log(
                torch.arange(1, mixer.d_state + 1, dtype=torch.float32)
            ).expand_as(A_log)
            torch.testing.assert_close(A_log.detach(), expected)
            torch.testing.assert_close(
                getattr(mixer, f"D{s}").detach(), torch.ones_like(A_log[:, 0])
            )


@pytest.mark.parametrize("name", ["mamba_tasnet_S", "dpmamba_S"])
@pytest.mark.parametrize(
    "reset", [speechbrain_recipe_reset, reset_layer_recursively]
)
def test_mamba_init_survives_recipe_reset(name, reset):
    overrides = {
        "data_folder": "/x",
        "N_encoder_out": 16,
        "out_channels": 16,
        "num_layers": 2,
    }
    path = RECIPES[0] / "hparams" / f"{name}.yaml"
    with open(path, encoding="utf-8") as fin:
        hp = load_hyperpyyaml(fin, overrides)
    modules = hp["modules"]
    # Damage the Mamba parameters, so that only a real re-init restores them
    with torch.no_grad():
        for mixer in _mixers(modules["masknet"]):
            for p in mixer.parameters():
                p.fill_(0.5)
    before = modules["masknet"].state_dict()
    before = {k: v.clone() for k, v in before.items()}
    for module in modules.values():
        reset(module)
    _assert_mamba_init(modules["masknet"])
    after = modules["masknet"].state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("in_proj" in k for k in changed)
    assert any("dt_proj_b.bias" in k for k in changed)


def test_dt_bias_is_spread_over_the_range():
    """dt is log-uniform in [dt_min, dt_max] after a reset."""
    net = MambaTasNetMaskNet(64, num_layers=1)
    reset_layer_recursively(net)
    dt = F.softplus(net.mamba_net.layers[0].mixer.dt_proj.bias.detach())
    log_dt = torch.log(dt)
    assert log_dt.min() < math.log(0.003) and log_dt.max() > math.log(0.03)
