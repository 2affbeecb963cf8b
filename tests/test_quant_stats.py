"""Quantization statistics: clipped and flushed fractions and QSNR on constructed inputs."""

import math

import torch

from fp4train import QuantSpec
from fp4train.quant_stats import quant_stats


def test_clipped_counts_ocp_saturation_and_ceil_rule_has_none():
    x = torch.full((1, 32), 0.1)
    x[0, 0] = 7.9  # floor rule: scale 1, 7.9 saturates to 6; ceil rule: scale 2, 7.9 → 8
    assert quant_stats(x, QuantSpec("mxfp4"))["clipped"] == 1 / 32
    assert quant_stats(x, QuantSpec("mxfp4", scale_rule="ceil"))["clipped"] == 0


def test_flushed_counts_nonzero_values_that_decode_to_zero():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1:5] = 6.0, 0.2  # 0.2 < 0.25: rounds to 0 with block scale 1
    s = quant_stats(x, QuantSpec("mxfp4", scale_rule="ceil"))
    assert s["flushed"] == 4 / 5 and s["clipped"] == 0


def test_qsnr_is_infinite_for_exact_values_and_drops_with_fewer_bits():
    grid = torch.tensor([0.5, 1, 1.5, 2, 3, 4, 6, 0] * 4).reshape(1, 32)
    assert math.isinf(quant_stats(grid, QuantSpec("mxfp4", scale_rule="ceil"))["qsnr_db"])
    x = torch.randn(64, 256)
    fp4, fp8 = quant_stats(x, QuantSpec("mxfp4"))["qsnr_db"], quant_stats(x, QuantSpec("mxfp8"))["qsnr_db"]
    assert 15 < fp4 < 22 < 28 < fp8 < 35


def test_stats_of_an_sr_spec_leave_the_global_generator_alone():
    """A logging callback must not change training: SR stats draw from a generator of their own."""
    x = torch.randn(16, 64)
    spec = QuantSpec("nvfp4", rounding="sr")
    state = torch.get_rng_state()
    first = quant_stats(x, spec)
    assert torch.equal(torch.get_rng_state(), state)
    assert quant_stats(x, spec) == first


def test_block_flushed_counts_nvfp4_blocks_below_the_tensor_scales_reach():
    """NVFP4's E4M3 block scale is ``amax_b / amax_t · 448``: at most 2^-10 it rounds to zero and the
    whole block decodes to zero (issue 21, item 15). Blocks at 1e-6 of the tensor amax flush,
    blocks at 3e-6 survive; the elementwise ``flushed`` counts their elements too."""
    x = torch.rand(4, 64) + 0.5  # 16 blocks of 16
    x[0, 0] = 1.5  # tensor amax
    x[1, :16], x[1, 16:32] = 1e-6 * 1.5, 1e-6 * 1.4  # two blocks below 2^-10/448 ≈ 2.18e-6 of amax
    x[1, 32:48] = 3e-6 * 1.5  # above it: keeps a scale of 2^-9
    s = quant_stats(x, QuantSpec("nvfp4"))
    assert s["block_flushed"] == 2 / 16
    assert s["flushed"] == 32 / 64 / 4
    assert quant_stats(x, QuantSpec("mxfp4"))["block_flushed"] == 0  # per-block power-of-two scales reach them
