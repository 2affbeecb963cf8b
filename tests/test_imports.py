"""Every module imports on the CPU, the GPU-only ones included (the CPU tests never reach
the kernels through ``fp4train.dispatch``, so a broken GPU module would pass them)."""

import importlib
import pkgutil

import pytest

import fp4train

MODULES = [m.name for m in pkgutil.walk_packages(fp4train.__path__, "fp4train.") if not m.name.endswith("__main__")]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
