"""The fused FP4 quantization kernels equal ``fp4train.quant.quantize`` bit for bit (codes, block
scales, tensor scale), run on the CPU by Triton's interpreter (see conftest.py)."""

import numpy as np
import pytest
import torch

from fp4train.kernels.quantize import _plan, quantize_fp4, quantize_fp4_pair, supports
from fp4train.quant import QuantSpec, dequantize, quantize
from fp4train.quant.formats import unpack_fp4
from tests.quant.test_block_quantizers import adversarial, extremes

SPECS = {  # name: spec kwargs
    "nvfp4": dict(fmt="nvfp4"),
    "nvfp4_2d": dict(fmt="nvfp4", block=(16, 16)),
    "mxfp4_floor": dict(fmt="mxfp4", scale_rule="floor"),
    "mxfp4_ceil": dict(fmt="mxfp4", scale_rule="ceil"),
}
DTYPES = [torch.float32, torch.bfloat16]


def heavy_tailed(rows: int = 64, cols: int = 128, seed: int = 2) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * torch.randn(rows, cols, generator=g).mul(2).exp()).numpy()


INPUTS = {
    "heavy_tailed": heavy_tailed,
    "adversarial": lambda: adversarial(64, 128),
    "extremes": lambda: extremes(64, 128),
}


def sr_bits(shape, bits: int = 16, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int32)


def assert_same(kernel, ref, what: str) -> None:
    assert kernel.padded == ref.padded and kernel.shape == ref.shape, what
    for name in ("data", "scales"):
        k, r = getattr(kernel, name), getattr(ref, name)
        bad = (k != r).nonzero()
        assert bad.numel() == 0, f"{what}: {name} differ at {bad[:4].tolist()}: kernel {k[tuple(bad[0])]} ref {r[tuple(bad[0])]}"
    if ref.tensor_scale is None:
        assert kernel.tensor_scale is None, what
    else:
        k, r = kernel.tensor_scale, ref.tensor_scale
        assert k.shape == r.shape and (torch.equal(k, r) or (k.isnan() & r.isnan()).item()), f"{what}: tensor scale {k} vs {r}"


@pytest.mark.parametrize("rounding", ["rn", "sr"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("data", INPUTS)
def test_rowwise_equals_reference(name, dtype, rounding, data):
    x = torch.from_numpy(INPUTS[data]()).to(dtype)
    spec = QuantSpec(**SPECS[name], rounding=rounding)
    bits = sr_bits(x.shape) if rounding == "sr" else None
    assert_same(quantize_fp4(x, spec, rand_bits=bits), quantize(x, spec, rand_bits=bits), f"{name} {dtype} {rounding} {data}")


@pytest.mark.parametrize("name", SPECS)
def test_both_orientations_from_one_read(name):
    """Row-wise RN and column-wise SR (the dy recipe) from one launch, each equal to the reference
    of its own orientation; leading dims are flattened into rows."""
    x = torch.from_numpy(heavy_tailed(96, 64)).reshape(3, 32, 64).to(torch.bfloat16)
    row, col = QuantSpec(**SPECS[name]), QuantSpec(**SPECS[name], rounding="sr", sr_bits=8)
    bits = sr_bits((64, 96), bits=8)
    k_row, k_col = quantize_fp4_pair(x, row, col, col_rand=bits)
    assert_same(k_row, quantize(x, row), f"{name} row")
    assert_same(k_col, quantize(x.reshape(96, 64).T.contiguous(), col, rand_bits=bits), f"{name} col")


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4_floor", "mxfp4_ceil"])
def test_split_tiles_equal_one_program_tiles(name):
    """Both orientations with SR from two programs per tile (``split``: the row-wise half in
    sub-tiles of fewer rows) or from one: each equals the reference of its orientation with
    explicit bits, and the two launch shapes draw the same Philox bits. 96 rows leave the last
    tile of the MX split shape (64 rows) partly outside the matrix."""
    x = torch.from_numpy(heavy_tailed(96, 128, seed=4)).to(torch.bfloat16)
    rht = 16 if name == "nvfp4" else None
    row, col = QuantSpec(**SPECS[name], rounding="sr"), QuantSpec(**SPECS[name], rounding="sr", rht=rht)
    row_bits, col_bits = sr_bits((96, 128), seed=5), sr_bits((128, 96), seed=6)
    block = 16 if name == "nvfp4" else 32
    tiles = {"one program": (block, 128, 2, 2, False), "split": (2 * block, 128, 2, 2, True)}
    philox = {}
    for mode, tile in tiles.items():
        assert _plan(row, col, tuple(x.shape), x.dtype, False, False, tile).split == (mode == "split")
        k_row, k_col = quantize_fp4_pair(x, row, col, row_rand=row_bits, col_rand=col_bits, tile=tile)
        assert_same(k_row, quantize(x, row, rand_bits=row_bits), f"{name} {mode} row")
        assert_same(k_col, quantize(x.T.contiguous(), col, rand_bits=col_bits), f"{name} {mode} col")
        philox[mode] = quantize_fp4_pair(x, row, col, seed=7, tile=tile)
    for one, two in zip(*philox.values()):
        assert_same(one, two, f"{name} Philox, split vs one program")


@pytest.mark.parametrize(
    "row, col, split",
    [
        (dict(fmt="nvfp4"), dict(fmt="nvfp4", rht=16), True),  # x: 111 -> 102 us on the H200
        (dict(fmt="mxfp4"), dict(fmt="mxfp4"), True),  # 129 -> 76 us
        (dict(fmt="mxfp4", scale_rule="ceil", rounding="sr"), dict(fmt="mxfp4", scale_rule="ceil", rounding="sr"), True),
        (dict(fmt="nvfp4", rounding="sr"), dict(fmt="nvfp4", rounding="sr", rht=16), False),  # dy: two launches
        (dict(fmt="nvfp4", block=(16, 16)), dict(fmt="nvfp4", block=(16, 16)), False),  # W: 62 vs 75 us
    ],
    ids=["nvfp4_x", "mxfp4_rn", "mxfp4_sr", "nvfp4_dy", "nvfp4_2d_w"],
)
def test_both_orientations_split_where_it_measured_faster(row, col, split):
    """The default launch shape of each pair a linear layer quantizes (NOTES.md v7, v9)."""
    row, col = QuantSpec(**row), QuantSpec(**col)
    plan = _plan(row, col, (8192, 4096), torch.bfloat16, False, False, None)
    assert plan.split == split
    assert plan.separate == (row.rounding == col.rounding == "sr" and bool(col.rht))


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit bits", "Philox"])
def test_two_launches_equal_one_program(explicit):
    """NVFP4's dy pair (SR both ways, RHT column-wise) by its default two launches after one amax
    pass equals one program per tile (a given tile), with explicit bits and with Philox bits at
    a counter: the same seeds, counters and tensor scales reach each orientation."""
    x = torch.from_numpy(heavy_tailed(96, 128, seed=8)).to(torch.bfloat16)
    row, col = QuantSpec("nvfp4", rounding="sr", seed=3), QuantSpec("nvfp4", rounding="sr", rht=16, seed=3)
    kw = (dict(row_rand=sr_bits((96, 128), seed=9), col_rand=sr_bits((128, 96), seed=10)) if explicit
          else dict(seed=11, counter=torch.tensor(4), col_counter=torch.tensor(6)))
    one_program = (16, 128, 2, 2, False)
    assert _plan(row, col, tuple(x.shape), x.dtype, False, explicit, None).separate
    assert not _plan(row, col, tuple(x.shape), x.dtype, False, explicit, one_program).separate
    for two, one in zip(quantize_fp4_pair(x, row, col, **kw), quantize_fp4_pair(x, row, col, tile=one_program, **kw)):
        assert_same(two, one, f"two launches vs one program ({'explicit' if explicit else 'Philox'})")


def exactly_summable(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Multiples of 1/8 below 16: every 16-term RHT sum is exact in float32 (and in bf16 inputs),
    so the kernel's summation order cannot matter."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (rows, cols), generator=g).float() / 8


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["nvfp4", "mxfp4_ceil"])
def test_rht_equals_reference_when_sums_are_exact(name, dtype):
    """The Wgrad recipe: RHT along the reduction dim in both orientations, SR column-wise."""
    x = exactly_summable(64, 128, seed=4).to(dtype)
    x[5, :32] = 0  # zero groups: the transform of zeros is zero
    row = QuantSpec(**SPECS[name], rht=16, seed=7)
    col = QuantSpec(**SPECS[name], rht=16, seed=7, rounding="sr")
    bits = sr_bits((128, 64))
    k_row, k_col = quantize_fp4_pair(x, row, col, col_rand=bits)
    assert_same(k_row, quantize(x, row), f"{name} rht row")
    assert_same(k_col, quantize(x.T.contiguous(), col, rand_bits=bits), f"{name} rht col")


def test_rht_on_arbitrary_floats_differs_at_most_by_summation_order():
    """On arbitrary float32 input the transformed values may differ in the last bit (matmul
    summation order), which can move a code across a rounding boundary: rarely, and by one step."""
    x = torch.from_numpy(heavy_tailed(64, 128, seed=5))
    spec = QuantSpec("mxfp4", rht=32, seed=3)  # power-of-two scales: codes depend only on the sums
    k, r = unpack_fp4(quantize_fp4(x, spec).data).long(), unpack_fp4(quantize(x, spec).data).long()
    step = (k & 7) - (r & 7)
    assert (step != 0).float().mean() < 1e-2
    assert step.abs().max() <= 1


@pytest.mark.parametrize("name", SPECS)
def test_non_finite_blocks_get_nan_scales(name):
    x = torch.from_numpy(heavy_tailed(32, 64))
    x[0, 3] = float("nan")
    x[17, 40] = float("inf")
    x[20, 0] = -float("inf")
    spec = QuantSpec(**SPECS[name])
    k = quantize_fp4(x, spec)
    assert_same(k, quantize(x, spec), name)
    nan_code = 0xFF if spec.fmt == "mxfp4" else 0x7F
    assert (k.scales == nan_code).sum() >= 3 or spec.block_shape == (16, 16)
    if spec.fmt == "nvfp4":
        assert k.tensor_scale.isnan()


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4_floor"])
def test_tiny_and_subnormal_inputs(name):
    """Subnormal float32 inputs and tensors of 1e-30 / 1e-38: no flush to zero anywhere."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(32, 64, generator=g)
    x[:16] *= 1e-30
    x[16:24] *= 1e-38
    x[24:] *= 1e-42  # float32 subnormals
    spec = QuantSpec(**SPECS[name])
    for t in (x, x[24:], x[16:]):
        assert_same(quantize_fp4(t, spec), quantize(t, spec), f"{name} tiny")


def test_philox_sr_rounds_to_a_neighbour_and_is_reproducible():
    """In-kernel SR bits: each code is the round-down or round-up of its value (the reference with
    all-zero / all-one bits), the same seed gives the same codes, another seed other codes."""
    x = torch.from_numpy(heavy_tailed(64, 128, seed=8))
    spec = QuantSpec("nvfp4", rounding="sr")
    zeros = torch.zeros(x.shape, dtype=torch.int32)
    down = unpack_fp4(quantize(x, spec, rand_bits=zeros).data)
    up = unpack_fp4(quantize(x, spec, rand_bits=zeros + 2**16 - 1).data)
    a = unpack_fp4(quantize_fp4(x, spec, seed=1).data)
    assert ((a == down) | (a == up)).all()
    assert (a == up).any() and (a == down).any()
    assert torch.equal(a, unpack_fp4(quantize_fp4(x, spec, seed=1).data))
    assert not torch.equal(a, unpack_fp4(quantize_fp4(x, spec, seed=2).data))


def test_unsupported_specs_are_refused_by_name():
    x = torch.zeros(16, 48)
    assert not supports(x, QuantSpec("nvfp4", block=(1, 32)))
    assert not supports(x, QuantSpec("mxfp8"))
    assert not supports(x, QuantSpec("mxfp4"))  # 48 is not a whole number of 32-blocks
    with pytest.raises(ValueError, match="mxfp8"):
        quantize_fp4(x, QuantSpec("mxfp8"))
    for _ in range(2):  # the checks are cached per call signature: the second call must fail too
        with pytest.raises(ValueError, match=r"shape \(16, 48\)"):
            quantize_fp4(x, QuantSpec("mxfp4"))


def test_random_bits_of_the_wrong_shape_or_dtype_are_refused():
    x = torch.zeros(16, 64)
    sr = QuantSpec("nvfp4", rounding="sr")
    with pytest.raises(ValueError, match=r"int32 of shape \(64, 16\)"):
        quantize_fp4_pair(x, None, sr, col_rand=torch.zeros(16, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="int32"):
        quantize_fp4(x, sr, rand_bits=torch.zeros(16, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="every SR orientation"):
        quantize_fp4_pair(x, sr, sr, row_rand=torch.zeros(16, 64, dtype=torch.int32))


def test_both_orientations_share_a_nan_tensor_scale():
    """Without an RHT the column-wise copy reuses the row-wise amax: NaN anywhere makes both
    tensor scales NaN, as the reference does for each orientation."""
    x = torch.from_numpy(heavy_tailed(32, 64))
    x[5, 7] = float("nan")
    spec = QuantSpec("nvfp4", block=(16, 16))
    k_row, k_col = quantize_fp4_pair(x, spec, spec)
    assert_same(k_row, quantize(x, spec), "row")
    assert_same(k_col, quantize(x.T.contiguous(), spec), "col")
    assert k_row.tensor_scale.isnan() and k_col.tensor_scale.isnan()


@pytest.mark.parametrize("shape", [(48, 160), (32, 1056), (16, 64)], ids=str)
@pytest.mark.parametrize("name", ["nvfp4", "mxfp4_ceil", "nvfp4_2d"])
def test_partial_tiles_in_both_orientations(name, shape):
    """Shapes that leave the last tile of a row band, or the last band, partly outside the
    matrix (the masks), through the NVFP4 amax pass and the reversed quantize pass."""
    rows = shape[0] if name != "mxfp4_ceil" else 2 * shape[0]
    x = torch.from_numpy(heavy_tailed(rows, shape[1], seed=9)).to(torch.bfloat16)
    row, col = QuantSpec(**SPECS[name]), QuantSpec(**SPECS[name], rounding="sr")
    bits = sr_bits((shape[1], rows))
    k_row, k_col = quantize_fp4_pair(x, row, col, col_rand=bits)
    assert_same(k_row, quantize(x, row), f"{name} {shape} row")
    assert_same(k_col, quantize(x.T.contiguous(), col, rand_bits=bits), f"{name} {shape} col")


def test_philox_bits_depend_on_seed_and_position_only():
    """One launch writing both orientations draws the same bits as one launch per orientation
    with the same seeds (whose tiles differ): the streams are keyed by element, not by tile."""
    x = torch.from_numpy(heavy_tailed(64, 256, seed=10)).to(torch.bfloat16)
    row = QuantSpec("nvfp4", rounding="sr")
    col = QuantSpec("nvfp4", rounding="sr", rht=16, seed=5)
    k_row, k_col = quantize_fp4_pair(x, row, col, seed=11, col_seed=12)
    assert_same(k_row, quantize_fp4(x, row, seed=11), "row")
    assert_same(k_col, quantize_fp4_pair(x, None, col, col_seed=12)[1], "col")
    _, other = quantize_fp4_pair(x, row, col, seed=11, col_seed=13)
    assert not torch.equal(other.data, k_col.data)


def test_philox_counter_word_selects_the_step():
    """A counter (``SRStream``) is Philox's second counter word: 0 draws the bits of a call without
    one, another value other bits, the same value the same bits. The kernel reads it when it runs,
    so an in-place increment moves the stream (as in a replayed CUDA graph)."""
    x = torch.from_numpy(heavy_tailed(64, 128, seed=12)).to(torch.bfloat16)
    spec = QuantSpec("nvfp4", rounding="sr", rht=16)
    counter = torch.zeros((), dtype=torch.int64)

    def codes(counter):
        row, col = quantize_fp4_pair(x, spec, spec, seed=3, col_seed=4, counter=counter, col_counter=counter)
        return torch.cat([row.data.flatten(), col.data.flatten()])

    base = codes(counter)
    assert torch.equal(base, codes(None))
    counter.add_(1)
    step1 = codes(counter)
    assert not torch.equal(step1, base)
    assert torch.equal(step1, codes(torch.ones((), dtype=torch.int64)))
    with pytest.raises(ValueError, match="0-dim int64"):
        quantize_fp4(x, spec, counter=torch.zeros(1, dtype=torch.int64))


def test_sr_averaged_over_counters_is_unbiased():
    """Measured: the mean of 256 steps' SR values (one stream, counters 0..255) is within 5
    standard errors of x for every element (rows span 12 binades); exactly representable
    elements never move. With the counter ignored, the mean would be one
    rounding: up to 32 standard errors off."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(16, 64, generator=g) * torch.exp2(torch.randint(-6, 7, (16, 1), generator=g).float())
    spec = QuantSpec("mxfp4", scale_rule="ceil", rounding="sr")  # ceil: no block clips at ±6·scale
    zeros = torch.zeros(x.shape, dtype=torch.int32)
    down = dequantize(quantize(x, spec, rand_bits=zeros))
    up = dequantize(quantize(x, spec, rand_bits=zeros + 2**spec.sr_bits - 1))
    steps = 256
    total = torch.zeros_like(x, dtype=torch.float64)
    for step in range(steps):
        total += dequantize(quantize_fp4(x, spec, seed=9, counter=torch.tensor(step))).double()
    mean = total / steps
    gap = (up - down).double()  # away from zero: negative for negative x
    assert torch.equal(mean[gap == 0], x.double()[gap == 0])
    moved = gap != 0
    p = (x.double() - down.double())[moved] / gap[moved]  # P(rounding away from zero) per element
    std_err = gap[moved].abs() * (p * (1 - p) / steps).sqrt()
    assert ((mean[moved] - x.double()[moved]).abs() <= 5 * std_err + 1e-12).all()
    assert moved.sum() > 900


def test_tensors_of_2_to_the_31_elements_are_left_to_the_reference():
    """The kernels index in int32: a tensor of 2^31 elements or more must not reach them (it would
    wrap around silently); one element fewer may. Shapes only: meta tensors allocate nothing."""
    from fp4train.kernels.fp8 import fp8_quantize_supported
    from fp4train.kernels.gemm import fp4_supported, mx_fp8_supported
    from fp4train.quant.tensor import QuantizedTensor

    big = torch.empty(2**16, 2**15, dtype=torch.bfloat16, device="meta")
    below = torch.empty(2**16 - 32, 2**15, dtype=torch.bfloat16, device="meta")
    for spec in (QuantSpec("nvfp4"), QuantSpec("mxfp4")):
        assert not supports(big, spec) and not supports(big, spec, colwise=True)
        assert supports(below, spec) and supports(below, spec, colwise=True)
    assert not fp8_quantize_supported(big, QuantSpec("fp8_e4m3")) and fp8_quantize_supported(below, QuantSpec("fp8_e4m3"))

    def operand(rows: int, k: int) -> QuantizedTensor:
        data = torch.empty(rows, k // 2, dtype=torch.uint8, device="meta")
        scales = torch.empty(rows, k // 32, dtype=torch.uint8, device="meta")
        return QuantizedTensor(QuantSpec("mxfp4"), torch.Size((rows, k)), torch.bfloat16, data, scales, None, (rows, k))

    a, b = operand(2**16, 64), operand(2**16, 64)  # small operands, but a 2^32-element output
    assert not fp4_supported(a, b) and not mx_fp8_supported(a, b)
    a, b = operand(2**16, 64), operand(2**14, 64)
    assert fp4_supported(a, b) and mx_fp8_supported(a, b)


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4_ceil"])
def test_a_column_wise_stream_equals_the_row_wise_stream_of_the_transpose(name):
    """``quantize(y.T, spec, generator)`` on the GPU runs as ``y``'s column-wise orientation with
    the generator's key and counter (``dispatch.quantize_on_gpu``): it must draw the bits that
    ``quantize(y.T.contiguous(), ...)`` draws row-wise."""
    y = torch.from_numpy(heavy_tailed(64, 128, seed=14)).to(torch.bfloat16)
    spec = QuantSpec(**SPECS[name], rounding="sr")
    counter = torch.tensor(5)
    col = quantize_fp4_pair(y, None, spec, col_seed=21, col_counter=counter)[1]
    assert_same(col, quantize_fp4(y.T.contiguous(), spec, seed=21, counter=counter), f"{name} transposed stream")


@pytest.mark.parametrize("programs", [1, 3])
def test_amax_pass_looping_over_tiles_equals_one_program_per_tile(monkeypatch, programs):
    """On the GPU a column-wise amax pass runs fewer programs than tiles, each reducing every
    ``programs``-th tile (``amax_programs``); here with 1 and 3 programs for the tiles of a
    partial-tile shape, and a NaN and the largest |x| in tiles that late iterations read: the
    tensor scales (amax of x and of its RHT'd transpose) and codes equal the reference's."""
    import fp4train.kernels.quantize as kq

    monkeypatch.setattr(kq, "amax_programs", lambda tiles, colwise, device: min(tiles, programs))
    x = torch.from_numpy(heavy_tailed(80, 160, seed=4)).to(torch.bfloat16)
    row, col = QuantSpec("nvfp4"), QuantSpec("nvfp4", rht=16)
    assert kq._plan(row, col, tuple(x.shape), x.dtype, False, False, None).tiles > 3
    x[70, 150] = 8192.0
    k_row, k_col = quantize_fp4_pair(x, row, col)
    assert_same(k_row, quantize(x, row), "row")
    assert_same(k_col, quantize(x.T.contiguous(), col), "col")
    assert k_row.tensor_scale.item() == pytest.approx(8192 / 2688, rel=1e-6)  # s_dec from the planted amax
    x[75, 3] = float("nan")
    k_row, k_col = quantize_fp4_pair(x, row, col)
    assert k_row.tensor_scale.isnan() and k_col.tensor_scale.isnan()


def test_amax_programs_loop_only_for_column_wise_passes_on_a_gpu(monkeypatch):
    """The launch policy itself (the test above replaces it): 16 programs per SM for a pass with
    the column-wise orientation on a GPU, never more programs than tiles; one per tile for
    row-wise passes, on the CPU and under the interpreter."""
    import fp4train.kernels.triton_common as common

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(common, "device_limits", lambda device: (132, 232448))
    monkeypatch.setattr(common, "interpreting", lambda: False)
    assert common.amax_programs(4096, True, gpu) == 16 * 132
    assert common.amax_programs(1000, True, gpu) == 1000
    assert common.amax_programs(4096, False, gpu) == 4096
    assert common.amax_programs(4096, True, torch.device("cpu")) == 4096
    monkeypatch.setattr(common, "interpreting", lambda: True)
    assert common.amax_programs(4096, True, gpu) == 4096
