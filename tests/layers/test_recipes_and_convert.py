"""Named recipes and their switches; model conversion and its table; precision schedules."""

import pytest
import torch
import torch.nn as nn

from fp4train.convert import convert
from fp4train.linear import QuantLinear
from fp4train.precision_schedule import PrecisionSchedule
from fp4train.recipes import OPERANDS, RECIPE_DEFAULTS, RecipeConfig, build_recipe


def test_nvfp4_recipe_is_nvidias_table():
    r = build_recipe("nvfp4")
    assert [r.spec(o).fmt for o in OPERANDS] == ["nvfp4"] * 6
    assert r.w_fprop.block_shape == r.w_dgrad.block_shape == (16, 16)
    assert r.x_fprop.block_shape == r.dy_dgrad.block_shape == r.dy_wgrad.block_shape == (1, 16)
    assert [r.spec(o).rounding for o in OPERANDS] == ["rn", "rn", "sr", "rn", "sr", "rn"]
    assert [r.spec(o).rht for o in OPERANDS] == [None, None, None, None, 16, 16]
    assert r.dy_wgrad.seed == r.x_wgrad.seed  # the same transform on both Wgrad operands
    assert (r.bf16_first_blocks, r.bf16_last_blocks) == (2, 8)


def test_fp8_recipe_uses_e4m3_forward_and_e5m2_gradients():
    r = build_recipe("fp8")
    assert [r.spec(o).fmt for o in OPERANDS] == ["fp8_e4m3", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3"]


def test_mxfp4_recipe_is_ocp_round_to_nearest_everywhere():
    r = build_recipe("mxfp4")
    assert all(r.spec(o).fmt == "mxfp4" and r.spec(o).rounding == "rn" and r.spec(o).mx_rule == "floor" for o in OPERANDS)


@pytest.mark.parametrize(
    "switch,check",
    [
        ({"rht": False}, lambda r: r.dy_wgrad.rht is None and r.x_wgrad.rht is None),
        ({"rht_size": 32}, lambda r: r.dy_wgrad.rht == 32),
        ({"sr": False}, lambda r: r.dy_dgrad.rounding == r.dy_wgrad.rounding == "rn"),
        ({"weight_2d": False}, lambda r: r.w_fprop.block_shape == (1, 16)),
        ({"bf16_first_blocks": 0, "bf16_last_blocks": 1}, lambda r: (r.bf16_first_blocks, r.bf16_last_blocks) == (0, 1)),
    ],
)
def test_each_nvfp4_component_is_a_switch(switch, check):
    assert check(build_recipe(RecipeConfig(name="nvfp4", **switch)))


def test_scale_rule_switch_for_mx_and_refused_elsewhere():
    assert build_recipe(RecipeConfig(name="mxfp4", scale_rule="ceil")).x_fprop.mx_rule == "ceil"
    with pytest.raises(ValueError, match="MX recipes only"):
        build_recipe(RecipeConfig(name="nvfp4", scale_rule="ceil"))


def test_mx_fp8_gemm_switch_for_mxfp4_recipes_and_refused_elsewhere():
    assert build_recipe(RecipeConfig(name="tetrajet", mx_fp8_gemm=True)).mx_fp8_gemm
    assert not build_recipe("mxfp4").mx_fp8_gemm
    with pytest.raises(ValueError, match="mx_fp8_gemm.*'nvfp4'"):
        build_recipe(RecipeConfig(name="nvfp4", mx_fp8_gemm=True))


def test_mx_fp8_gemm_leaves_the_cpu_reference_unchanged():
    """The switch picks a GPU backend; on the CPU both layers run the exact reference, bit for bit."""
    torch.manual_seed(0)
    plain = QuantLinear(64, 32, recipe="mxfp4")
    switched = QuantLinear(64, 32, recipe=build_recipe(RecipeConfig(name="mxfp4", mx_fp8_gemm=True)))
    switched.load_state_dict(plain.state_dict())
    x = torch.randn(48, 64, requires_grad=True)
    y1, y2 = plain(x), switched(x)
    dy = torch.randn_like(y1)
    g1 = torch.autograd.grad(y1, (x, plain.weight), dy)
    g2 = torch.autograd.grad(y2, (x, switched.weight), dy)
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown recipe 'fp3'; valid: \['bf16'"):
        build_recipe("fp3")
    assert set(RECIPE_DEFAULTS) >= {"bf16", "fp8", "fp8_block", "mxfp8", "mxfp4", "nvfp4"}


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Toy(nn.Module):
    def __init__(self, d=32, n=5):
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 10)

    def forward(self, t):
        x = self.embed(t)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_convert_keeps_first_and_last_blocks_embeddings_and_head():
    model = Toy()
    report = convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=1, bf16_last_blocks=2))
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == {f"blocks.{i}.{p}" for i in (1, 2) for p in ("up", "down")}
    assert type(model.head) is nn.Linear and isinstance(model.embed, nn.Embedding)
    text = str(report)
    assert "4 of 11 linear layers quantized" in text
    assert "| blocks.0.up | 32 → 64 | 0 | bf16 | first 1 blocks in BF16 |" in text
    assert "| head | 32 → 10 | - | bf16 | outside the blocks (embedding/head) |" in text
    model(torch.randint(0, 10, (2, 16))).sum().backward()


def test_convert_shares_parameters():
    model = Toy()
    w = model.blocks[2].up.weight
    convert(model, RecipeConfig(name="mxfp4", bf16_first_blocks=0))
    assert model.blocks[2].up.weight is w


def test_convert_include_and_exclude_patterns():
    model = Toy()
    convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0, include=[r"\.up$"], exclude=[r"blocks\.4"]))
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert quantized == {f"blocks.{i}.up" for i in range(4)}


def test_misfit_layer_is_named_at_conversion_or_kept_when_asked():
    model = Toy(d=24)  # 24 is not a multiple of 16
    with pytest.raises(ValueError, match=r"layer 'blocks.0.up' \(24 → 48\).*skip_incompatible"):
        convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0))
    with pytest.raises(ValueError, match=r"quantized none of the model's 11 linear layers(.|\n)*kept: x_fprop blocks \(1, 16\) do not tile weight 48×24"):
        convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0, skip_incompatible=True))


def test_skipped_misfits_are_kept_in_bf16_and_named_in_the_table():
    model = Toy(d=32)
    model.blocks[1].up = nn.Linear(32, 40)  # 40 rows: not whole 16×16 weight tiles
    model.blocks[1].down = nn.Linear(40, 32)
    report = convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0, skip_incompatible=True))
    assert "blocks.1.up" not in report.quantized and "blocks.0.up" in report.quantized
    assert "| blocks.1.up | 32 → 40 | 1 | bf16 | kept: w_fprop blocks (16, 16) do not tile weight 40×32 |" in str(report)


def test_a_quantizing_recipe_that_converts_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"recipe 'nvfp4' quantized none.*5 blocks; bf16_first_blocks=2, bf16_last_blocks=8"):
        convert(Toy(n=5), RecipeConfig(name="nvfp4", bf16_first_blocks=2, bf16_last_blocks=8))


def test_bf16_recipe_converts_nothing():
    model = Toy()
    report = convert(model, "bf16")
    assert report.quantized == [] and not any(isinstance(m, QuantLinear) for m in model.modules())


def test_precision_schedule_switches_forward_then_matches_bf16():
    model = Toy()
    convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0))
    sched = PrecisionSchedule(switch_at=0.8, scope="forward")
    assert sched.apply(model, 79, 100) == frozenset()
    assert sched.apply(model, 80, 100) == {"fprop"}
    layer = model.blocks[0].up
    assert layer.operand_spec("x_fprop").is_identity and not layer.operand_spec("dy_dgrad").is_identity
    full = PrecisionSchedule(switch_at=0.5, scope="all")
    full.apply(model, 60, 100)
    x = torch.randn(4, 32)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_precision_schedule_rejects_bad_scope():
    with pytest.raises(ValueError, match="valid: \\['all', 'backward', 'forward'\\]"):
        PrecisionSchedule(0.5, scope="fwd")


def test_forward_only_switch_multiplies_like_a_bf16_linear_under_autocast():
    torch.manual_seed(0)
    model = Toy()
    convert(model, RecipeConfig(name="nvfp4", bf16_first_blocks=0, bf16_last_blocks=0))
    layer = model.blocks[0].up
    PrecisionSchedule(switch_at=0.5, scope="forward").apply(model, 90, 100)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = layer(x)
        ref = nn.functional.linear(x, layer.weight, layer.bias)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)


@pytest.mark.parametrize("cfg", [
    RecipeConfig(name="mxfp4", sr=True),
    RecipeConfig(name="mxfp8", sr=True, scale_rule="floor"),
    RecipeConfig(name="tetrajet", scale_rule="floor"),
], ids=["mxfp4+sr", "mxfp8+sr+floor", "tetrajet+floor"])
def test_sr_with_floor_mx_scales_is_refused_with_the_override_that_fixes_it(cfg):
    """SR is unbiased only where nothing clips; the floor (OCP) rule clips block maxima, so the
    combination is refused by name (issue 21, item 7) unless asked for on purpose."""
    with pytest.raises(ValueError, match=rf"recipe '{cfg.name}' rounds dy_dgrad.*quant\.scale_rule=ceil.*quant\.allow_biased_sr=true"):
        build_recipe(cfg)
    biased = build_recipe(RecipeConfig(**{**cfg.__dict__, "allow_biased_sr": True}))
    assert biased.dy_dgrad.rounding == "sr" and biased.dy_dgrad.mx_rule == "floor"


def test_mx_recipes_with_sr_take_ceil_scales():
    r = build_recipe(RecipeConfig(name="mxfp4", sr=True, scale_rule="ceil"))
    assert r.dy_dgrad.rounding == r.dy_wgrad.rounding == "sr" and r.dy_dgrad.mx_rule == "ceil"
    assert build_recipe("tetrajet").dy_dgrad.mx_rule == "ceil"


def test_mxfp8_recipe_rounds_its_scales_up_as_transformer_engine_and_keeps_floor_as_a_switch():
    """Issue 21, item 8: TE's MXFP8 scale is 2^ceil(log2(amax/448)) (bit-exact check in
    tests/quant/test_block_quantizers.py); OCP's floor rule stays one override away."""
    assert all(build_recipe("mxfp8").spec(o).mx_rule == "ceil" for o in OPERANDS)
    assert all(build_recipe(RecipeConfig(name="mxfp8", scale_rule="floor")).spec(o).mx_rule == "floor" for o in OPERANDS)
