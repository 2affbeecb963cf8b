"""The per-tensor FP8 kernel (``quantize_fp8``, under Triton's interpreter) equals the reference
quantizer bit for bit, in both orientations, and its E4M3/E5M2 rounding equals ml_dtypes'."""

import ml_dtypes
import numpy as np
import pytest
import torch

from fp4train import QuantSpec, quantize
from fp4train.kernels.fp8 import quantize_fp8


def inputs():
    g = torch.Generator().manual_seed(0)
    heavy = torch.randn(64, 256, generator=g) * torch.exp(3 * torch.randn(64, 256, generator=g))
    ties = torch.tensor([0.5, 1.5, 2.5, 3.5, 448.0, 464.0, 2.0**-10, 3 * 2.0**-10, -(2.0**-10), 1e-30], dtype=torch.float32)
    with_nan = heavy.clone()
    with_nan[3, 3] = float("nan")
    with_inf = heavy.clone()
    with_inf[5, 0] = -float("inf")
    signed_zeros = torch.zeros(8, 32)
    signed_zeros[::2] = -0.0
    signed_zeros[1, 1] = 1.0
    return {
        "heavy": heavy, "heavy_bf16": heavy.to(torch.bfloat16), "heavy_fp16": heavy.clamp(-6e4, 6e4).to(torch.float16),
        "ties_scaled": ties.repeat(4, 1),
        "ties_exact": ties[ties != 464.0].repeat(4, 1),  # amax 448: scale 1, the ties stay ties
        "zeros": torch.zeros(8, 32), "signed_zeros": signed_zeros, "tiny": torch.full((4, 16), 1e-40),
        "huge": torch.full((4, 16), -3e38), "ragged": heavy[:37, :75],  # partial tiles in both directions
        "nan": with_nan, "inf": with_inf,
    }


def assert_same(ours, ref):
    assert ours.padded == ref.padded and ours.data.shape == ref.data.shape and ours.shape == ref.shape
    assert ours.scales.shape == ref.scales.shape
    assert np.array_equal(ours.scales.numpy().view(np.int32), ref.scales.numpy().view(np.int32)) or (
        torch.isnan(ours.scales).all() and torch.isnan(ref.scales).all()
    )
    finite = torch.isfinite(ref.element_values())
    assert torch.equal(ours.data[finite], ref.data[finite])
    assert torch.equal(torch.isnan(ours.element_values() * ours.scales), torch.isnan(ref.element_values() * ref.scales))


@pytest.mark.parametrize("row_fmt,col_fmt", [("fp8_e4m3", "fp8_e4m3"), ("fp8_e5m2", "fp8_e5m2"), ("fp8_e4m3", "fp8_e5m2")])
@pytest.mark.parametrize("name,x", list(inputs().items()))
def test_fp8_kernel_equals_reference_in_both_orientations(row_fmt, col_fmt, name, x):
    row_spec, col_spec = QuantSpec(row_fmt), QuantSpec(col_fmt)
    row, col = quantize_fp8(x, row_spec, col_spec, tile=(16, 32, 2, 1))
    assert_same(row, quantize(x, row_spec))
    assert_same(col, quantize(x.T.contiguous(), col_spec))


@pytest.mark.parametrize("fmt,dtype", [("fp8_e4m3", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)])
def test_fp8_rounding_equals_ml_dtypes(fmt, dtype):
    """Scale 1 (amax = max): the codes are ml_dtypes' RN-even casts of the inputs, on every
    binade of the format, its subnormals, ties between neighbours, and values past max (clamped)."""
    spec = QuantSpec(fmt)
    top = float(spec.format.element.max)
    grid = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    grid = np.sort(grid[np.isfinite(grid) & (np.abs(grid) <= top)])
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties in float32
    x = np.concatenate([grid, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), [top, -top]])
    x = torch.from_numpy(x.astype(np.float32))
    x = torch.nn.functional.pad(x, (0, -x.numel() % 64)).reshape(-1, 64)
    (row, col) = quantize_fp8(x, spec, spec, tile=(16, 32, 2, 1))
    assert row.scales.item() == 1.0
    expected = x.numpy().astype(dtype).view(np.uint8)
    assert np.array_equal(row.data.numpy(), expected)
    assert np.array_equal(col.data.numpy(), expected.T)


def test_fp8_kernel_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="RN"):
        quantize_fp8(torch.randn(4, 16), QuantSpec("fp8_e4m3", rounding="sr"), None)
    with pytest.raises(ValueError, match="float64"):
        quantize_fp8(torch.randn(4, 16, dtype=torch.float64), QuantSpec("fp8_e4m3"), None)
    with pytest.raises(ValueError, match="at least one"):
        quantize_fp8(torch.randn(4, 16), None, None)
