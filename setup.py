"""Build script: the metadata lives in setup.cfg; this adds acme's install guard.

esi-acme installs the same import package ``acme``. Uninstalling it after acme deletes
acme's ``__init__.py`` (both distributions list that file), so no code of acme's package
runs any more to say what happened. An install therefore also gets, next to the package,
``acme-install-guard.pth`` and ``_acme_install_guard.py`` (a copy of
``acme/_install_guard.py``): at interpreter start the guard watches ``import acme`` and
turns a broken or mixed ``acme`` folder into an ImportError that says which pip commands
repair it. The guard looks only at ``import acme``; uninstalling acme removes it.
An editable install (``pip install -e .``) gets no guard: its files stay in the checkout,
where no other distribution's uninstall can delete them.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

GUARD_MODULE = "_acme_install_guard"
GUARD_PTH = "acme-install-guard.pth"


class build_py_with_guard(build_py):
    """build_py that also writes the install guard into the build folder (so into the
    wheel, next to ``acme/``)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # copies nothing (see the docstring)
            return
        build_lib = Path(self.build_lib)
        shutil.copyfile(build_lib / "acme" / "_install_guard.py",
                        build_lib / f"{GUARD_MODULE}.py")
        # site.py executes a .pth line that starts with "import"
        (build_lib / GUARD_PTH).write_text(
            f"import {GUARD_MODULE}; {GUARD_MODULE}.install_guard()\n")

    def get_outputs(self, include_bytecode=True):
        if getattr(self, "editable_mode", False):
            return super().get_outputs(include_bytecode)
        build_lib = Path(self.build_lib)
        return super().get_outputs(include_bytecode) + [
            str(build_lib / f"{GUARD_MODULE}.py"), str(build_lib / GUARD_PTH)]


setup(cmdclass={"build_py": build_py_with_guard})
