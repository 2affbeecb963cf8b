"""The method seam (``fp4train.methods``): docs/methods.md's worked example is a method that
registers and trains through the entry point, registration refuses clashes, and no core module
names a method."""

import importlib
import pkgutil
import re
import sys
import types

import pytest
import torch
import torch.nn as nn

from fp4train import fake_quantize, methods
from fp4train.convert import convert
from fp4train.methods.tetrajet import TetraJetOptions
from fp4train.recipes import RecipeConfig, RecipeDefaults, build_recipe
from tests.train.conftest import REPO, TINY_VIT, read_metrics, run_main

EXAMPLE = re.compile(r"```python\n(# fp4train/methods/rmsclip/__init__\.py\n.*?)```", re.S)


@pytest.fixture
def rmsclip(monkeypatch):
    """docs/methods.md's example, run as a module and registered for the test."""
    module = types.ModuleType("rmsclip_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = EXAMPLE.search((REPO / "docs" / "methods.md").read_text())[1]
    exec(compile(code, "docs/methods.md", "exec"), module.__dict__)
    methods.register(module.METHOD)
    yield module
    methods.unregister("rmsclip")


def test_the_documented_example_trains_two_steps_through_the_entry_point(rmsclip, tmp_path):
    run_main(*TINY_VIT, "quant.name=mxfp4_rmsclip", "++quant.methods.rmsclip.clip=2.5", "trainer.max_steps=2",
             f"hydra.run.dir={tmp_path}")
    assert "Conversion to recipe 'mxfp4_rmsclip': 8 of 9" in (tmp_path / "conversion.md").read_text()
    assert sorted(read_metrics(tmp_path, "train/loss")) == [0, 1]
    # the method's callback, after each step; qkv's input is layer-normed (RMS ≈ 1): the bound is ≈ clip
    bounds = read_metrics(tmp_path, "rmsclip/blocks.0.attn.qkv/bound")
    assert sorted(bounds) == [1, 2] and all(b == pytest.approx(2.5, rel=0.01) for b in bounds.values())


def test_the_documented_example_clips_forward_and_masks_backward(rmsclip):
    recipe = build_recipe(RecipeConfig("mxfp4_rmsclip", methods={"rmsclip": {"clip": 2}}))
    assert recipe.method == "rmsclip" and recipe.options == rmsclip.RMSClipOptions(clip=2.0)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(64, 32)])
    convert(model, recipe)
    layer = model.blocks[0]
    assert type(layer) is rmsclip.RMSClipLinear
    x = torch.randn(16, 64)
    x[0, 0] = 100.0  # clipped
    x.requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    bound = 2 * x.detach().square().mean().sqrt()
    w = fake_quantize(layer.weight.detach(), recipe.w_fprop)
    expected = fake_quantize(x.detach().clamp(-bound, bound), recipe.x_fprop) @ w.T + layer.bias.detach()
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)
    assert x.grad[0, 0] == 0 and (x.grad[1:] != 0).any()
    layer.high_precision = frozenset({"fprop"})  # a precision schedule's switch: nothing is clipped
    x.grad = None
    layer(x).sum().backward()
    assert x.grad[0, 0] != 0
    with pytest.raises(ValueError, match="clip must be > 0, got -1"):
        build_recipe(RecipeConfig("mxfp4_rmsclip", methods={"rmsclip": {"clip": -1}}))


def test_a_method_may_not_take_another_methods_recipe_names():
    clash = methods.Method(name="clash", options=TetraJetOptions,
                           recipes={"tetrajet_qema": (RecipeDefaults("mxfp4", "mxfp4"), TetraJetOptions())})
    with pytest.raises(ValueError, match=r"method 'clash' names recipes \['tetrajet_qema'\], which method 'tetrajet' names"):
        methods.register(clash)
    assert "clash" not in methods.registered()


def test_a_method_options_node_refuses_unknown_options_and_wrong_types():
    with pytest.raises(ValueError, match=r"method 'tetrajet' has no option 'q_ema_decy'; valid: \['q_ema_decay'"):
        build_recipe(RecipeConfig("tetrajet_qema", methods={"tetrajet": {"q_ema_decy": 0.9}}))
    with pytest.raises(ValueError, match=r"quant.methods.tetrajet.q_ema_warmup: Value 'soon'"):
        build_recipe(RecipeConfig("tetrajet_qema", methods={"tetrajet": {"q_ema_warmup": "soon"}}))
    with pytest.raises(ValueError, match=r"quant.methods.tetrajett sets options of an unknown method; valid: \['quartet', 'tetrajet'\]"):
        build_recipe(RecipeConfig("tetrajet_qema", methods={"tetrajett": {"q_ema_decay": 0.9}}))


def _names_of_methods() -> set[str]:
    """Every name a package under fp4train/methods/ gives: its own, its public names and, where it
    defines a method, the method's and its recipes'."""
    names = set()
    for info in pkgutil.iter_modules(methods.__path__, "fp4train.methods."):
        package = importlib.import_module(info.name)
        names |= {info.name.rpartition(".")[2], *getattr(package, "__all__", ())} - {"METHOD"}
        if hasattr(package, "METHOD"):
            names |= {package.METHOD.name, *package.METHOD.recipes}
    return names


def test_no_core_module_names_a_method():
    """The modules at fp4train's top level ask ``fp4train.methods``; they may cite a method's paper
    by section (``TetraJet §3``) for a core switch it introduced, and name nothing else of it."""
    names = _names_of_methods()
    assert {"tetrajet", "tetrajet_qema", "QEMALinear", "QRamping", "attach_tetrajet"} <= names
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, sorted(names)))})\b(?!\s*\(?§)", re.I)
    core = sorted(p for p in (REPO / "fp4train").glob("*.py"))
    assert {p.stem for p in core} >= {"recipes", "convert", "optim", "train", "lit", "distributed", "linear"}
    found = [f"{p.name}:{i}: {line.strip()}" for p in core for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []
