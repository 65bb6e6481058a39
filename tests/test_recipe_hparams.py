"""The optional hparams a recipe Brain reads are documented in the recipe
YAML files: every name of SeparationBrain's ``OPTIONAL_HPARAMS`` (the one
table its ``_opt`` takes defaults from) appears, with that default, in a
comment of each separation and enhancement recipe YAML file."""

import math
import re
from pathlib import Path

import pytest
import yaml

import speechbrain_mamba.separation.brain as separation_brain
import speechbrain_mamba.separation.enhancement.recipe as enhancement_recipe
from speechbrain_mamba.separation.brain import OPTIONAL_HPARAMS

ROOT = Path(__file__).resolve().parents[1]
RECIPE_YAMLS = sorted(
    path
    for folder in (
        "recipes/WSJ0Mix/separation/hparams",
        "recipes/LibriMix/separation/hparams",
        "recipes/Voicebank/enhancement/hparams",
    )
    for path in (ROOT / folder).glob("*.yaml")
)


def documented_defaults(path: Path) -> dict:
    """``#   name: value  # what`` comment lines -> {name: parsed value}."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#\s+([a-z_0-9]+): (\S+)  # ", line)
        if match:
            found[match.group(1)] = yaml.safe_load(match.group(2))
    return found


def test_every_option_read_by_the_brains_is_in_the_table():
    for module in (separation_brain, enhancement_recipe):
        source = Path(module.__file__).read_text(encoding="utf-8")
        read = set(re.findall(r'_opt\(\s*"([a-z_0-9]+)"', source))
        assert read and read <= set(OPTIONAL_HPARAMS), module.__name__
        assert not re.search(r"_opt\(\s*\"[^)]*,", source), "default in code"


def test_mamba_tasnet_s_documents_each_optional_hparam():
    path = ROOT / "recipes/WSJ0Mix/separation/hparams/mamba_tasnet_S.yaml"
    text = path.read_text(encoding="utf-8")
    for name in OPTIONAL_HPARAMS:
        assert name in text, name


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.stem)
def test_recipe_yaml_comments_give_the_defaults(path):
    assert len(RECIPE_YAMLS) == 20
    documented = documented_defaults(path)
    for name, default in OPTIONAL_HPARAMS.items():
        assert name in documented, f"{path}: {name} is not documented"
        value = documented[name]
        if isinstance(default, float) and math.isinf(default):
            assert value == math.inf, f"{path}: {name}"
        else:
            assert value == default, f"{path}: {name}: {value!r}"


#: Optional hparams a task package reads -> the recipe folders whose YAML
#: files must name each of them (as a key or in the comment block).
TASKS = {
    ("asr", "data/librispeech_dataio.py"): (
        "LibriSpeech/ASR/S2S",
        "LibriSpeech/ASR/CTC",
    ),
    ("ssl",): ("LibriSpeech/self-supervised-learning",),
    ("tts",): ("LibriTTS/TTS",),
    ("separation",): ("WSJ0Mix/separation", "LibriMix/separation"),
    ("separation/enhancement",): ("Voicebank/enhancement",),
}
#: Set by the recipe code itself, not by the user.
INTERNAL = {"chance_majority"}
OPTIONAL_READ = re.compile(
    r'(?:hparams\.get|getattr\(self\.hparams,|_hp|_opt)\(?\s*"([a-z_0-9]+)"'
)


def optional_reads(sources) -> set:
    package = ROOT / "speechbrain_mamba"
    names = set()
    for source in sources:
        files = [package / source] if source.endswith(".py") else []
        files += sorted((package / source).glob("*.py"))
        for path in files:
            names |= set(OPTIONAL_READ.findall(path.read_text("utf-8")))
    return names - INTERNAL


@pytest.mark.parametrize("sources", list(TASKS), ids=lambda s: s[0])
def test_each_optional_hparam_is_named_in_every_recipe_yaml(sources):
    names = optional_reads(sources)
    assert len(names) >= 4, sources
    for folder in TASKS[sources]:
        paths = sorted((ROOT / "recipes" / folder / "hparams").glob("*.yaml"))
        assert paths, folder
        for path in paths:
            text = path.read_text(encoding="utf-8")
            missing = [
                name
                for name in sorted(names)
                if not re.search(rf"^(#\s+)?{name}:", text, re.MULTILINE)
            ]
            assert not missing, f"{path} does not name {missing}"
