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


def _hybrid_lm_formula(cfg) -> int:
    """Parameters of a hybrid LM counted from its config, layer by layer (independent of the modules)."""
    d, heads = cfg.d_model, cfg.mamba_n_heads
    d_inner, gn = heads * cfg.mamba_head_dim, cfg.mamba_n_groups * cfg.mamba_d_state
    conv = d_inner + 2 * gn
    per_layer = {
        "M": d * (d_inner + conv + heads) + conv * (cfg.mamba_d_conv + 1) + 3 * heads + d_inner + d_inner * d,
        "*": d * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads),
        "-": 2 * d * (cfg.ffn_dim or 4 * d),
    }
    blocks = sum(per_layer[c] + d for c in cfg.layer_pattern)  # + each block's RMSNorm
    return blocks + 2 * cfg.vocab_size * d + d  # embedding, lm_head, final norm


# the counts stated in hybrid_lm.py's SIZES comment
HYBRID_LM_PARAMS = {"micro": 1_124_480, "tiny": 18_044_416, "small": 123_213_536, "base": 367_165_408, "1b": 1_115_442_368}


@pytest.mark.parametrize("size", list(HYBRID_LM_PARAMS))
def test_hybrid_lm_sizes_have_the_stated_parameter_counts(size):
    model = _meta("hybrid_lm", size)
    count = sum(p.numel() for p in model.parameters())
    assert count == _hybrid_lm_formula(model.config) == HYBRID_LM_PARAMS[size]
    assert sorted(HYBRID_LM_PARAMS) == sorted(REGISTRY["hybrid_lm"][2])


def test_hybrid_lm_base_and_1b_are_about_350m_and_1b_parameters():
    assert 330e6 < HYBRID_LM_PARAMS["base"] < 380e6 and 0.95e9 < HYBRID_LM_PARAMS["1b"] < 1.2e9


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
