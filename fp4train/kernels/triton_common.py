"""Triton building blocks that several kernels share (each device function names the reference it equals).

Host side: ``interpreting`` (the CPU tests run the kernels in Triton's interpreter),
``placeholder`` (a tensor for pointer arguments a launch does not read), ``device_limits`` (SMs
and shared memory, read once) and ``indexable_by_int32`` (which tensors the int32 offsets reach).

Device side (``@triton.jit``): tile geometry and loads (``tile_origin``, ``load_tile``); exact
float32 rounding steps (``round_up``, ``fp8_rn``, ``tensor_scales``), written, like every kernel
here, with exact float32 operations only (``fp4train.kernels.quantize`` says which); the random
Hadamard transform of a tile (``rht``); and the tensor amax pass (``amax_kernel``, launched with
``amax_programs`` programs) that the FP4 and the FP8 quantizers run before they quantize.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = [
    "interpreting",
    "placeholder",
    "device_limits",
    "indexable_by_int32",
    "tile_origin",
    "load_tile",
    "round_up",
    "fp8_rn",
    "tensor_scales",
    "rht",
    "amax_kernel",
    "amax_programs",
]

_PLACEHOLDERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_AMAX_PROGRAMS_PER_SM = 16  # column-wise amax passes (NOTES.md v10): 33 -> 26 us at 8192x4096


# ----------------------------------------------------------------------------- host side


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``, the CPU tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element zero tensor, made once per device and never written: for pointer arguments
    a variant does not read, and the default Philox counter (read as 0)."""
    key = (device, dtype)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = torch.zeros(1, dtype=dtype, device=device)
    return _PLACEHOLDERS[key]


@functools.lru_cache(maxsize=None)
def device_limits(device: torch.device) -> tuple[int, int]:
    """``(SMs, bytes of shared memory a program may use)`` of a CUDA device, read once (reading
    the properties costs ~10 µs of host time, and GEMMs and amax passes ask on every call)."""
    smem = triton.runtime.driver.active.utils.get_device_properties(device.index)["max_shared_mem"]
    return torch.cuda.get_device_properties(device).multi_processor_count, smem


def indexable_by_int32(*numels: int) -> bool:
    """Whether every tensor a kernel indexes has fewer than 2^31 elements: Triton computes the
    offsets from int32 arguments in int32, so a larger tensor would wrap around silently. Callers
    leave larger tensors to the reference code."""
    return all(n < 2**31 for n in numels)


# ----------------------------------------------------------------------------- tiles


@triton.jit
def tile_origin(M, K, BM: tl.constexpr, BK: tl.constexpr, REVERSE: tl.constexpr, PARTS: tl.constexpr):
    """``(row0, col0, part)`` of this program's tile: a 1-D grid over row bands, the tiles of a
    band consecutive, ``PARTS`` consecutive programs per tile (``part`` in ``[0, PARTS)``);
    ``REVERSE`` walks it backwards, so a pass that follows another (quantize after the amax pass)
    starts on the tiles the first one read last, which are still in L2."""
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    row0, col0 = _tile_corner(pid // PARTS, K, BM, BK)
    return row0, col0, pid % PARTS


@triton.jit
def _tile_corner(tile, K, BM: tl.constexpr, BK: tl.constexpr):
    """``(row0, col0)`` of (BM, BK) tile number ``tile``, row bands in order, a band's tiles consecutive."""
    n_k = tl.cdiv(K, BK)
    return (tile // n_k) * BM, (tile % n_k) * BK


@triton.jit
def load_tile(x_ptr, M, K, stride, row0, col0, BM: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr):
    """The (BM, BK) tile at ``(row0, col0)``, loaded ``VEC`` contiguous elements per thread: with
    ``BK = VEC · 32 · num_warps`` each thread then holds all ``BM`` rows of its ``VEC`` columns,
    so column-wise blocks (along rows) are reduced and scaled in registers."""
    rows = row0 + tl.arange(0, BM)
    cols = tl.max_contiguous(col0 + tl.arange(0, BK), VEC)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    return tl.load(x_ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


# ----------------------------------------------------------------------------- exact rounding


@triton.jit
def round_up(t, rbits, SR_BITS: tl.constexpr):
    """``(floor(t), up)`` for ``t >= 0`` in units of the grid step: RN-even (``SR_BITS = 0``),
    or SR's rule ``floor(frac·2^b) + r >= 2^b`` with ``b = SR_BITS`` — ``formats.round_to_grid``."""
    lo = t.to(tl.int32)  # truncation is floor for t >= 0, and exact
    frac = t - lo.to(tl.float32)  # exact
    if SR_BITS > 0:
        up = ((frac * (1 << SR_BITS)).to(tl.int32) + rbits) >= (1 << SR_BITS)
    else:
        up = (frac > 0.5) | ((frac == 0.5) & ((lo & 1) == 1))
    return lo, up.to(tl.int32)


@triton.jit
def fp8_rn(a, MAN: tl.constexpr, BIAS: tl.constexpr):
    """``(code, value)`` of ``round_to_grid(a, fmt, "rn")`` for float32 ``0 <= a <= fmt.max`` (not
    NaN) in the FP8 format with ``MAN`` mantissa bits and exponent bias ``BIAS`` (E4M3: 3, 7;
    E5M2: 2, 15): RN-even on the mantissa by an integer add on the float32 bits, and below the
    smallest normal ``2^(1-BIAS)`` RN-even on the subnormal step ``2^(1-BIAS-MAN)``."""
    SHIFT: tl.constexpr = 23 - MAN
    bits = a.to(tl.int32, bitcast=True)
    rounded = (bits + ((1 << (SHIFT - 1)) - 1) + ((bits >> SHIFT) & 1)) & -(1 << SHIFT)  # clear the low bits
    lo, up = round_up(a * 2.0 ** (BIAS + MAN - 1), 0, 0)
    sub_code = lo + up
    normal = a >= 2.0 ** (1 - BIAS)
    code = tl.where(normal, (rounded >> SHIFT) - ((127 - BIAS) << MAN), sub_code)
    value = tl.where(normal, rounded.to(tl.float32, bitcast=True), sub_code.to(tl.float32) * 2.0 ** (1 - BIAS - MAN))
    return code, value


@triton.jit
def tensor_scales(amax_t, NUMERATOR: tl.constexpr):
    """``(s_enc, s_dec)`` of FP32 current scaling, ``blocks.fp32_scale`` (``NUMERATOR`` = the
    element format's max) and ``blocks.nvfp4_tensor_scales`` (``NUMERATOR = 6·448 = 2688``):
    ``s_enc = min(NUMERATOR/amax, FLT_MAX)`` (1 if amax = 0, NaN if not finite — an amax pass
    stores NaN as inf), ``s_dec = 1/s_enc``, both correctly rounded."""
    s_enc = tl.minimum(tl.math.div_rn(NUMERATOR, amax_t), 3.4028234663852886e38)
    s_enc = tl.where(amax_t == 0, 1.0, s_enc)
    s_enc = tl.where(amax_t == float("inf"), float("nan"), s_enc)
    return s_enc, tl.math.div_rn(1.0, s_enc)


# ----------------------------------------------------------------------------- random Hadamard transform


@triton.jit
def _butterfly(g, R: tl.constexpr, C: tl.constexpr, H: tl.constexpr):
    """One Walsh–Hadamard stage along the last dim of ``g`` (R, C): ``(a, b) → (a + b, a - b)``
    for the elements ``i`` and ``i + H`` of every group of ``2H``."""
    a, b = tl.split(tl.permute(tl.reshape(g, (R, C // (2 * H), 2, H)), (0, 1, 3, 2)))
    return tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (R, C))


@triton.jit
def rht(v, h_ptr, R: tl.constexpr, C: tl.constexpr, D: tl.constexpr):
    """``hadamard.apply_rht(v, D, seed)`` of a tile: each group of ``D`` along the last dim times
    ``R = diag(s) H_D / sqrt(D)`` (``h_ptr``: that float32 ``(D, D)`` matrix), in float32.

    As a fast Walsh–Hadamard transform: ``w_i = v_i · R[i, 0]`` are exactly the products the
    reference forms (``R[i, j] = ±R[i, 0]``), then ``log2 D`` butterfly stages add them, ``D - 1``
    additions per output as in the matmul, in another order. Where the groups lie along the
    per-thread dim of the tile's layout (the column-wise orientation) the stages stay in
    registers."""
    i = tl.arange(0, D)
    w = tl.reshape(v.to(tl.float32), (R, C // D, D)) * tl.load(h_ptr + i * D)[None, None, :]
    g = tl.reshape(w, (R, C))
    g = _butterfly(g, R, C, 1)
    g = _butterfly(g, R, C, 2)
    g = _butterfly(g, R, C, 4)
    g = _butterfly(g, R, C, 8)
    if D == 32:
        g = _butterfly(g, R, C, 16)
    return g


# ----------------------------------------------------------------------------- tensor amax pass


@triton.jit
def _tile_amax(v, h_ptr, R: tl.constexpr, C: tl.constexpr, D: tl.constexpr):
    """int32 bits of ``v.abs().amax()`` (of ``apply_rht(v, D)`` if ``D > 0``) of a (R, C) tile; NaN as inf."""
    if D > 0:
        v = rht(v, h_ptr, R, C, D)
    a = v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF  # |x| bits; NaN > inf
    return tl.minimum(tl.max(tl.max(a, axis=1), axis=0), 0x7F800000)  # NaN stored as inf


@triton.jit
def amax_kernel(
    x_ptr, M, K, stride, amax_ptr, h_ptr, tiles,
    BM: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, ROW: tl.constexpr, COL: tl.constexpr,
    ROW_RHT: tl.constexpr, COL_RHT: tl.constexpr,
):
    """``x.abs().amax()`` (of ``apply_rht(x)`` / ``apply_rht(x.T)`` where asked) for the row- and
    column-wise orientations into ``amax_ptr[0:2]`` (int32 bit patterns, atomic max; NaN is
    stored as inf, which gives the same NaN tensor scale). Program ``p`` of ``P`` reduces tiles
    ``p, p + P, ...`` of the ``tiles`` (BM, BK) tiles (``amax_programs``) and makes one atomic
    per orientation."""
    row_amax = tl.zeros((), tl.int32)
    col_amax = tl.zeros((), tl.int32)
    for t in range(tl.program_id(0), tiles, tl.num_programs(0)):
        row0, col0 = _tile_corner(t, K, BM, BK)
        x = load_tile(x_ptr, M, K, stride, row0, col0, BM, BK, VEC)
        if ROW:
            row_amax = tl.maximum(row_amax, _tile_amax(x, h_ptr, BM, BK, ROW_RHT))
        if COL:
            col_amax = tl.maximum(col_amax, _tile_amax(tl.trans(x), h_ptr, BK, BM, COL_RHT))
    if ROW:
        tl.atomic_max(amax_ptr, row_amax)
    if COL:
        tl.atomic_max(amax_ptr + 1, col_amax)


def amax_programs(tiles: int, colwise: bool, device: torch.device) -> int:
    """How many programs ``amax_kernel`` runs for ``tiles`` tiles. A pass with the column-wise
    orientation (a transposed tile, and an RHT along it in NVFP4) loops over tiles in
    ``_AMAX_PROGRAMS_PER_SM`` programs per SM, which measured faster on an H200 than one
    program per tile (fewer programs, fewer atomics on the same word); a row-wise pass keeps
    one program per tile, measured as fast as any loop there. Under the interpreter: one per tile."""
    if not colwise or device.type != "cuda" or interpreting():
        return tiles
    return min(tiles, _AMAX_PROGRAMS_PER_SM * device_limits(device)[0])

