"""MXFP4 → E4M3 codes + power-of-two row scales (``fp4train.kernels.mx_fp8``): decoded by
``ml_dtypes`` and multiplied by the row scale they equal the MXFP4 values bit for bit whenever the
exactness flag is set, and the Triton kernel (run by the interpreter, see conftest.py) equals the
torch reference bit for bit."""

import ml_dtypes
import numpy as np
import pytest
import torch

from fp4train.kernels.mx_fp8 import mx_to_e4m3_reference, mx_to_e4m3_triton
from fp4train.quant import QuantSpec, QuantizedTensor, quantize
from fp4train.quant.formats import unpack_fp4

E2M1_GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
RULES = ["floor", "ceil"]
DTYPES = [torch.float32, torch.bfloat16]
IMPLEMENTATIONS = {"reference": mx_to_e4m3_reference, "triton": mx_to_e4m3_triton}
# the kernel's default tile, and a small one: several column tiles per program, K split over
# programs, a partial last tile
CONFIGS = {"default": None, "small": (8, 64, 4, 4)}


def ladder(e: int) -> np.ndarray:
    """One block of 32: every E2M1 magnitude with both signs (-0 included) times ``2^e``; its
    scale exponent is ``e`` under both rules and every element is exact."""
    signed = np.concatenate([E2M1_GRID, -E2M1_GRID]).astype(np.float64) * 2.0**e
    return np.tile(signed, 2).astype(np.float32)


def zeros() -> np.ndarray:
    return np.zeros(32, np.float32)


def filled(v: float) -> np.ndarray:
    return np.full(32, v, np.float32)


def rows(*blocks_per_row: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.concatenate(b) for b in blocks_per_row])


def randn(r: int, k: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((r, k)) * scale).astype(np.float32)


def span_15_binades() -> np.ndarray:
    """Rows whose nonzero blocks span exactly 15 binades, also at both ends of the ±56 clamp;
    zero blocks (scale exponent −127) beside tiny ones; an all-zero row. K = 320 is not a power
    of two: a partly masked column tile."""
    return rows(
        [ladder(14), ladder(0), *[zeros()] * 8],
        [ladder(-10), ladder(4), *randn(1, 256, seed=1).reshape(8, 32)],
        [zeros(), ladder(-70), *[zeros()] * 8],  # r clamped to −56: j = −8
        [*[zeros()] * 9, ladder(-40)],
        [ladder(56), *[zeros()] * 8, ladder(42)],  # r = 56 unclamped
        [*[zeros()] * 10],
    )


def nan_and_inf() -> np.ndarray:
    """NaN and inf blocks (scale 0xFF) beside blocks far from 2^(0xFF − 127): a NaN code counted
    in the row maximum would push r to 56 and those blocks out of the window."""
    x = rows(
        [ladder(0), filled(np.nan), ladder(-3)],
        [ladder(-56), ladder(-50), filled(-np.inf)],
        [filled(np.nan), filled(np.inf), filled(np.nan)],
        [*randn(1, 96, seed=2).reshape(3, 32)],
    )
    x[0, 40] = 1.0  # a NaN block with other ordinary values
    x[1, 70:] = 0.5
    return x


def negative_zeros() -> np.ndarray:
    x = rows([filled(-0.0), ladder(0)], [filled(-1e-3), zeros()], [filled(-0.0), filled(-0.0)])
    x[1, 0] = 1.0  # the others round to −0 at this block's scale
    return x


CASES = {  # name: (input, exact)
    "randn": (lambda: randn(13, 256), True),
    "span_15_binades": (span_15_binades, True),
    "span_16_binades": (  # the inexact block first: flags of later column programs must not hide it
        lambda: rows([ladder(-15), zeros(), zeros(), ladder(0)], [ladder(3), ladder(-11), zeros(), zeros()]),
        False,
    ),
    "below_clamp": (lambda: rows([zeros(), ladder(-71)], [ladder(-60), zeros()]), False),  # r = −56, j = −9
    "above_clamp": (lambda: rows([ladder(57), ladder(50)], [ladder(0), ladder(1)]), False),  # r = 56, j = 7
    "huge": (lambda: randn(5, 64, seed=3, scale=2.0**120), False),
    "fp32_subnormal": (lambda: rows([filled(2.0**-127), ladder(-128)], [ladder(-130), ladder(-129)]), False),
    "nan_and_inf": (nan_and_inf, True),
    "negative_zeros": (negative_zeros, True),
    "no_rows": (lambda: np.zeros((0, 64), np.float32), True),
}


def mx(x: np.ndarray, rule: str = "floor", dtype: torch.dtype = torch.float32) -> QuantizedTensor:
    return quantize(torch.from_numpy(x).to(dtype), QuantSpec("mxfp4", scale_rule=rule))


def decoded(codes: torch.Tensor, row_scale: torch.Tensor) -> np.ndarray:
    """E4M3 codes decoded by ``ml_dtypes`` times the row scales, in float32."""
    return codes.numpy().view(ml_dtypes.float8_e4m3fn).astype(np.float32) * row_scale.numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES)
def test_e4m3_times_row_scale_is_the_mx_value(case, rule, dtype):
    """Exact: bit for bit the MXFP4 values (NaN where they are NaN). Not exact: only elements
    of out-of-window blocks differ, and they are zeros of their sign."""
    build, expected = CASES[case]
    qt = mx(build(), rule, dtype)
    codes, row_scale, exact = mx_to_e4m3_reference(qt)
    r, k = qt.padded
    assert codes.dtype == torch.uint8 and codes.shape == (r, k)
    assert row_scale.dtype == torch.float32 and row_scale.shape == (r, 1)
    assert exact.dtype == torch.bool and exact.shape == (r,) and bool(exact.all()) == expected
    got, truth = decoded(codes, row_scale), qt.padded_values(with_tensor_scale=False).numpy()
    nan = np.isnan(truth)
    assert np.array_equal(np.isnan(got), nan)
    differ = (got.view(np.uint32) != truth.view(np.uint32)) & ~nan
    assert np.array_equal(differ.any(axis=1), ~exact.numpy())  # the flag names exactly the rows that lost bits
    assert (got[differ] == 0).all() and (np.signbit(got[differ]) == np.signbit(truth[differ])).all()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("rule", "dtype"), [("floor", torch.float32), ("ceil", torch.bfloat16)], ids=["floor", "ceil-bf16"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_reference(case, rule, dtype, config):
    qt = mx(CASES[case][0](), rule, dtype)
    got_all = mx_to_e4m3_triton(qt, CONFIGS[config])
    for got, want, name in zip(got_all, mx_to_e4m3_reference(qt), ("codes", "row_scale", "exact")):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        where = (got != want).reshape(-1).nonzero()[:4, 0].tolist()
        assert torch.equal(got, want), f"{name} differ at flat indices {where}"


def shifted_codes(js: list[int]) -> QuantizedTensor:
    """One row per ``j``: block 0 holds scale exponent 0 (``r = 0``; 56 for ``j = 7``, with block
    1 above the clamp), block 1 every E2M1 code twice at scale exponent ``j − 6 + r``."""
    r = np.array([56 if j == 7 else 0 for j in js])
    scales = np.stack([127 + r, 127 + r + np.array(js) - 6], axis=1).astype(np.uint8)
    codes = np.tile(np.arange(16, dtype=np.uint8), (len(js), 4))
    data = torch.from_numpy(codes[:, 0::2] | (codes[:, 1::2] << 4))
    return QuantizedTensor(QuantSpec("mxfp4"), torch.Size((len(js), 64)), torch.float32, data,
                           torch.from_numpy(scales), None, (len(js), 64))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_e2m1_code_at_every_shift_in_the_window(impl):
    """For j in [−8, 6] each E2M1 code times 2^j becomes the E4M3 byte ``ml_dtypes`` casts the
    exact value to (±0 → 0x00/0x80, subnormals included)."""
    js = list(range(-8, 7))
    codes, row_scale, exact = IMPLEMENTATIONS[impl](shifted_codes(js))
    values = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
    for i, j in enumerate(js):
        want = np.tile((values * 2.0**j).astype(ml_dtypes.float8_e4m3fn).view(np.uint8), 2)
        assert np.array_equal(codes[i, 32:].numpy(), want), f"j = {j}"
    assert bool(exact.all()) and torch.equal(row_scale, torch.full((len(js), 1), 2.0**-6))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("j", [-9, 7])
def test_shift_outside_the_window_is_reported_and_gives_signed_zeros(impl, j):
    codes, _, exact = IMPLEMENTATIONS[impl](shifted_codes([j]))
    sign = np.tile(np.repeat(np.array([0, 0x80], np.uint8), 8), 2)
    assert not bool(exact.all()) and np.array_equal(codes[0, 32:].numpy(), sign)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_row_scale_is_the_largest_block_exponent_clamped(impl):
    """``2^(r − 6)`` with ``r`` the row's largest non-NaN block exponent clamped to ±56 (the
    zero block's exponent −127 included); ``r = 0`` when every block is NaN."""
    x = rows(
        [ladder(-3), ladder(4)],
        [ladder(120), ladder(0)],
        [ladder(-100), zeros()],
        [zeros(), zeros()],
        [filled(np.nan), filled(np.nan)],
        [filled(np.nan), ladder(-1)],
    )
    _, row_scale, _ = IMPLEMENTATIONS[impl](mx(x))
    want = torch.tensor([2.0**-2, 2.0**50, 2.0**-62, 2.0**-62, 2.0**-6, 2.0**-7])[:, None]
    assert torch.equal(row_scale, want)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nan_blocks_become_e4m3_nan_0x7f(impl):
    qt = mx(nan_and_inf())
    codes, _, exact = IMPLEMENTATIONS[impl](qt)
    nan_block = (qt.scales == 0xFF).repeat_interleave(32, dim=1)
    assert nan_block.any() and (codes[nan_block] == 0x7F).all() and (codes[~nan_block] != 0x7F).all()
    assert bool(exact.all())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_negative_zero_keeps_its_sign(impl):
    qt = mx(negative_zeros())
    codes, _, _ = IMPLEMENTATIONS[impl](qt)
    negative_zero = unpack_fp4(qt.data) == 8
    assert negative_zero.sum() > 64 and torch.equal(codes == 0x80, negative_zero)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_other_formats_are_refused(impl):
    with pytest.raises(ValueError, match="MXFP4"):
        IMPLEMENTATIONS[impl](quantize(torch.randn(4, 64), QuantSpec("nvfp4")))
