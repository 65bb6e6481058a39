"""Packaging is declared in setup.cfg and pyproject.toml. This file only
puts the start-up hook ``speechbrain_mamba.pth`` at the top level of the
wheel (site-packages once installed), next to the top-level module
``_speechbrain_mamba_startup`` whose ``install()`` it calls; see that
module. ``data_files`` cannot place a file there, so ``build_py`` copies
it: into the build folder for a wheel, and into the editable wheel's root
for ``pip install -e`` (setuptools builds that wheel from the install
folder, whose files a PEP 660 editable install keeps)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

STARTUP_HOOK = "speechbrain_mamba.pth"


class BuildPyWithStartupHook(build_py):
    """``build_py`` that also writes the start-up hook."""

    def _hook_target(self) -> str:
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel points install_lib at the folder
            # it packs into the editable wheel
            root = self.get_finalized_command("install").install_lib
        else:
            root = self.build_lib
        return os.path.join(root, STARTUP_HOOK)

    def run(self):
        super().run()
        target = self._hook_target()
        self.mkpath(os.path.dirname(target))
        self.copy_file(STARTUP_HOOK, target)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [self._hook_target()]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
