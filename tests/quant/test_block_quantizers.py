"""Block quantizers bit for bit against the NumPy + ml_dtypes oracle, on adversarial inputs."""

import numpy as np
import pytest
import torch

from fp4train import QuantSpec, dequantize, fake_quantize, quantize
from fp4train.quant import transpose, transposes_exactly
from fp4train.quant.formats import unpack_fp4

from . import oracle

CASES = [  # (fmt, block, scale_rule)
    ("mxfp4", None, "floor"),
    ("mxfp4", None, "ceil"),
    ("mxfp4", (32, 32), "ceil"),
    ("nvfp4", (1, 16), None),
    ("nvfp4", (16, 16), None),
    ("mxfp8", None, "floor"),
    ("mxfp8", None, "ceil"),
    ("fp8_e4m3", None, None),
    ("fp8_e5m2", None, None),
    ("fp8_block", (1, 128), None),
    ("fp8_block", (128, 128), None),
]
DTYPES = [torch.float32, torch.bfloat16]


def bit_patterns(t: torch.Tensor) -> np.ndarray:
    a = t.float().numpy()
    return np.where(np.isnan(a), np.int32(0x7FC00000), a.view(np.int32))


def tie_values(scale: float) -> np.ndarray:
    """E2M1 ties and grid points (5.0 and 6.0 included), both signs, times a scale."""
    t = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.5, 4.0, 1.0, 3.0, 0.0, 2.0, 1.5, 6.0], np.float32)
    return np.concatenate([t, -t]) * np.float32(scale)


def adversarial(rows: int = 128, cols: int = 256, seed: int = 0) -> np.ndarray:
    """Random, heavy-tailed and hand-built blocks: ties, 5·s and 6·s, zero blocks, subnormal
    and underflowing E4M3 block scales, and blocks whose max clips under the OCP rule."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal((rows, cols)))).astype(np.float32)
    x[0, :] = 0  # an all-zero row (zero blocks for every 1-D block size)
    x[1, :32] = tie_values(1.0)  # ties at scale 1 ...
    x[2, :] = np.tile(tie_values(2.0**-3), cols // 32)  # ... and at a power-of-two scale
    x[3, :16] = 2688.0  # sets NVFP4's s_enc = 1 exactly for the 128-row matrices below
    x[4, :16] = tie_values(2.0**-5)[:16] * 6 / 6  # NVFP4 block with sb = 2^-5 ties
    x[4, 16:32] = 6 * 2.0**-8 * np.linspace(-1, 1, 16, dtype=np.float32)  # subnormal E4M3 scale
    x[4, 32:48] = 6 * 2.0**-11  # E4M3 scale underflows to 0: block flushes
    x[5, :32] = np.float32(7.9)  # OCP floor rule clips these to 6·2^0
    x[5, 32:64] = np.linspace(-1, 1, 32, dtype=np.float32) * np.float32(1.9999999)
    return x


def extremes(rows: int = 128, cols: int = 256, seed: int = 1) -> np.ndarray:
    """1e30 and 1e-30 beside ordinary values: scales at both ends of their ranges."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[0, :] = 1e-30
    x[1, ::7] = 1e30
    x[2, :] = rng.standard_normal(cols).astype(np.float32) * 1e-30
    x[3, :] = rng.standard_normal(cols).astype(np.float32) * 1e30
    return x


def inputs():
    g = np.random.default_rng(3)
    return {
        "randn": g.standard_normal((128, 256)).astype(np.float32),
        "heavy": (g.standard_normal((128, 256)) * np.exp(2 * g.standard_normal((128, 256)))).astype(np.float32),
        "adversarial": adversarial(),
        "extremes": extremes(),
        "all_zero": np.zeros((128, 256), np.float32),
        "tiny": np.full((128, 256), 1e-30, np.float32),
        "huge": np.full((128, 256), -1e30, np.float32),
    }


INPUTS = inputs()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("fmt,block,rule", CASES, ids=lambda c: str(c))
def test_fake_quantize_matches_oracle_bit_for_bit(fmt, block, rule, name, dtype):
    x = torch.from_numpy(INPUTS[name]).to(dtype)
    spec = QuantSpec(fmt=fmt, block=block, scale_rule=rule)
    ours = fake_quantize(x, spec)
    assert ours.dtype == dtype and ours.shape == x.shape
    ref = oracle.fake_quantize(x.float().numpy(), fmt, block, rule or "floor")
    ref = torch.from_numpy(ref).to(dtype)  # the oracle's float32 result, cast by torch's RN
    mismatches = int((bit_patterns(ours) != bit_patterns(ref)).sum())
    assert mismatches == 0, f"{mismatches} mismatching elements"


def test_bf16_cast_of_oracle_agrees_with_ml_dtypes():
    # The test above casts the oracle's float32 result to bf16 with torch; make sure that cast is
    # itself RN-even by comparing it to ml_dtypes.bfloat16 once.
    import ml_dtypes

    a = oracle.fake_quantize(INPUTS["heavy"], "nvfp4")
    ours = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy()
    theirs = a.astype(ml_dtypes.bfloat16).view(np.int16)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("fmt,block,rule", CASES, ids=lambda c: str(c))
def test_higher_rank_input_is_blocked_along_last_dim(fmt, block, rule):
    x = torch.from_numpy(INPUTS["heavy"]).reshape(4, 32, 256)
    spec = QuantSpec(fmt=fmt, block=block, scale_rule=rule)
    assert torch.equal(fake_quantize(x, spec), fake_quantize(x.reshape(128, 256), spec).reshape(4, 32, 256))


def test_mx_floor_rule_clips_block_max_and_ceil_rule_never_does():
    x = torch.from_numpy(INPUTS["heavy"])
    bmax = x.abs().reshape(128, 8, 32).amax(-1)
    scaled = {r: bmax / quantize(x, QuantSpec("mxfp4", scale_rule=r)).scale_values() for r in ("floor", "ceil")}
    assert (scaled["ceil"] <= 6).all() and (scaled["ceil"] > 3).all()  # in (3, 6]: never clips
    assert (scaled["floor"] > 6).float().mean() > 0.1  # the OCP defect: many block maxima clip
    assert (scaled["floor"] >= 4).all() and (scaled["floor"] < 8).all()


def test_nvfp4_scales_codes_and_tensor_scale_are_stored_packed():
    x = torch.from_numpy(INPUTS["adversarial"])
    qt = quantize(x, QuantSpec("nvfp4"))
    assert qt.data.dtype == torch.uint8 and qt.data.shape == (128, 128)
    assert qt.scales.dtype == torch.uint8 and qt.scales.shape == (128, 16)
    assert qt.tensor_scale.dtype == torch.float32 and qt.tensor_scale.dim() == 0
    assert qt.nbytes == 128 * 128 + 128 * 16 + 4  # 4.5 bits per element + 4 bytes
    assert qt.tensor_scale.item() == 1.0  # amax 2688 → s_enc = 1
    # E2M1 codes equal ml_dtypes' codes of the scaled values, where the block scale is a power of two
    codes = unpack_fp4(qt.data)
    assert codes[4, :16].tolist() == [c & 0xF for c in np.float32(tie_values(1.0)[:16]).astype(oracle.ELEMENTS["e2m1"][0]).view(np.uint8).tolist()]


def test_nvfp4_2d_weight_scaling_gives_identical_values_for_w_and_w_transposed():
    w = torch.from_numpy(INPUTS["heavy"])
    spec = QuantSpec("nvfp4", block=(16, 16))
    assert torch.equal(fake_quantize(w, spec), fake_quantize(w.T.contiguous(), spec).T)


def test_pad_option_quantizes_ragged_last_dim_and_crops_back():
    x = torch.randn(5, 40)
    spec = QuantSpec("nvfp4", pad=True)
    y = fake_quantize(x, spec)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 8))
    assert torch.equal(y, fake_quantize(padded, QuantSpec("nvfp4"))[:, :40])


def test_bf16_spec_is_identity():
    x = torch.randn(3, 7, dtype=torch.bfloat16)
    assert fake_quantize(x, QuantSpec("bf16")) is not None
    assert torch.equal(fake_quantize(x, QuantSpec("bf16")), x)


def test_dequantize_keeps_dtype_and_shape():
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    qt = quantize(x, QuantSpec("mxfp4"))
    y = dequantize(qt)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert dequantize(qt, dtype=torch.float32).dtype == torch.float32


def test_pad_covers_hadamard_groups_wider_than_the_block():
    x = torch.randn(4, 48)  # 48 = 3 blocks of 16, but not whole 32-point Hadamard groups
    qt = quantize(x, QuantSpec("nvfp4", rht=32, pad=True))
    assert qt.padded == (4, 64)
    assert (dequantize(qt) - x).norm() < 0.2 * x.norm()


def assert_same_quantized(a, b) -> None:
    assert (a.shape, a.padded, a.dtype, a.spec) == (b.shape, b.padded, b.dtype, b.spec)
    for t, u in ((a.data, b.data), (a.scales, b.scales), (a.tensor_scale, b.tensor_scale)):
        if t is None or u is None:
            assert t is None and u is None
        elif t.is_floating_point():  # float scales: NaN where the reference has NaN
            assert t.shape == u.shape and np.array_equal(bit_patterns(t), bit_patterns(u))
        else:
            assert torch.equal(t, u)


TRANSPOSABLE = [c for c in CASES if (c[1] is None and c[0].startswith("fp8_e")) or (c[1] is not None and c[1][0] == c[1][1])]


@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("fmt,block,rule", TRANSPOSABLE, ids=lambda c: str(c))
def test_transpose_equals_quantizing_the_transpose(fmt, block, rule, name):
    x = torch.from_numpy(INPUTS[name]).reshape(2, 64, 256)  # leading dims flatten to 128 rows
    spec = QuantSpec(fmt, block=block, scale_rule=rule)
    assert transposes_exactly(spec)
    assert_same_quantized(transpose(quantize(x, spec)), quantize(x.reshape(128, 256).T, spec))


def test_transpose_of_padded_blocks_and_non_finite_input():
    finite = torch.randn(40, 70) * torch.randn(40, 70).exp()
    bad = finite.clone()
    bad[3, 5], bad[20, 60] = float("nan"), float("inf")
    for spec in (QuantSpec("nvfp4", block=(16, 16), pad=True), QuantSpec("mxfp4", block=(32, 32), pad=True)):
        t = transpose(quantize(finite, spec))
        assert_same_quantized(t, quantize(finite.T, spec))
        assert t.data.unique().numel() > 8 and t.data.is_contiguous()
        t = transpose(quantize(bad, spec))
        assert_same_quantized(t, quantize(bad.T, spec))
        assert dequantize(t).isnan().any()  # NaN blocks stay NaN


def test_codes_and_scales_are_row_major_for_a_transposed_view():
    """The kernels index codes and scales as row-major: the reference gives them so for a
    transposed input view too (a 32×32 MX weight's Wᵀ goes to the reference on the GPU)."""
    w = torch.randn(64, 96)
    for spec in (QuantSpec("mxfp4", block=(32, 32)), QuantSpec("nvfp4"), QuantSpec("fp8_e4m3")):
        qt = quantize(w.T, spec)
        assert qt.data.is_contiguous() and qt.scales.is_contiguous(), spec


@pytest.mark.parametrize("spec", [
    QuantSpec("nvfp4"),  # 1×16 blocks: a block of xᵀ is a column of 16 rows of x
    QuantSpec("nvfp4", block=(16, 16), rounding="sr"),  # SR draws its bits in the other order
    QuantSpec("nvfp4", block=(16, 16), rht=16),  # the RHT mixes along the other dim
    QuantSpec("bf16"),
], ids=str)
def test_transpose_refuses_specs_whose_transpose_is_not_exact(spec):
    assert not transposes_exactly(spec)
    if spec.is_identity:
        return
    with pytest.raises(ValueError, match="square blocks"):
        transpose(quantize(torch.randn(32, 32), spec))


def boundary_blocks() -> np.ndarray:
    """MXFP8 blocks whose amax sits on and beside ``448 · 2^k`` (where the ceil rule moves up a
    binade), over the whole exponent range, plus random and heavy-tailed rows."""
    g = np.random.default_rng(7)
    ks = np.arange(-118, 119, 3)
    centre = (np.float32(448) * np.ldexp(np.float32(1), ks)).astype(np.float32)
    amaxes = np.concatenate([np.nextafter(centre, np.float32(0)), centre, np.nextafter(centre, np.float32(np.inf))])
    rows = g.standard_normal((amaxes.size, 32)).astype(np.float32)
    rows = rows / np.abs(rows).max(1, keepdims=True) * amaxes[:, None]
    rows[:, 0] = amaxes  # exactly the amax
    return np.concatenate([rows.astype(np.float32), INPUTS["heavy"].reshape(-1, 32), INPUTS["adversarial"].reshape(-1, 32)])


def test_mxfp8_recipe_is_transformer_engines_mxfp8_bit_for_bit():
    """The ``mxfp8`` recipe's operands (ceil rule by default) equal Transformer Engine's MXFP8 cast
    (``oracle.te_mxfp8``: TE's multiply-then-round-up scale, ml_dtypes' E4M3 cast) in codes,
    scales and values, on blocks whose amax is on and beside every binade boundary ``448 · 2^k``
    (issue 21, item 8). TE differs only where the scale reaches E8M0's least value (below)."""
    from fp4train.recipes import build_recipe

    spec = build_recipe("mxfp8").x_fprop
    assert spec.mx_rule == "ceil"
    x = boundary_blocks()
    ours = quantize(torch.from_numpy(x), spec)
    values, codes = oracle.te_mxfp8(x)
    assert np.array_equal(ours.scales.numpy().ravel(), codes.ravel())
    assert np.array_equal(bit_patterns(dequantize(ours)), bit_patterns(torch.from_numpy(values)))


def test_mxfp8_departs_from_transformer_engine_only_at_the_least_scale():
    """Pinned: TE stores code 0 (2^-127) for amax ≤ 448·2^-127 but then multiplies the elements by
    1, not 2^127 (``exp2f_rcp(0) = 1``), so such a block flushes to zero where we keep it; and
    one FP32 amax, 2.6331075e-36, rounds to 448·2^-127 in TE's product and gets code 0 where the
    exact rule gives 1. Every other finite amax gets the same code (checked for every normal
    FP32 amax while writing this; a subnormal amax gets code 0 in both)."""
    spec = QuantSpec("mxfp8", scale_rule="ceil")
    tiny = np.full((1, 32), np.float32(1e-37), np.float32)
    ours = quantize(torch.from_numpy(tiny), spec)
    te_values, te_codes = oracle.te_mxfp8(tiny)
    assert ours.scales.item() == te_codes.item() == 0
    assert (te_values == 0).all() and (dequantize(ours).numpy() != 0).all()
    edge = np.full((1, 32), np.float32(2.6331075e-36), np.float32)
    assert quantize(torch.from_numpy(edge), spec).scales.item() == 1 and oracle.te_mxfp8(edge)[1].item() == 0


@pytest.mark.parametrize("fmt,threshold", [("mxfp4", 3.5), ("mxfp8", 3.875)])
def test_ceil_rule_decodes_finite_values_from_its_threshold_up_to_infinity(fmt, threshold):
    """Documented in docs/numerics.md: the ceil rule's largest scale for finite input is 2^126
    (MXFP4) / 2^120 (MXFP8); an element rounding to 4 / 256 there decodes to 2^128 = ∞. Below
    the threshold values stay finite; the floor rule clips instead of overflowing."""
    edge = np.float32(threshold * 2.0**126)
    below = np.nextafter(edge, np.float32(0))
    x = torch.from_numpy(np.array([[edge, -edge, below, -below] * 8], np.float32))
    y = fake_quantize(x, QuantSpec(fmt, scale_rule="ceil"))[0, :4]
    assert torch.isinf(y[:2]).all() and (y[:2] * torch.tensor([1, -1]) > 0).all() and torch.isfinite(y[2:]).all()
    top = torch.full((1, 32), torch.finfo(torch.float32).max)
    assert torch.isfinite(fake_quantize(top, QuantSpec(fmt, scale_rule="floor"))).all()
