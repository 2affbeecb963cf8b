"""build_model registry: every named size, quantizable GEMM shapes, the blocks contract, errors."""

import pytest
import torch
from torch import nn

from fp4train.models import REGISTRY, build_model, param_count_table

NAMED = [(name, size) for name, (_, _, sizes) in REGISTRY.items() for size in sizes]
GEMM_NAMES = {
    "vit": {"qkv", "proj", "fc1", "fc2"},
    "hybrid_lm": {"in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"},
}


def _meta(name, size):
    with torch.device("meta"):
        return build_model(name, size)


@pytest.mark.parametrize("name, size", NAMED)
def test_every_named_size_builds_on_meta(name, size):
    model = _meta(name, size)
    assert all(p.is_meta for p in model.parameters())
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) > 0


@pytest.mark.parametrize("name, size", NAMED)
def test_block_linears_fit_nvfp4_and_mxfp4_blocks_in_all_three_gemms(name, size):
    # MXFP4 blocks of 32 run along the reduction dim: in_features in fprop, out_features in dgrad
    model = _meta(name, size)
    linears = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    if name == "hybrid_lm":
        linears.append(model.lm_head)
    for m in linears:
        assert m.in_features % 32 == 0 and m.out_features % 32 == 0, m


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_gemm_projection_is_an_nn_linear_inside_blocks(name):
    model = build_model(name)
    leaf_names = {n.rsplit(".", 1)[-1] for n, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}
    assert leaf_names == GEMM_NAMES[name]
    head = model.head if name == "vit" else model.lm_head
    assert isinstance(head, nn.Linear)
    block_params = {id(p) for p in model.blocks.parameters()}
    assert all(id(p) not in block_params for p in head.parameters())


def test_hybrid_lm_small_is_about_125m_parameters():
    model = _meta("hybrid_lm", "small")
    assert 115e6 < sum(p.numel() for p in model.parameters()) < 135e6


def test_param_count_table_has_a_row_per_named_size():
    table = param_count_table()
    for name, size in NAMED:
        assert f"| {name} | {size} |" in table


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("resnet",), {}, r"unknown model 'resnet'; valid: \['hybrid_lm', 'vit'\]"),
        (("vit", "huge"), {}, r"unknown size 'huge' for model 'vit'; valid: \['micro', 'tiny', 'small'\]"),
        (("vit",), {"depht": 3}, r"unknown ViTConfig fields \['depht'\]; valid: .*'depth'"),
    ],
)
def test_unknown_name_size_or_field_error_lists_valid_choices(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(*args, **kwargs)


def test_overrides_replace_named_size_fields():
    model = build_model("hybrid_lm", "micro", pattern="M-", d_model=64)
    assert len(model.blocks) == 2 and model.embedding.embedding_dim == 64
