"""BF16 blocks scaled to the model's depth: the NVFP4 paper's first 2 / last 8 of 62 blocks on
models of any depth, exact counts when the user sets them, and an error that names the fix."""

import pytest
import torch.nn as nn

from fp4train.convert import bf16_block_counts, convert
from fp4train.errors import ConfigError
from fp4train.linear import QuantLinear
from fp4train.models import build_model
from fp4train.recipes import RecipeConfig, build_recipe


class Stack(nn.Module):
    """``n`` blocks of one linear each, and a head outside them."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 32)) for _ in range(n))
        self.head = nn.Linear(32, 10)


@pytest.mark.parametrize(
    "n_blocks, expected",
    # max(1, round(k·n/62)) for k = 2, 8; the first group gives way where nothing would be quantized
    [(1, (0, 0)), (2, (0, 1)), (3, (1, 1)), (4, (1, 1)), (9, (1, 1)), (12, (1, 2)), (31, (1, 4)), (62, (2, 8)), (124, (4, 16))],
)
def test_nvfp4_default_bf16_blocks_scale_with_depth(n_blocks, expected):
    assert bf16_block_counts(build_recipe("nvfp4"), n_blocks) == expected


@pytest.mark.parametrize("n_blocks", range(1, 70))
def test_default_bf16_blocks_leave_at_least_one_block_quantized(n_blocks):
    model = Stack(n_blocks)
    report = convert(model, "nvfp4")
    quantized_blocks = {i for i, b in enumerate(model.blocks) if isinstance(b[0], QuantLinear)}
    first, last = report.bf16_first_blocks, report.bf16_last_blocks
    assert quantized_blocks == set(range(first, n_blocks - last)) and quantized_blocks


def test_user_counts_are_exact_and_the_unset_one_is_scaled():
    recipe = build_recipe(RecipeConfig(name="nvfp4", bf16_last_blocks=0))
    assert bf16_block_counts(recipe, 9) == (1, 0) and bf16_block_counts(recipe, 62) == (2, 0)
    recipe = build_recipe(RecipeConfig(name="nvfp4", bf16_first_blocks=3, bf16_last_blocks=5))
    assert bf16_block_counts(recipe, 9) == (3, 5) and bf16_block_counts(recipe, 62) == (3, 5)
    assert bf16_block_counts(build_recipe("mxfp4"), 9) == (0, 0)  # no BF16 blocks by default


@pytest.mark.parametrize("name, size, quantized", [("hybrid_lm", "micro", 16), ("vit", "micro", 8)])
def test_nvfp4_defaults_quantize_the_micro_models(name, size, quantized):
    # before: 2 + 8 BF16 blocks covered the hybrid LM's 9 and the ViT's 4, and convert raised
    report = convert(build_model(name, size), "nvfp4")
    assert len(report.quantized) == quantized
    assert "last 1 blocks in BF16 (8 of 62 scaled to the model)" in str(report)


def test_the_error_names_the_override_that_quantizes_something():
    with pytest.raises(ConfigError) as info:
        convert(Stack(9), RecipeConfig(name="nvfp4", bf16_first_blocks=2, bf16_last_blocks=8))
    message = str(info.value)
    assert "quantized none of the model's 10 linear layers (9 blocks; bf16_first_blocks=2, bf16_last_blocks=8)" in message
    assert "quant.bf16_first_blocks=0 quant.bf16_last_blocks=8" in message
    convert(Stack(9), RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=8))  # that override works


def test_the_error_points_at_include_exclude_when_blocks_are_not_the_cause():
    with pytest.raises(ConfigError, match="check include/exclude"):
        convert(Stack(9), RecipeConfig(name="nvfp4", include=["nothing_matches"]))
