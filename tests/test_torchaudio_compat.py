"""`import speechbrain` works even when torchaudio's native extension cannot
load next to the installed PyTorch (CPU torch + CUDA torchaudio wheel):
after `import speechbrain_mamba`, and, through the start-up hook that the
install puts into site-packages, in a fresh interpreter that never imports
speechbrain_mamba (SpeechBrain's own recipes with the README's swap)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_speechbrain_imports_after_package():
    result = run_python(
        """
        import speechbrain_mamba
        import speechbrain
        import torchaudio
        from speechbrain.lobes.models.dual_path import Dual_Path_Model
        from speechbrain.inference.separation import SepformerSeparation
        print("OK", speechbrain.__version__)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


def test_fallback_recovers_from_a_native_library_that_fails_to_load():
    # Simulate the broken wheel wherever the tests run: make torchaudio's
    # extension loader raise OSError like a missing libc10_cuda.so does.
    result = run_python(
        """
        import sys
        try:
            import torchaudio  # a healthy install: break it on purpose
            healthy = True
        except OSError:  # this machine's CPU torch + CUDA torchaudio
            healthy = False
        if healthy:
            utils = sys.modules["torchaudio._extension.utils"]
            for name in list(sys.modules):
                if name.startswith("torchaudio") and name != utils.__name__:
                    del sys.modules[name]
            def broken(lib):
                raise OSError("libc10_cuda.so: cannot open shared object")
            utils._load_lib = broken
        from speechbrain_mamba.utils import torchaudio_compat
        ta = torchaudio_compat.import_torchaudio()
        assert ta is sys.modules["torchaudio"]
        assert isinstance(torchaudio_compat.NATIVE_EXTENSION_ERROR, OSError)
        import speechbrain
        print("OK")
        """
    )
    if "ModuleNotFoundError" in result.stderr and "torchaudio" in result.stderr:
        pytest.skip("torchaudio is not installed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


# --- The start-up hook: `import speechbrain` works without importing
# speechbrain_mamba first (SpeechBrain's own recipes never import it before
# speechbrain).


def installed_hook_file():
    """The installed speechbrain_mamba.pth, or None (not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("speechbrain-mamba")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == "speechbrain_mamba.pth":
            return dist.locate_file(file)
    return None


def test_the_install_puts_the_startup_hook_into_site_packages():
    hook = installed_hook_file()
    assert hook is not None, "speechbrain_mamba.pth is not in the install"
    assert hook.exists()
    import _speechbrain_mamba_startup

    assert "_speechbrain_mamba_startup" in hook.read_text()
    assert callable(_speechbrain_mamba_startup.install)


def test_speechbrain_imports_in_a_fresh_interpreter_without_the_package():
    result = run_python(
        """
        import sys
        import speechbrain
        from speechbrain.inference.separation import SepformerSeparation
        import torchaudio
        assert "speechbrain_mamba" not in sys.modules
        print("OK", speechbrain.__version__)
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


def test_hook_changes_torchaudio_only_when_its_extension_fails():
    result = run_python(
        """
        import sys
        import torchaudio
        import _speechbrain_mamba_startup as hook
        utils = sys.modules["torchaudio._extension.utils"]
        wrapped = hasattr(utils._load_lib, "__wrapped__")
        failed = hook.NATIVE_EXTENSION_ERROR is not None
        assert wrapped == failed, (wrapped, failed)
        assert not any(
            isinstance(f, hook.TorchaudioFinder) for f in sys.meta_path
        ), "the finder must remove itself after torchaudio's import"
        assert type(torchaudio.__loader__).__name__ != "_TolerantLoader"
        print("FAILED" if failed else "HEALTHY")
        """
    )
    if "ModuleNotFoundError" in result.stderr and "torchaudio" in result.stderr:
        pytest.skip("torchaudio is not installed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() in ("FAILED", "HEALTHY")


def test_hook_never_stops_python_and_can_be_turned_off(tmp_path):
    broken = tmp_path / "_speechbrain_mamba_startup.py"
    broken.write_text("raise RuntimeError('broken hook module')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", "print('started')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "started"
    assert "Traceback" not in result.stderr

    check = (
        "import sys, _speechbrain_mamba_startup as h; "
        "print(any(isinstance(f, h.TorchaudioFinder) for f in sys.meta_path))"
    )
    states = {}
    for value in ("0", "1"):
        env = dict(os.environ, SPEECHBRAIN_MAMBA_TORCHAUDIO_HOOK=value)
        out = subprocess.run(
            [sys.executable, "-c", check],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        states[value] = out.stdout.strip()
    assert states == {"0": "False", "1": "True"}


def readme_separation_swap() -> str:
    """The README's Mamba-TasNet YAML swap for SpeechBrain's WSJ0Mix
    recipe, as printed there."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    section = text[text.index("## Swap the model of a SpeechBrain recipe") :]
    for block in section.split("```yaml\n")[1:]:
        block = block.split("```")[0]
        if "MambaTasNetMaskNet" in block:
            return block
    raise AssertionError("README has no MambaTasNetMaskNet YAML swap")


# What SpeechBrain's recipes/WSJ0Mix/separation/train.py does at import and
# in compute_forward, with the entries of its sepformer.yaml that the swap
# uses (small sizes), in a fresh interpreter that never imports
# speechbrain_mamba itself.
RECIPE_STAND_IN = '''
import sys
import torch
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

assert "speechbrain_mamba" not in sys.modules
header = """
num_spks: 2
N_encoder_out: 16
out_channels: 16
kernel_size: 16
kernel_stride: 8
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False
"""
hparams = load_hyperpyyaml(header + open(sys.argv[1]).read())
masknet = hparams["MaskNet"]
assert type(masknet).__name__ == "MambaTasNetMaskNet"
torch.manual_seed(0)
mix = torch.randn(2, 800)
mix_w = hparams["Encoder"](mix)
est_mask = masknet(mix_w)
sep_h = torch.stack([mix_w] * 2) * est_mask
est = torch.cat(
    [hparams["Decoder"](sep_h[i]).unsqueeze(-1) for i in range(2)], dim=-1
)
assert est_mask.shape == (2, 2, 16, mix_w.shape[-1]), est_mask.shape
assert est.shape == (2, 800, 2) and bool(torch.isfinite(est).all())
print("OK", sum(p.numel() for p in masknet.parameters()))
'''


def test_speechbrain_recipe_stand_in_loads_the_readme_swap(tmp_path):
    swap = tmp_path / "swap.yaml"
    swap.write_text(readme_separation_swap())
    script = tmp_path / "train.py"
    script.write_text(RECIPE_STAND_IN)
    result = subprocess.run(
        [sys.executable, str(script), str(swap)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK ")
    assert int(result.stdout.split()[1]) > 0
