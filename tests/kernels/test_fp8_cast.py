"""The FP8 fast path (PyTorch casts) equals the reference quantizer bit for bit, on CPU."""

import numpy as np
import pytest
import torch

from fp4train import QuantSpec, quantize
from fp4train.kernels.fp8 import quantize_fp8_per_tensor


def inputs():
    g = torch.Generator().manual_seed(0)
    heavy = torch.randn(64, 256, generator=g) * torch.exp(3 * torch.randn(64, 256, generator=g))
    ties = torch.tensor([0.5, 1.5, 2.5, 3.5, 448.0, 464.0, 2.0**-10, 3 * 2.0**-10, -(2.0**-10), 1e-30], dtype=torch.float32)
    with_nan = heavy.clone()
    with_nan[3, 3] = float("nan")
    with_inf = heavy.clone()
    with_inf[5, 0] = -float("inf")
    return {
        "heavy": heavy, "heavy_bf16": heavy.to(torch.bfloat16), "ties_scaled": ties.repeat(4, 1),
        "ties_exact": ties[ties != 464.0].repeat(4, 1),  # amax 448: scale 1, the ties stay ties
        "zeros": torch.zeros(8, 32), "tiny": torch.full((4, 16), 1e-40), "huge": torch.full((4, 16), -3e38),
        "nan": with_nan, "inf": with_inf,
    }


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("name,x", list(inputs().items()))
def test_fp8_cast_path_equals_reference_bit_for_bit(fmt, name, x):
    spec = QuantSpec(fmt)
    ours, ref = quantize_fp8_per_tensor(x, spec), quantize(x, spec)
    assert ours.padded == ref.padded and ours.data.shape == ref.data.shape
    assert np.array_equal(ours.scales.numpy().view(np.int32), ref.scales.numpy().view(np.int32)) or (
        torch.isnan(ours.scales).all() and torch.isnan(ref.scales).all()
    )
    finite = torch.isfinite(ref.element_values())
    assert torch.equal(ours.data[finite], ref.data[finite])
    assert torch.equal(torch.isnan(ours.element_values() * ours.scales), torch.isnan(ref.element_values() * ref.scales))


def test_fp8_cast_path_refuses_sr():
    with pytest.raises(ValueError, match="RN"):
        quantize_fp8_per_tensor(torch.randn(4, 16), QuantSpec("fp8_e4m3", rounding="sr"))
