"""Bad input gets a clear error; NaN/Inf never become finite numbers or zeros."""

import pytest
import torch

from fp4train import QuantSpec, fake_quantize, quantize


def test_ragged_last_dim_names_shape_and_block():
    with pytest.raises(ValueError, match=r"\(3, 40\).*\(1, 16\).*pad=True"):
        quantize(torch.randn(3, 40), QuantSpec("nvfp4"))


def test_2d_block_needs_whole_row_tiles():
    with pytest.raises(ValueError, match=r"rows of 16"):
        quantize(torch.randn(20, 32), QuantSpec("nvfp4", block=(16, 16)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fmt": "fp5"}, r"unknown fmt 'fp5'; valid: \['bf16', 'fp8_block'"),
        ({"fmt": "nvfp4", "rounding": "up"}, r"unknown rounding 'up'; valid: \['rn', 'sr'\]"),
        ({"fmt": "mxfp4", "scale_rule": "round"}, r"valid: \['floor', 'ceil'\]"),
        ({"fmt": "nvfp4", "scale_rule": "ceil"}, r"MX formats"),
        ({"fmt": "nvfp4", "block": (16,)}, r"two positive ints"),
        ({"fmt": "fp8_e4m3", "block": (1, 32)}, r"per tensor"),
        ({"fmt": "nvfp4", "rht": 12}, r"power of two"),
        ({"fmt": "nvfp4", "sr_bits": 4}, r"\[8, 24\]"),
    ],
)
def test_bad_spec_lists_valid_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantSpec(**kwargs)


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.ones(2, 16, dtype=torch.int64), QuantSpec("nvfp4"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8", "fp8_block"])
def test_non_finite_poisons_only_its_block(fmt, bad):
    x = torch.randn(2, 256)
    x[0, 5] = bad
    y = fake_quantize(x, QuantSpec(fmt, block=(1, 128) if fmt == "fp8_block" else None))
    block = 32 if fmt.startswith("mx") else 128
    assert torch.isnan(y[0, :block]).all()
    assert torch.isfinite(y[0, block:]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", ["nvfp4", "fp8_e4m3", "fp8_e5m2"])
def test_non_finite_poisons_tensor_scaled_formats_entirely(fmt, bad):
    x = torch.randn(4, 64)
    x[2, 7] = bad
    y = fake_quantize(x, QuantSpec(fmt))
    assert torch.isnan(y).all()


def test_nan_survives_bf16_and_sr():
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    x[1, 0] = float("nan")
    y = fake_quantize(x, QuantSpec("mxfp4", rounding="sr"))
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()
