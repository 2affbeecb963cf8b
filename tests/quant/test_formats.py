"""Element formats against ml_dtypes: code tables, RN casts, packing, E8M0."""

import ml_dtypes
import numpy as np
import pytest
import torch

from fp4train.quant.formats import (
    E2M1,
    E4M3,
    E5M2,
    decode,
    e8m0_decode,
    encode,
    pack_fp4,
    round_to_grid,
    unpack_fp4,
)

ORACLE = {"e2m1": ml_dtypes.float4_e2m1fn, "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
FMTS = [E2M1, E4M3, E5M2]


def bits(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().float().numpy()
    return np.where(np.isnan(a), np.int32(0x7FC00000), a.view(np.int32))


def oracle_cast(a: np.ndarray, fmt) -> np.ndarray:
    return np.clip(a, -fmt.max, fmt.max).astype(ORACLE[fmt.name]).astype(np.float32)


def all_codes(fmt):
    return np.arange(2**fmt.nbits, dtype=np.uint8)


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
def test_decode_table_equals_ml_dtypes(fmt):
    ours = decode(torch.from_numpy(all_codes(fmt)), fmt).numpy()
    theirs = all_codes(fmt).view(ORACLE[fmt.name]).astype(np.float32)
    assert np.array_equal(bits(torch.from_numpy(ours)), bits(torch.from_numpy(theirs)))


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
def test_encode_inverts_decode_on_every_code(fmt):
    codes = torch.from_numpy(all_codes(fmt))
    vals = decode(codes, fmt)
    keep = torch.isfinite(vals)
    assert torch.equal(encode(vals[keep], fmt), codes[keep])
    if fmt.nan_code is not None:
        assert torch.isnan(decode(encode(torch.tensor([float("nan")]), fmt), fmt)).all()


def grid_probe(fmt) -> np.ndarray:
    """Every grid point, the midpoints between neighbours (ties) and one ulp either side."""
    grid = np.unique(np.abs(all_codes(fmt).view(ORACLE[fmt.name]).astype(np.float32)))
    grid = grid[np.isfinite(grid)]
    mids = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
    pts = np.concatenate([grid, mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf),
                          np.nextafter(grid, 0), np.nextafter(grid, np.inf), [fmt.max * 1.5, 1e30, 1e-30, 1e-45]])
    pts = pts.astype(np.float32)
    return np.concatenate([pts, -pts])


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
def test_rn_matches_ml_dtypes_on_ties_and_neighbours(fmt):
    x = grid_probe(fmt)
    ours = round_to_grid(torch.from_numpy(x), fmt, "rn")
    assert np.array_equal(bits(ours), bits(torch.from_numpy(oracle_cast(x, fmt))))


@pytest.mark.parametrize("fmt", FMTS, ids=lambda f: f.name)
def test_rn_matches_ml_dtypes_on_heavy_tailed_values(fmt):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=g) * torch.exp(3 * torch.randn(200_000, generator=g))
    ours = round_to_grid(x, fmt, "rn")
    assert np.array_equal(bits(ours), bits(torch.from_numpy(oracle_cast(x.numpy(), fmt))))
    codes = encode(ours, fmt).numpy()
    assert np.array_equal(codes, oracle_cast(x.numpy(), fmt).astype(ORACLE[fmt.name]).view(np.uint8) & (2**fmt.nbits - 1))


def test_rn_keeps_nan_and_saturates_inf():
    x = torch.tensor([float("nan"), float("inf"), -float("inf")])
    y = round_to_grid(x, E2M1, "rn")
    assert torch.isnan(y[0]) and y[1] == 6 and y[2] == -6


def test_e8m0_decode_is_power_of_two_and_ff_is_nan():
    codes = torch.arange(256, dtype=torch.uint8)
    v = e8m0_decode(codes)
    assert torch.isnan(v[255])
    expect = torch.tensor([np.ldexp(np.float32(1), int(c) - 127) for c in range(255)], dtype=torch.float32)
    assert torch.equal(v[:255], expect)


def test_pack_unpack_round_trip_low_nibble_first():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (7, 64), generator=g, dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.shape == (7, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_fp4(packed), codes)
    assert pack_fp4(torch.tensor([[0x3, 0xA]], dtype=torch.uint8)).item() == 0xA3


def test_pack_matches_torch_float4_x2_storage_layout():
    # torch.float4_e2m1fn_x2 is storage only; its documented layout is element 0 in the low nibble.
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0x0F]]
    assert packed.view(torch.float4_e2m1fn_x2).shape == (1, 2)


def test_pack_rejects_odd_length():
    with pytest.raises(ValueError, match="even last dimension"):
        pack_fp4(torch.zeros(3, 5, dtype=torch.uint8))


def test_encode_maps_infinities_to_inf_or_nan_codes():
    v = torch.tensor([float("inf"), -float("inf"), float("nan")])
    assert encode(v, E5M2).tolist() == [0x7C, 0xFC, 0x7E]
    assert torch.isnan(decode(encode(v, E4M3), E4M3)).all()
    assert encode(v, E2M1).tolist() == [0, 0, 0]
