"""Regional compilation (``compile_blocks``): the blocks are compiled, the quantized layers and the
Mamba-2 scan are not, and the compiled model computes what the eager one does. Dynamo's ``eager``
backend (graph capture without Inductor) keeps the test fast and the numerics the same."""

import copy

import torch

from fp4train.convert import convert
from fp4train.linear import QuantLinear
from fp4train.models import build_model
from fp4train.models.compile import compile_blocks
from fp4train.models.mamba2 import Mamba2Mixer, RMSNorm
from fp4train.recipes import RecipeConfig


def _spy(monkeypatch, cls, method, seen):
    """Record, at every call of ``cls.method``, whether Dynamo is tracing it."""
    original = getattr(cls, method)

    def spy(self, *args, **kwargs):
        seen.append(torch.compiler.is_compiling())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)


def test_blocks_compile_with_quantized_layers_and_the_scan_left_eager(monkeypatch):
    torch.manual_seed(0)
    model = build_model("hybrid_lm", "micro", pattern="M*-", d_model=64, mamba_head_dim=8, mamba_d_state=16)
    convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0))
    idx = torch.randint(0, 256, (2, 24))
    want = model(idx)
    seen = {"quant": [], "mix": [], "norm": []}
    _spy(monkeypatch, QuantLinear, "forward", seen["quant"])
    _spy(monkeypatch, Mamba2Mixer, "mix", seen["mix"])
    _spy(monkeypatch, RMSNorm, "forward", seen["norm"])
    torch._dynamo.reset()
    compile_blocks(model, eager=(QuantLinear,), backend="eager")
    got = model(idx)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert seen["quant"] and not any(seen["quant"])  # every quantized GEMM ran outside Dynamo
    assert seen["mix"] and not any(seen["mix"])
    assert any(seen["norm"])  # the block norms were traced: the blocks are compiled
    got.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    copied = copy.deepcopy(model)  # the eager methods are bound to their module, and so to its copy
    assert copied.blocks[0].mixer.mix.__self__ is copied.blocks[0].mixer
