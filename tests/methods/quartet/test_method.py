"""Quartet through the method seam: ``quant=quartet`` builds ``QuartetLinear`` layers whose
forward and backward are ``quartet_linear``'s with the layer's device-keyed SR stream, and trains
through the entry point."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fp4train.linear import QuantLinear
from fp4train.methods.quartet import QuartetConfig, QuartetLinear, quartet_linear
from fp4train.quant import SRStream
from fp4train.recipes import RecipeConfig, build_recipe

from ...train.conftest import TINY_LM, read_metrics, run_main


def _layer(n_in: int = 64, n_out: int = 32, **options) -> QuartetLinear:
    torch.manual_seed(0)
    recipe = build_recipe(RecipeConfig(name="quartet", seed=3, methods={"quartet": options}))
    return QuartetLinear.from_linear(nn.Linear(n_in, n_out), recipe, layer_id=2)


def test_the_recipe_carries_quartets_options():
    recipe = build_recipe(RecipeConfig(name="quartet"))
    assert recipe.method == "quartet" and recipe.options == QuartetConfig()
    tuned = build_recipe(RecipeConfig(name="quartet", methods={"quartet": {"scale_stat": "rms", "backward_rht": "fixed"}}))
    assert tuned.options == QuartetConfig(scale_stat="rms", backward_rht="fixed")
    with pytest.raises(ValueError, match="unknown scale_stat 'max'"):
        build_recipe(RecipeConfig(name="quartet", methods={"quartet": {"scale_stat": "max"}}))


def test_the_layer_is_quartet_linear_with_its_step_stream():
    layer = _layer()
    x = torch.randn(40, 64)
    dy = torch.randn(40, 32)

    def step(module):
        xi = x.clone().requires_grad_(True)
        module(xi).backward(dy)
        grads = xi.grad, module.weight.grad.clone(), module.bias.grad.clone()
        module.weight.grad = module.bias.grad = None
        return grads

    first = step(layer)
    assert int(layer.sr_step) == 1
    key = layer._stream_key("dy_dgrad", layer.recipe.spec("dy_dgrad"), 0)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    quartet_linear(xr, w, b, config=QuartetConfig(), seed=SRStream(key, torch.tensor(1))).backward(dy)
    assert torch.equal(first[0], xr.grad) and torch.equal(first[1], w.grad) and torch.equal(first[2], b.grad)
    second = step(layer)  # the counter moved on: new bits
    assert not torch.equal(first[1], second[1])


def test_a_schedule_over_all_gemms_runs_f_linear_and_a_partial_one_is_refused():
    layer = _layer()
    x = torch.randn(8, 64)
    layer.high_precision = frozenset({"fprop", "dgrad", "wgrad"})
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.high_precision = frozenset({"fprop"})
    with pytest.raises(ValueError, match="precision_schedule.scope=all"):
        layer(x)


def test_features_off_the_32_grid_are_named():
    recipe = build_recipe(RecipeConfig(name="quartet"))
    layer = QuartetLinear.from_linear(nn.Linear(48, 32), recipe)
    with pytest.raises(ValueError, match="multiple of 32"):
        layer(torch.randn(4, 48))


# the tiny LM with 32 Mamba heads of 4: in_proj 352 wide, a whole number of 32-blocks
QUARTET_LM = [o.replace("mamba_head_dim=8", "mamba_head_dim=4") for o in TINY_LM]


def test_quant_quartet_trains_through_the_entry_point(tmp_path):
    run_main(*QUARTET_LM, "quant=quartet", f"hydra.run.dir={tmp_path}")
    loss = read_metrics(tmp_path, "train/loss")
    assert sorted(loss) == [0, 1, 2] and all(torch.isfinite(torch.tensor(list(loss.values()))))
    log = (tmp_path / "train.log").read_text()
    assert "Conversion to recipe 'quartet': 6 of 9 linear layers quantized" in log, log[:2000]
    assert "quartet" in (tmp_path / ".hydra" / "config.yaml").read_text()
