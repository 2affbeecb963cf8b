"""Run the Triton kernels on the CPU through Triton's interpreter.

``triton.jit`` decides at decoration time whether a function is interpreted, and the launch
path reads the variable again, so ``TRITON_INTERPRET=1`` is set while ``fp4train.kernels`` is
(re)imported here and, through ``monkeypatch``, during each test of this directory only: other
test directories in the same pytest process see the environment they started with.
"""

import importlib
import os
import sys

import pytest

# in import order: a module is reloaded after the ones whose jitted functions it calls
_KERNEL_MODULES = (
    "fp4train.kernels.triton_common",
    "fp4train.kernels.quantize",
    "fp4train.kernels.fp8",
    "fp4train.kernels.mx_fp8",
    "fp4train.kernels.gemm",
    "fp4train.kernels.transpose",
)


def _import_interpreted() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in _KERNEL_MODULES:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_import_interpreted()


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
