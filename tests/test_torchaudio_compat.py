"""`import speechbrain_mamba` makes `import speechbrain` work even when
torchaudio's native extension cannot load next to the installed PyTorch
(CPU torch + CUDA torchaudio wheel)."""

import subprocess
import sys
import textwrap

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
