"""Both models train a few steps on CPU under every recipe, and the conversion table says
which layers were quantized."""

import pytest
import torch
import torch.nn.functional as F

from fp4train.convert import convert
from fp4train.linear import QuantLinear
from fp4train.models import build_model
from fp4train.recipes import RecipeConfig

RECIPES = ["bf16", "fp8", "mxfp4", "nvfp4", "tetrajet_qema"]


def batch(name: str, g: torch.Generator):
    if name == "vit":
        return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    tokens = torch.randint(0, 256, (4, 33), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", ["vit", "hybrid_lm"])
def test_model_trains_under_recipe_and_reports_its_conversion(name, recipe):
    torch.manual_seed(0)
    model = build_model(name, "micro")
    report = convert(model, RecipeConfig(name=recipe, bf16_first_blocks=0, bf16_last_blocks=1))
    n_quant = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert len(report.quantized) == n_quant
    assert (n_quant == 0) == (recipe == "bf16")
    table = str(report)
    assert f"{n_quant} of " in table and "| module |" in table
    if recipe != "bf16":
        assert "last 1 blocks in BF16" in table
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    if recipe.startswith("tetrajet"):
        from fp4train.methods.tetrajet import attach_tetrajet

        attach_tetrajet(model, opt)
    g = torch.Generator().manual_seed(1)
    x, y = batch(name, g)
    losses = []
    for _ in range(4):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
