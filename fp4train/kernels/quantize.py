"""Fused Triton quantizers for the FP4 block formats: NVFP4 (1×16 and 16×16) and MXFP4 (floor, ceil).

One pass reads a ``(M, K)`` bf16/fp16/fp32 matrix and writes, for the row-wise orientation
(blocks along K), the column-wise one (blocks along M, i.e. ``quantize(x.T)``) or both:
packed E2M1 codes (uint8, element ``2i`` in the low nibble), block scale codes (uint8 E4M3 /
E8M0) and, for NVFP4, the FP32 tensor decode scale. Optional 16- or 32-point random Hadamard
transform, applied in registers as a ``(n, d) @ (d, d)`` dot, and stochastic rounding from an
explicit int32 bit tensor or in-kernel Philox bits.

Each jitted function equals a named function of ``fp4train.quant`` bit for bit, and is written
with exact float32 steps only (bit manipulation, power-of-two products, comparisons,
``div_rn``): no ``tl.floor`` (lowered to ``cvt.rmi.ftz``, which flushes subnormals), no ``/``
(``div.full.f32``, approximate), and launches pass ``enable_fp_fusion=False`` so no ``a*b+c``
becomes an FMA. ``tests/kernels`` checks the PTX for these.

The one place the kernel can differ from the reference is the RHT: both are float32 sums of 16
(or 32) exact products ``x·(±1/4)``, but the order of the additions is the matmul's own (CPU
BLAS vs the kernel's dot), so results agree bit for bit whenever those sums are exact in
float32 and may differ by one ulp of the transformed value otherwise.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fp4train.quant.tensor import QuantizedTensor
from fp4train.quant.blocks import FP4_MAX_RECIPROCAL
from fp4train.quant.hadamard import rht_matrix
from fp4train.quant.spec import QuantSpec

from .triton_common import (
    amax_kernel,
    amax_programs,
    fp8_rn,
    indexable_by_int32,
    load_tile,
    placeholder,
    rht,
    round_up,
    tensor_scales,
    tile_origin,
)

__all__ = ["supports", "pairable", "quantize_fp4", "quantize_fp4_pair"]

_ONE_SIXTH = float(FP4_MAX_RECIPROCAL)  # fp32(1/6), exactly as the reference multiplies
_ROW_TILE = (32, 256, 8)  # (BM, BK, num_warps) when only the row-wise orientation is written
_TILE_ELEMENTS_PER_THREAD = 64  # both orientations in one program: BM × VEC per thread
_ROW_ELEMENTS_PER_THREAD = 32  # the row-wise program of a split tile (64 spilled registers)
_SUPPORTED_BLOCKS = {"nvfp4": ((1, 16), (16, 16)), "mxfp4": ((1, 32),)}
_RHT_SIZES = (16, 32)
_SEED_MOD = 2**31 - 1  # Philox seeds stay int32, so the kernel's argument type never changes


# ----------------------------------------------------------------------------- element math


@triton.jit
def _floor_log2(a):
    """Exact ``floor(log2(a))`` (int32) of finite ``a > 0``, subnormals included: equals
    ``formats.floor_log2`` (``frexp``). The mantissa of a subnormal converts to float exactly."""
    bits = a.to(tl.int32, bitcast=True)
    exp_field = (bits >> 23) & 0xFF
    mant = (bits & 0x7FFFFF).to(tl.float32)
    sub = ((mant.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127 - 149
    return tl.where(exp_field == 0, sub, exp_field - 127)


@triton.jit
def _e2m1_codes(s, rbits, SR_BITS: tl.constexpr):
    """E2M1 codes (int32, sign in bit 3) of float32 ``s``: equals
    ``encode(round_to_grid(s, E2M1, rounding, rand, sr_bits), E2M1)`` (NaN → code 0).

    With ``e = max(floor(log2 a), 0)`` the grid step is ``2^(e-1)`` and the code is
    ``round(a / 2^(e-1)) + 2e``. RN: ``a + 2^(e+22)`` lies in a binade whose ulp is the grid step,
    so the float32 add itself rounds ``a`` to nearest-even on the grid; its low bits are the count."""
    bits = s.to(tl.int32, bitcast=True)
    a = tl.minimum((bits & 0x7FFFFFFF).to(tl.float32, bitcast=True), 6.0)
    e = tl.maximum((a.to(tl.int32, bitcast=True) >> 23) - 127, 0)  # binade, emin 0
    if SR_BITS > 0:
        t = a * ((128 - e) << 23).to(tl.float32, bitcast=True)  # a / 2^(e-1), exact
        lo, up = round_up(t, rbits, SR_BITS)
        n = lo + up
    else:
        magic = (e + 149) << 23  # bits of 2^(e+22)
        n = (a + magic.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True) - magic
    code = (n + 2 * e) | ((bits >> 28) & 8)
    return tl.where(s != s, 0, code)


@triton.jit
def _e4m3_rn(a):
    """``(code, value)`` of ``round_to_grid(min(a, 448), E4M3, "rn")`` for float32 ``a >= 0`` (not NaN)."""
    return fp8_rn(tl.minimum(a, 448.0), 3, 7)


# ----------------------------------------------------------------------------- one tile


@triton.jit
def _philox_bits(seed, counter, rows, col0, n_cols, R: tl.constexpr, C: tl.constexpr, SR_BITS: tl.constexpr):
    """``SR_BITS``-bit random integers for the (R, C) tile, from one Philox4x32-10 call per 8
    elements (4 words of 2 × 16 bits; ``SR_BITS <= 16``) or per 4 elements (one word each):
    key ``seed``, counter words ``(element group, counter, 0, 0)`` (``quant.streams``)."""
    PER_WORD: tl.constexpr = 2 if SR_BITS <= 16 else 1
    G: tl.constexpr = 4 * PER_WORD
    group = rows[:, None] * (n_cols // G) + col0 // G + tl.arange(0, C // G)[None, :]
    zero = tl.zeros_like(group)
    r0, r1, r2, r3 = tl.philox(seed, group, zero + counter.to(tl.int32), zero, zero)
    w = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), (R, C // PER_WORD))
    if PER_WORD == 2:
        w = tl.reshape(tl.join(w & 0xFFFF, (w >> 16) & 0xFFFF), (R, C))
        return (w >> (16 - SR_BITS)).to(tl.int32)
    return (w.to(tl.uint32, bitcast=True) >> (32 - SR_BITS)).to(tl.int32)


@triton.jit
def _quantize_tile(
    v, row0, col0, n_rows, n_cols, codes_ptr, scales_ptr, amax_ptr, ts_ptr, rand_ptr, seed, counter_ptr,
    R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    MX: tl.constexpr, MX_CEIL: tl.constexpr, SR_BITS: tl.constexpr, PHILOX: tl.constexpr,
    ONE_SIXTH: tl.constexpr,
):
    """Quantize the float32 tile ``v`` (R, C) at ``(row0, col0)`` of an ``(n_rows, n_cols)``
    matrix with blocks (BR, BC) along its last dim, and store its packed codes, scale codes and
    (NVFP4, first tile only) the tensor decode scale ``s_dec`` at ``ts_ptr``:
    equals the body of ``reference.quantize`` after the RHT (block amax, ``mx_scale_codes`` or
    ``nvfp4_block_scale`` + ``encode(sb, E4M3)``, ``round_to_grid``, ``encode``, ``pack_fp4``)."""
    rows = row0 + tl.arange(0, R)
    cols = col0 + tl.arange(0, C)
    # The tile stays 4-D (block row, row in block, block col, col in block) until the codes are
    # packed: per-block values are reduced along axes 3 and 1 and expanded back with [:, None, :,
    # None], which keeps them in the reduction's layout (one value per block and thread), so the
    # scale arithmetic and its division run per block, not per element.
    v4 = tl.reshape(v, (R // BR, BR, C // BC, BC))
    # max of |x| as int32 bit patterns: exact, and NaN (> inf > finite) propagates like torch.amax
    amax = tl.max(tl.max(v4.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=3), axis=1).to(tl.float32, bitcast=True)
    nan_block = amax != amax
    bad = nan_block | (amax == float("inf"))
    if MX:  # mx_scale_codes: a NaN block gets k = -127 (its amax is not > 0), an inf block k(1);
        # its elements are encoded as usual (NaN → 0, inf → ±6)
        safe = tl.where((amax > 0) & (amax < float("inf")), amax, 1.0)
        k = _floor_log2(safe) - 2  # emax(E2M1) = 2
        if MX_CEIL:  # 6·2^k < amax  <=>  significand of amax > 1.5 (6 = 1.5·2^2)
            bits = safe.to(tl.int32, bitcast=True)
            mant = bits & 0x7FFFFF
            sub_log = ((mant.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
            normal = ((bits >> 23) & 0xFF) != 0
            above = tl.where(normal, mant > 0x400000, 2 * mant > (3 << sub_log))
            k = k + above.to(tl.int32)
        k = tl.where((amax > 0) & ~nan_block, k, -127)
        k = tl.minimum(tl.maximum(k, -127), 127)
        scale_code = tl.where(bad, 0xFF, k + 127)
        enc = ((127 - k) << 23).to(tl.float32, bitcast=True)  # 2^-k, k <= 126 for finite amax
    else:  # NaN and inf blocks alike: NaN scale, NaN elements (code 0)
        s_enc, s_dec = tensor_scales(tl.load(amax_ptr).to(tl.float32, bitcast=True), 2688.0)
        tl.store(ts_ptr, s_dec, mask=(row0 == 0) & (col0 == 0))
        sbf = tl.where(bad, 0.0, amax) * (s_enc * ONE_SIXTH)
        bad = bad | (sbf != sbf)  # NaN s_enc: the tensor is not finite
        scale_code, sb = _e4m3_rn(sbf)
        scale_code = tl.where(bad, 0x7F, scale_code)
        enc = tl.minimum(tl.math.div_rn(1.0, sb * s_dec), 3.4028234663852886e38)
        enc = tl.where(bad, float("nan"), enc)  # NaN sb: every element becomes NaN (code 0)
    s4 = v4 * enc[:, None, :, None]

    rbits = 0
    if SR_BITS > 0:
        if PHILOX:
            rbits = _philox_bits(seed, tl.load(counter_ptr), rows, col0, n_cols, R, C, SR_BITS)
        else:
            mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
            rbits = tl.load(rand_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0)
        rbits = tl.reshape(rbits, (R // BR, BR, C // BC, BC))
    codes = tl.reshape(_e2m1_codes(s4, rbits, SR_BITS), (R, C))
    lo, hi = tl.split(tl.reshape(codes, (R, C // 2, 2)))
    packed = (lo | (hi << 4)).to(tl.uint8)
    pcols = col0 // 2 + tl.arange(0, C // 2)
    tl.store(
        codes_ptr + rows[:, None] * (n_cols // 2) + pcols[None, :],
        packed,
        mask=(rows[:, None] < n_rows) & (pcols[None, :] < n_cols // 2),
    )
    srows = row0 // BR + tl.arange(0, R // BR)
    scols = col0 // BC + tl.arange(0, C // BC)
    tl.store(
        scales_ptr + srows[:, None] * (n_cols // BC) + scols[None, :],
        scale_code.to(tl.uint8),
        mask=(srows[:, None] < n_rows // BR) & (scols[None, :] < n_cols // BC),
    )


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _quantize_rows(
    x, r0, c0, M, K, h_ptr, amax_ptr, ts_ptr, codes, scales, rand, seed, counter_ptr,
    BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, MX: tl.constexpr, MX_CEIL: tl.constexpr,
    RHT: tl.constexpr, SR: tl.constexpr, PHILOX: tl.constexpr, ONE_SIXTH: tl.constexpr,
):
    """The row-wise orientation of the (BM, BK) tile ``x`` at ``(r0, c0)``: ``reference.quantize(x, spec)``."""
    if RHT > 0:
        x = rht(x, h_ptr, BM, BK, RHT)
    _quantize_tile(x.to(tl.float32), r0, c0, M, K, codes, scales, amax_ptr, ts_ptr, rand, seed, counter_ptr,
                   BM, BK, BR, BC, MX, MX_CEIL, SR, PHILOX, ONE_SIXTH)


@triton.jit(do_not_specialize=["row_seed", "col_seed"])  # a new SR seed must not recompile
def _quantize_kernel(
    x_ptr, M, K, stride, amax_ptr, ts_ptr, h_ptr,
    row_codes, row_scales, row_rand, row_seed, row_counter,
    col_codes, col_scales, col_rand, col_seed, col_counter,
    BM: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, SPLIT: tl.constexpr, ROW_BM: tl.constexpr,
    ROW_VEC: tl.constexpr, REVERSE: tl.constexpr,
    BR: tl.constexpr, BC: tl.constexpr, MX: tl.constexpr, MX_CEIL: tl.constexpr, ROW: tl.constexpr, COL: tl.constexpr,
    ROW_RHT: tl.constexpr, COL_RHT: tl.constexpr, ROW_SR: tl.constexpr, COL_SR: tl.constexpr,
    PHILOX: tl.constexpr, ONE_SIXTH: tl.constexpr,
):
    """``reference.quantize(x, spec)`` (ROW) and ``reference.quantize(x.T, spec_col)`` (COL) of each (BM, BK)
    tile of ``x``; the tensor amaxes come from ``amax_kernel``. ``*_RHT``: RHT size (0: none);
    ``*_SR``: SR random bits per element (0: RN).

    Without ``SPLIT`` one program reads a tile once and writes both orientations. With ``SPLIT``
    two consecutive programs read the same tile, the second from L2: the first writes the
    row-wise orientation, ``ROW_BM`` rows at a time loaded ``ROW_VEC`` contiguous elements per
    thread, the second the column-wise one. Each program then holds one orientation's
    registers, not both."""
    r0, c0, part = tile_origin(M, K, BM, BK, REVERSE, 2 if SPLIT else 1)
    if SPLIT:
        if part == 0:
            for i in tl.static_range(BM // ROW_BM):
                r = r0 + i * ROW_BM
                _quantize_rows(load_tile(x_ptr, M, K, stride, r, c0, ROW_BM, BK, ROW_VEC), r, c0, M, K, h_ptr,
                               amax_ptr, ts_ptr, row_codes, row_scales, row_rand, row_seed, row_counter,
                               ROW_BM, BK, BR, BC, MX, MX_CEIL, ROW_RHT, ROW_SR, PHILOX, ONE_SIXTH)
        else:
            x = tl.trans(load_tile(x_ptr, M, K, stride, r0, c0, BM, BK, VEC))
            _quantize_rows(x, c0, r0, K, M, h_ptr, amax_ptr + 1, ts_ptr + 1, col_codes, col_scales, col_rand,
                           col_seed, col_counter, BK, BM, BR, BC, MX, MX_CEIL, COL_RHT, COL_SR, PHILOX, ONE_SIXTH)
    else:
        x = load_tile(x_ptr, M, K, stride, r0, c0, BM, BK, VEC)
        if ROW:
            _quantize_rows(x, r0, c0, M, K, h_ptr, amax_ptr, ts_ptr, row_codes, row_scales, row_rand, row_seed,
                           row_counter, BM, BK, BR, BC, MX, MX_CEIL, ROW_RHT, ROW_SR, PHILOX, ONE_SIXTH)
        if COL:
            _quantize_rows(tl.trans(x), c0, r0, K, M, h_ptr, amax_ptr + 1, ts_ptr + 1, col_codes, col_scales,
                           col_rand, col_seed, col_counter, BK, BM, BR, BC, MX, MX_CEIL, COL_RHT, COL_SR, PHILOX, ONE_SIXTH)


# ----------------------------------------------------------------------------- Python wrappers


def supports(x: torch.Tensor, spec: QuantSpec, colwise: bool = False) -> bool:
    """Whether the kernels handle ``quantize(x, spec)`` (or of ``x``'s matrix transpose): an FP4
    format with a supported block, a 16/32-point RHT or none, bf16/fp16/fp32 input, whole blocks,
    fewer than 2^31 elements."""
    if spec.fmt not in _SUPPORTED_BLOCKS or spec.block_shape not in _SUPPORTED_BLOCKS[spec.fmt]:
        return False
    if spec.rht not in (None, *_RHT_SIZES) or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if x.dim() == 0:
        return False
    m, k = x.shape[:-1].numel(), x.shape[-1]
    rows, cols = (k, m) if colwise else (m, k)
    br, bc = spec.block_shape
    return rows % br == 0 and cols % bc == 0 and cols % (spec.rht or 1) == 0 and rows > 0 and indexable_by_int32(m * k)


def pairable(row_spec: QuantSpec, col_spec: QuantSpec) -> bool:
    """Whether one launch can write both orientations: the same format, block and scale rule;
    the same RHT (size and seed) or none on one side."""
    same = (row_spec.fmt, row_spec.block_shape, row_spec.mx_rule) == (col_spec.fmt, col_spec.block_shape, col_spec.mx_rule)
    rhts = {s.rht and (s.rht, s.seed) for s in (row_spec, col_spec)} - {None}
    return same and len(rhts) <= 1


class Tile(NamedTuple):
    """A launch shape of ``_quantize_kernel``: (BM, BK) tiles loaded ``vec`` contiguous elements
    per thread by ``warps`` warps; ``split``: both orientations by two programs per tile."""

    bm: int
    bk: int
    vec: int
    warps: int
    split: bool = False


def _two_sr_and_rht(row_spec: QuantSpec, col_spec: QuantSpec) -> bool:
    """Both orientations draw SR bits and one has an RHT (NVFP4's dy)."""
    return row_spec.rounding == col_spec.rounding == "sr" and bool(row_spec.rht or col_spec.rht)


def _split_pays(row_spec: QuantSpec, col_spec: QuantSpec) -> bool:
    """Whether both orientations are faster from two programs per tile (``Tile.split``) than from
    one: measured on an H200 (NOTES.md v7), yes for 1×N blocks (x both 111 → 102 µs, MXFP4 both
    129 → 76 µs, MXFP4 both with SR 209 → 153 µs at 8192×4096), except when both orientations
    draw SR bits and one has an RHT (NVFP4 dy: 189 → 214 µs; that column-wise program needs all
    255 registers, which the row-wise programs then get too); no for 16×16 blocks (62 → 75 µs)."""
    return row_spec.block_shape[0] == 1 and not _two_sr_and_rht(row_spec, col_spec)


def _tile(k: int, element_size: int, row: bool, col_block: int | None, two_sr: bool, split: bool) -> Tile:
    """The launch shape, chosen by the tile sweep of ``experiments/bench/run.py`` (NOTES.md).
    Row-wise only: wide tiles (long contiguous loads and stores). With the column-wise
    orientation, ``VEC`` columns per thread and ``BK = VEC · 32 · num_warps``, so that each thread
    holds all ``BM`` rows of its columns, i.e. whole column blocks (``load_tile``): column-wise
    only, two blocks (``BM/2`` contiguous code bytes per column: 16 or 32), 2 columns; ``split``
    (both orientations, two programs per tile), 32 rows, 2 columns; both orientations in one
    program, one block, 64 elements per thread (2 columns when both orientations draw SR bits:
    registers). Fewer warps for narrow matrices; BK stays a multiple of every block width and RHT
    size (16, 32)."""
    if col_block is None:
        bm, bk, warps = _ROW_TILE
        return Tile(bm, bk, 16 // element_size, warps)
    if split:
        bm, vec = max(col_block, 32), 2
    elif row:
        bm = col_block
        vec = 2 if two_sr else min(16 // element_size, _TILE_ELEMENTS_PER_THREAD // bm)
    else:
        bm, vec = 2 * col_block, 2
    warps = 4
    while warps > 1 and vec * 32 * warps > k:
        warps //= 2
    return Tile(bm, vec * 32 * warps, vec, warps, split)


def _check(x: torch.Tensor, spec: QuantSpec, colwise: bool) -> None:
    if not supports(x, spec, colwise):
        raise ValueError(
            f"the FP4 kernels do not handle {spec} for a {x.dtype} input of shape {tuple(x.shape)} "
            f"({'column' if colwise else 'row'}-wise); supported: fmt/block {_SUPPORTED_BLOCKS}, "
            f"rht in {_RHT_SIZES} or None, bf16/fp16/fp32, whole blocks (no padding), fewer than 2^31 elements"
        )


class _Plan(NamedTuple):
    """What ``quantize_fp4_pair`` derives from its specs and shapes alone (cached per call signature)."""

    tiles: int  # (BM, BK) tiles of the input
    split: bool
    separate: bool  # both orientations by two launches (each with its own tile) after one amax pass
    mx: bool
    rht: tuple[int, int]  # (size, seed) of the RHT, (0, 0) for none
    row_scales: tuple[int, int]  # shapes of the block-scale outputs
    col_scales: tuple[int, int]
    amax_args: dict  # constexprs and options of the launches
    quantize_args: dict


@functools.lru_cache(maxsize=4096)
def _plan(
    row_spec: QuantSpec | None, col_spec: QuantSpec | None, shape: tuple[int, ...], dtype: torch.dtype,
    amax_given: bool, explicit: bool, tile: tuple | None,
) -> _Plan:
    """Checks the specs against an input of ``shape`` and ``dtype``, viewed as an (M, K) matrix
    (``ValueError`` naming what is not supported), and picks the launch shape and constexprs: the
    Python work of a call that does not depend on the tensors' data, done once per signature.
    Both orientations with SR and an RHT (``_two_sr_and_rht``) are written by two launches unless
    ``tile`` is given: one program per tile holds both orientations' registers (255, NOTES.md v7),
    and split programs inherit the column-wise program's allocation."""
    specs = [s for s in (row_spec, col_spec) if s is not None]
    first = specs[0]
    if not pairable(first, specs[-1]):
        raise ValueError(
            f"row and column specs must share fmt, block and scale_rule, and use the same RHT (size and seed) "
            f"or one of them none: {row_spec} vs {col_spec}"
        )
    shape_only = torch.empty(shape, dtype=dtype, device="meta")
    m, k = shape_only.shape[:-1].numel(), shape[-1]
    if row_spec is not None:
        _check(shape_only, row_spec, False)
    if col_spec is not None:
        _check(shape_only, col_spec, True)
    rht_spec = next((s for s in specs if s.rht), None)  # pairable: at most one distinct RHT
    d = rht_spec.rht if rht_spec else 0
    br, bc = first.block_shape
    mx = first.format.scale == "e8m0"
    element_size = dtype.itemsize
    both = row_spec is not None and col_spec is not None
    two_sr = both and row_spec.rounding == col_spec.rounding == "sr"
    col_block = None if col_spec is None else col_spec.block_shape[1]
    separate = both and tile is None and _two_sr_and_rht(row_spec, col_spec)
    if tile is None:
        tile = _tile(k, element_size, row_spec is not None, col_block, two_sr, both and _split_pays(row_spec, col_spec))
    bm, bk, vec, warps, split = Tile(*tile)
    if bm % br or (col_block is not None and bm % col_block) or bk % 32 or bk % (d or 1):
        raise ValueError(f"tile {(bm, bk)} must hold whole blocks ({first.block_shape}) and Hadamard groups ({d})")
    row_d = (row_spec.rht or 0) if row_spec else 0
    col_d = (col_spec.rht or 0) if col_spec else 0
    orientations = dict(ROW=row_spec is not None, COL=col_spec is not None, ROW_RHT=row_d, COL_RHT=col_d)
    sr_bits = [s.sr_bits if s is not None and s.rounding == "sr" else 0 for s in (row_spec, col_spec)]
    split = split and both
    return _Plan(
        tiles=-(-m // bm) * -(-k // bk),
        split=split,
        separate=separate,
        mx=mx,
        rht=(d, rht_spec.seed) if rht_spec else (0, 0),
        row_scales=(m // br, k // bc),
        col_scales=(k // br, m // bc),
        amax_args=dict(BM=bm, BK=bk, VEC=vec, num_warps=warps, **orientations),
        quantize_args=dict(
            BM=bm, BK=bk, VEC=vec, SPLIT=split, ROW_BM=max(br, min(bm, _ROW_ELEMENTS_PER_THREAD * 32 * warps // bk)),
            ROW_VEC=16 // element_size, REVERSE=not mx and not amax_given,  # after an amax pass: back through L2
            BR=br, BC=bc, MX=mx, MX_CEIL=first.mx_rule == "ceil", **orientations,
            ROW_SR=sr_bits[0], COL_SR=sr_bits[1], PHILOX=not explicit, ONE_SIXTH=_ONE_SIXTH,
            enable_fp_fusion=False, num_warps=warps,
        ),
    )


def quantize_fp4_pair(
    x: torch.Tensor,
    row_spec: QuantSpec | None,
    col_spec: QuantSpec | None,
    *,
    row_rand: torch.Tensor | None = None,
    col_rand: torch.Tensor | None = None,
    seed: int | None = None,
    col_seed: int | None = None,
    counter: torch.Tensor | None = None,
    col_counter: torch.Tensor | None = None,
    amax: torch.Tensor | None = None,
    tile: Tile | tuple | None = None,
) -> tuple[QuantizedTensor | None, QuantizedTensor | None]:
    """``(quantize(x, row_spec), quantize(x_mat.T, col_spec))`` (``x`` viewed as a matrix
    ``x_mat`` of shape (M, K)) from one launch, or from one per orientation after a shared amax
    pass for NVFP4's SR + RHT pair (``_plan``); either spec may be ``None`` to skip that orientation.

    The two specs must share fmt, block and scale rule; rounding may differ, and so may the RHT
    (one of the two may have none).
    SR takes bits from ``row_rand`` (M, K) / ``col_rand`` (K, M) (int32 in ``[0, 2^sr_bits)``)
    when given — then the result equals the reference called with ``rand_bits`` — else from
    in-kernel Philox seeded with ``seed`` (default: the first spec's seed) and ``col_seed``
    for the column-wise stream (default ``seed + 1``), at Philox counter word ``counter`` /
    ``col_counter`` (0-dim int64 tensors on ``x``'s device, read by the kernel when it runs, so
    a CUDA graph replays with the value they hold then; default 0). ``amax``: optional float32 ``(2,)``
    tensor amaxes (row, col) for NVFP4, e.g. from the producer of ``x``, which skips the amax
    pass. ``tile``: a ``Tile`` (or its tuple) instead of ``_tile``'s choice (benchmarks).
    """
    if row_spec is None and col_spec is None:
        raise ValueError("quantize_fp4_pair needs at least one of row_spec, col_spec")
    xm = x.reshape(-1, x.shape[-1])
    if xm.stride(-1) != 1:
        xm = xm.contiguous()
    m, k = xm.shape
    row_sr = row_spec.sr_bits if row_spec is not None and row_spec.rounding == "sr" else 0
    col_sr = col_spec.sr_bits if col_spec is not None and col_spec.rounding == "sr" else 0
    explicit = bool((row_sr and row_rand is not None) or (col_sr and col_rand is not None))
    if explicit and ((row_sr and row_rand is None) or (col_sr and col_rand is None)):
        raise ValueError("pass explicit random bits for every SR orientation, or for none (Philox)")
    for rand, shape in ((row_rand, (m, k)), (col_rand, (k, m))):
        if rand is not None and (tuple(rand.shape) != shape or rand.dtype != torch.int32):
            raise ValueError(f"rand_bits must be int32 of shape {shape}, got {rand.dtype} {tuple(rand.shape)}")
    for name, c in (("counter", counter), ("col_counter", col_counter)):
        if c is not None and (c.dtype != torch.int64 or c.dim() != 0 or c.device != x.device):
            raise ValueError(f"{name} must be a 0-dim int64 tensor on {x.device}, got {c.dtype} {tuple(c.shape)} on {c.device}")
    plan = _plan(row_spec, col_spec, tuple(x.shape), x.dtype, amax is not None, explicit, None if tile is None else tuple(tile))
    dev = x.device
    d, rseed = plan.rht
    h = rht_matrix(d, rseed, dev) if d else placeholder(dev, torch.float32)
    base_seed = (row_spec or col_spec).seed if seed is None else seed
    col_seed = base_seed + 1 if col_seed is None else col_seed
    if plan.mx:  # no tensor scale: the kernel reads no amax and writes no decode scale
        amax_buf = placeholder(dev, torch.int32)
    elif amax is not None:
        amax_buf = amax.to(torch.float32).view(torch.int32).reshape(2)
    else:
        amax_buf = torch.zeros(2, dtype=torch.int32, device=dev)
        programs = amax_programs(plan.tiles, col_spec is not None, dev)
        amax_kernel[(programs,)](xm, m, k, xm.stride(0), amax_buf, h, plan.tiles, **plan.amax_args)
    if plan.separate:  # one launch per orientation, both reading this amax pass's result
        given = None if plan.mx else amax_buf.view(torch.float32)
        row, _ = quantize_fp4_pair(x, row_spec, None, row_rand=row_rand, seed=base_seed, counter=counter, amax=given)
        _, col = quantize_fp4_pair(x, None, col_spec, col_rand=col_rand, col_seed=col_seed, col_counter=col_counter, amax=given)
        return row, col
    u8 = torch.uint8
    rc, rs, cc, cs = (torch.empty(0, dtype=u8, device=dev),) * 4
    if row_spec is not None:
        rc, rs = torch.empty(m, k // 2, dtype=u8, device=dev), torch.empty(plan.row_scales, dtype=u8, device=dev)
    if col_spec is not None:
        cc, cs = torch.empty(k, m // 2, dtype=u8, device=dev), torch.empty(plan.col_scales, dtype=u8, device=dev)
    ts = placeholder(dev, torch.float32) if plan.mx else torch.empty(2, dtype=torch.float32, device=dev)
    dummy, zero = placeholder(dev, torch.int32), placeholder(dev, torch.int64)
    _quantize_kernel[(2 * plan.tiles if plan.split else plan.tiles,)](
        xm, m, k, xm.stride(0), amax_buf, ts, h,
        rc, rs, row_rand if row_rand is not None else dummy, base_seed % _SEED_MOD, zero if counter is None else counter,
        cc, cs, col_rand if col_rand is not None else dummy, col_seed % _SEED_MOD, zero if col_counter is None else col_counter,
        **plan.quantize_args,
    )

    def result(spec: QuantSpec | None, codes, scales, idx: int, shape: tuple[int, int]) -> QuantizedTensor | None:
        if spec is None:
            return None
        tensor_scale = None if plan.mx else ts[idx]
        orig = x.shape if idx == 0 else torch.Size(shape)
        return QuantizedTensor(spec, orig, x.dtype, codes, scales, tensor_scale, shape)

    return result(row_spec, rc, rs, 0, (m, k)), result(col_spec, cc, cs, 1, (k, m))


def quantize_fp4(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    rand_bits: torch.Tensor | None = None,
    seed: int | None = None,
    counter: torch.Tensor | None = None,
) -> QuantizedTensor:
    """``fp4train.quant.quantize(x, spec, rand_bits=rand_bits)`` on the GPU, bit for bit (SR with
    ``rand_bits=None`` draws in-kernel Philox bits seeded with ``seed``, default ``spec.seed``,
    at counter word ``counter``: ``quantize_fp4_pair``)."""
    row, _ = quantize_fp4_pair(x, spec, None, row_rand=rand_bits, seed=seed, counter=counter)
    return row
