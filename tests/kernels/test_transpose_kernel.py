"""The packed-FP4 transpose kernel (Triton interpreter) against the reference ``quant.transpose``."""

import pytest
import torch

from fp4train.kernels import transpose as kernels
from fp4train.quant import QuantSpec, pack_fp4, quantize, transpose, unpack_fp4


@pytest.mark.parametrize("shape", [(16, 16), (64, 64), (80, 48), (128, 208), (2, 2), (96, 130)])
def test_every_byte_pattern_lands_transposed(shape):
    m, k = shape
    packed = torch.randint(0, 256, (m, k // 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(m * k))
    assert torch.equal(kernels.transpose_fp4_codes(packed), pack_fp4(unpack_fp4(packed).T))


def test_transposed_weight_codes_equal_quantizing_the_transpose():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 160, generator=g) * torch.exp(2 * torch.randn(96, 160, generator=g))
    w_nan = w.clone()
    w_nan[5, 7] = float("nan")  # for MX only: in NVFP4 a NaN makes the whole tensor NaN (every code alike)
    for spec, x in ((QuantSpec("nvfp4", block=(16, 16)), w), (QuantSpec("mxfp4", block=(32, 32)), w_nan)):
        qt = quantize(x, spec)
        assert qt.data.unique().numel() > 8  # many distinct codes: a misplaced one shows
        assert torch.equal(kernels.transpose_fp4_codes(qt.data), transpose(qt).data)
        assert torch.equal(transpose(qt).data, quantize(x.T, spec).data)


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="2-D uint8"):
        kernels.transpose_fp4_codes(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="even row count"):
        kernels.transpose_fp4_codes(torch.zeros(3, 4, dtype=torch.uint8))
