"""Random Hadamard transform: orthogonality, cancellation in a GEMM, fixed signs per seed."""

import pytest
import torch

from fp4train import QuantSpec, apply_rht, dequantize, fake_quantize, quantize
from fp4train.quant.hadamard import rht_matrix, rht_signs


@pytest.mark.parametrize("d", [2, 16, 32, 128, 256])
def test_rht_is_orthogonal(d):
    r = rht_matrix(d, seed=0).double()
    assert torch.allclose(r @ r.T, torch.eye(d, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("d", [16, 32])
def test_rht_cancels_in_a_gemm(d):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 256, generator=g), torch.randn(12, 256, generator=g)
    rotated = apply_rht(a, d, 5) @ apply_rht(b, d, 5).T
    assert torch.allclose(rotated, a @ b.T, atol=1e-4, rtol=1e-5)


def test_rht_inverse_round_trips():
    x = torch.randn(3, 5, 64)
    assert torch.allclose(apply_rht(apply_rht(x, 16, 1), 16, 1, inverse=True), x, atol=1e-6)


def test_one_fixed_sign_vector_per_seed():
    assert torch.equal(rht_signs(16, 3), rht_signs(16, 3))
    assert not torch.equal(rht_signs(16, 3), rht_signs(16, 4))
    assert set(rht_signs(16, 3).tolist()) <= {-1.0, 1.0}


def test_rht_spreads_an_outlier_across_the_group():
    x = torch.zeros(1, 16)
    x[0, 3] = 8.0
    assert torch.allclose(apply_rht(x, 16, 0).abs(), torch.full((1, 16), 2.0))


def test_quantize_with_rht_scales_on_transformed_values_and_keep_rht_exposes_them():
    x = torch.randn(4, 64)
    spec = QuantSpec("nvfp4", rht=16, seed=9)
    rotated = apply_rht(x, 16, 9)
    assert torch.equal(dequantize(quantize(x, spec), keep_rht=True), fake_quantize(rotated, QuantSpec("nvfp4")))
    back = fake_quantize(x, spec)
    assert back.shape == x.shape and (back - x).norm() < 0.2 * x.norm()


def test_rht_size_must_divide_last_dim():
    with pytest.raises(ValueError, match="multiple of 16"):
        apply_rht(torch.randn(2, 24), 16, 0)
