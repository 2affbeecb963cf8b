"""``kernels.launch``: the first call of a signature goes through Triton's normal launch, later
calls with an equal key straight to the compiled kernel it returned, and anything Triton
specializes on (dtype, 16-byte alignment, integer values, constexprs, options) makes a new key.
Runs without a GPU: Triton's launch is replaced by a recorder, the kernel is a real ``JITFunction``."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from fp4train.kernels import launch as launch_module
from fp4train.kernels.launch import launch


@triton.jit(do_not_specialize=["seed"])
def _kernel(x_ptr, n, seed, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), n + seed)


class Recorder:
    """Stands in for Triton: ``kernel[grid](...)`` records a slow launch and returns a compiled
    kernel whose ``[grid](...)`` records a fast one."""

    def __init__(self):
        self.calls = []

    def slow(self, grid):
        def run(*args, **kwargs):
            self.calls.append(("slow", grid, args, kwargs))
            return self

        return run

    def __getitem__(self, grid):
        return lambda *args: self.calls.append(("fast", grid, args))


@pytest.fixture
def triton_launch(monkeypatch):
    assert isinstance(_kernel, JITFunction)
    rec = Recorder()
    monkeypatch.setattr(JITFunction, "__getitem__", rec.slow)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch_module, "_COMPILED", {})
    return rec


def test_second_call_launches_the_compiled_kernel_with_arguments_in_signature_order(triton_launch):
    x = torch.zeros(64, dtype=torch.float32)
    launch(_kernel, (4,), x, 8, 123, FLAG=True, BLOCK=16, num_warps=4)
    launch(_kernel, (4,), x, 8, 456, FLAG=True, BLOCK=16, num_warps=4)  # another seed: not specialized on
    assert [c[0] for c in triton_launch.calls] == ["slow", "fast"]
    assert triton_launch.calls[0][1:] == ((4,), (x, 8, 123), {"FLAG": True, "BLOCK": 16, "num_warps": 4})
    assert triton_launch.calls[1][1:] == ((4, 1, 1), (x, 8, 456, 16, True))


@pytest.mark.parametrize(
    "change",
    ["dtype", "alignment", "int value", "constexpr", "option", "seed range"],
)
def test_whatever_triton_specializes_on_makes_a_new_key(triton_launch, change):
    buf = torch.zeros(64, dtype=torch.uint8)
    args, kw = [buf[:32], 8, 1], dict(BLOCK=16, FLAG=False, num_warps=4)
    launch(_kernel, (1,), *args, **kw)
    if change == "dtype":
        args[0] = torch.zeros(32, dtype=torch.int8)
    elif change == "alignment":
        args[0] = buf[1:33]
    elif change == "int value":
        args[1] = 16
    elif change == "constexpr":
        kw["FLAG"] = True
    elif change == "option":
        kw["num_warps"] = 8
    else:  # an int64 seed would be another Triton signature
        args[2] = 2**40
    launch(_kernel, (1,), *args, **kw)
    assert [c[0] for c in triton_launch.calls] == ["slow", "slow"]


def test_runtime_parameters_by_name_and_missing_constexprs_are_refused(triton_launch):
    x = torch.zeros(16)
    with pytest.raises(TypeError, match="positionally.*'seed'"):
        launch(_kernel, (1,), x, 8, seed=3, BLOCK=16, FLAG=False)
    with pytest.raises(TypeError, match="constexpr 'FLAG'"):
        launch(_kernel, (1,), x, 8, 3, BLOCK=16)
    assert triton_launch.calls == []
