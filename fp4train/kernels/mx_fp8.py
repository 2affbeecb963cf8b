"""MXFP4 operands as E4M3 codes with one power-of-two scale per row, for Hopper's FP8 tensor cores.

An MXFP4 row holds values ``x = E2M1(c) · 2^e_b`` (``e_b`` = E8M0 code − 127 of the element's
block of 32). With a row exponent ``r`` the row is rewritten as ``x = y · 2^(r-6)`` where
``y = E2M1(c) · 2^j`` and ``j = e_b − r + 6``; a GEMM of two such operands is then
``_scaled_mm(Y_a, Y_bᵀ, 2^(r_a-6), 2^(r_b-6))`` with row-wise scales.

When ``y`` is an E4M3 value (OCP FP8 "fn": bias 7, normals ``2^-6 .. 448``, subnormals
``k · 2^-9``): the E2M1 magnitudes ``{0.5, 1, 1.5, 2, 3, 4, 6} · 2^j`` are all E4M3 values iff
``−8 ≤ j ≤ 6`` — at the top ``6 · 2^6 = 384 ≤ 448`` (``6 · 2^7 = 768`` is not), at the bottom
``0.5 · 2^-8 = 2^-9``, the least subnormal, and ``1.5 · 2^-8 = 3 · 2^-9``; every one has at most
two significant bits, so no mantissa bits are lost in between. Taking ``r`` = the largest block
exponent of the row gives ``j ≤ 6`` everywhere, and ``j ≥ −8`` iff ``e_b ≥ r − 14``: a row whose
nonzero blocks span at most 15 binades converts exactly. ``r`` is clamped to ``[−56, 56]`` so
that ``2^(r_a-6) · 2^(r_b-6) ∈ [2^-124, 2^100]`` is a normal float32 (a row beyond the clamp is
reported inexact: ``j > 6`` above it, ``j < −8`` for nonzero blocks below ``2^-70``).

Per element, with the E2M1 magnitude normalised as ``(1 + h/2) · 2^p``, ``h`` one mantissa bit,
``y = (1 + h/2) · 2^(p+j)``: for ``q = p + j ≥ −6`` its E4M3 code is exponent field ``q + 7`` and
mantissa ``h << 2``; below, the subnormal code is the integer ``y · 2^9 = (2 + h) · 2^(q+8)``.
Built from integer bit operations only (no float conversion): exact, and run by the
interpreter. Outside the window (``j ∉ [−8, 6]``) the element becomes a zero of its sign and
the row's exactness flag is cleared; elements of NaN blocks (scale code 0xFF) become 0x7F, E4M3's
NaN.

``mx_to_e4m3_reference`` is the plain-torch definition (any device: the CPU path).
``mx_to_e4m3_triton`` (``_mx_to_e4m3_kernel``) equals it bit for bit. The kernel does not
evaluate the formula per element: at about 35 integer operations per element that was
compute-bound (~110 µs for an 8192×8192 operand on an H200). ``j`` is constant over a block,
so the kernel reads the block's 8 codes from a table of the 15 windows' codes made by the
reference's formula (``_code_table``) and picks one byte per nibble, about 10 operations:
60 µs (GPU time), where copying the same bytes (read 0.5 B, write 1 B per element) takes 35.
``mx_to_e4m3`` picks the kernel on CUDA, the reference elsewhere.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fp4train.quant.tensor import QuantizedTensor
from fp4train.quant.blocks import expand_blocks
from fp4train.quant.formats import pow2, unpack_fp4

from .triton_common import interpreting

__all__ = ["ROW_EXPONENT_LIMIT", "DEFAULT_CONFIG", "mx_to_e4m3", "mx_to_e4m3_reference", "mx_to_e4m3_triton"]

ROW_EXPONENT_LIMIT = 56  # |r| bound: the product of two row scales stays a normal float32
_BLOCK = (1, 32)
_J_MIN, _J_MAX = -8, 6  # the window of j in which every E2M1 value times 2^j is an E4M3 value
_E4M3_NAN = 0x7F
# (BLOCK_R, BLOCK_K, num_warps, programs): the tile is the best of 7 on an H200; K is split
# across programs until about ``programs`` run (a few per SM; not tuned); BLOCK_K a power of
# two >= 32
DEFAULT_CONFIG = (4, 1024, 4, 1024)


def _check(qt: QuantizedTensor) -> None:
    if qt.spec.fmt != "mxfp4" or qt.spec.block_shape != _BLOCK:
        raise ValueError(
            f"mx_to_e4m3 needs an MXFP4 operand with {_BLOCK} blocks; got {qt.spec.fmt} with blocks {qt.spec.block_shape}"
        )


# ----------------------------------------------------------------------------- reference (torch)


def _row_exponents(scales: torch.Tensor) -> torch.Tensor:
    """``r_i = clamp(max e_b, ±56)`` (int32, shape (R,)) over the row's blocks whose scale code
    (int32, (R, K/32)) is not NaN (0xFF); 0 for a row without such a block."""
    top = torch.where(scales == 0xFF, -1, scales).amax(dim=1)
    r = (top - 127).clamp(-ROW_EXPONENT_LIMIT, ROW_EXPONENT_LIMIT)
    return torch.where(top < 0, 0, r)


def _e4m3_magnitudes(mag: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """E4M3 codes (int32) of ``E2M1(mag) · 2^j`` for E2M1 magnitude indices ``mag`` (0..7) and
    ``j`` in ``[−8, 6]``: ``|E2M1| = (1 + h/2) · 2^p`` with ``p = (mag >> 1) − 1`` (also for the
    subnormal 0.5, ``mag = 1``, whose ``h`` is 0); ``q = p + j``; normal field ``(q + 7, h << 2)``
    if ``q ≥ −6``, else the subnormal integer ``(2 + h) · 2^(q+8)``."""
    q = (mag >> 1) - 1 + j
    h = torch.where(mag == 1, 0, mag & 1)
    normal = ((q + 7) << 3) | (h << 2)
    subnormal = ((2 + h) << (q + 9)) >> 1  # q >= -9: j >= -8, p >= -1
    return torch.where(mag == 0, 0, torch.where(q >= -6, normal, subnormal))


def mx_to_e4m3_reference(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, row_scale, row_exact)`` of an MXFP4 operand (padded (R, K)), in plain torch.

    ``codes``: uint8 (R, K) float8_e4m3fn bit patterns of ``E2M1(c) · 2^(e_b − r_i + 6)``, the
    E2M1 sign in bit 7; 0x7F in NaN blocks; a zero of the element's sign where ``j`` leaves
    ``[−8, 6]``. ``row_scale``: float32 (R, 1) ``2^(r_i − 6)``. ``row_exact``: bool (R,), True for
    a row iff every nonzero element outside NaN blocks has ``j`` in ``[−8, 6]``; then that row of
    ``codes.view(float8_e4m3fn).float() * row_scale`` equals ``qt.padded_values(with_tensor_scale=False)``
    (NaN blocks aside). See the module docstring for the derivation."""
    _check(qt)
    scales = qt.scales.to(torch.int32)
    r = _row_exponents(scales)
    j = scales - 127 - r[:, None] + 6
    nan_block = scales == 0xFF
    window = (j >= _J_MIN) & (j <= _J_MAX)
    j_el, window_el, nan_el = (expand_blocks(t, _BLOCK, qt.padded) for t in (j.clamp(_J_MIN, _J_MAX), window, nan_block))
    c = unpack_fp4(qt.data).to(torch.int32)
    mag = c & 7
    codes = torch.where(window_el, _e4m3_magnitudes(mag, j_el), 0) | ((c & 8) << 4)
    codes = torch.where(nan_el, _E4M3_NAN, codes)
    row_exact = ~((mag != 0) & ~window_el & ~nan_el).any(dim=1)
    return codes.to(torch.uint8), pow2(r - 6)[:, None], row_exact


# ----------------------------------------------------------------------------- kernel


@triton.jit
def _row_exponent(scales_ptr, rows, n_rows, n_blocks, BLOCK_S: tl.constexpr, LIMIT: tl.constexpr):
    """``_row_exponents`` for the given rows: max over the rows' non-NaN scale codes, read
    ``BLOCK_S`` at a time."""
    top = tl.full(rows.shape, -1, tl.int32)
    for s0 in range(0, n_blocks, BLOCK_S):
        cols = s0 + tl.arange(0, BLOCK_S)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_blocks)
        s = tl.load(scales_ptr + rows[:, None] * n_blocks + cols[None, :], mask=mask, other=0xFF).to(tl.int32)
        top = tl.maximum(top, tl.max(tl.where(s == 0xFF, -1, s), axis=1))
    r = tl.minimum(tl.maximum(top - 127, -LIMIT), LIMIT)
    return tl.where(top < 0, 0, r)


@triton.jit
def _table_byte(c, t0, t1):
    """Byte ``c & 7`` (``c`` int32, higher bits ignored) of the 8-byte little-endian table row
    ``(t0, t1)``: the E4M3 code of magnitude ``c & 7``."""
    word = tl.where((c & 4) != 0, t1, t0)
    return (word >> ((c & 3) * 8)) & 0xFF


@triton.jit
def _e4m3_pairs(packed, s, r, table_ptr, J_MIN: tl.constexpr, J_MAX: tl.constexpr):
    """``(pairs, lost)`` for packed E2M1 bytes (int32, (R, NB, 16)) of blocks with scale codes
    ``s`` (int32, (R, NB)) in rows with exponents ``r``: ``pairs`` holds the two E4M3 codes of
    each byte (low nibble → low byte); ``lost`` is nonzero where a nonzero magnitude lies out of
    the window. A block's magnitudes come from table row ``j − J_MIN`` (``_code_table``), the
    zero row out of the window, the NaN row (0x7F, no sign) in NaN blocks; the two sign bits
    (3 and 7) go to bits 7 and 15 through ``(packed & 0x88) · 0x110`` (the other two
    copies meet in bit 11 and may carry into bit 12, both masked off)."""
    j = s - 127 - r[:, None] + 6
    nan_block = s == 0xFF
    window = (j >= J_MIN) & (j <= J_MAX)
    row = tl.where(nan_block, J_MAX - J_MIN + 2, tl.where(window, j - J_MIN, J_MAX - J_MIN + 1))
    t0 = tl.load(table_ptr + 2 * row)[:, :, None]
    t1 = tl.load(table_ptr + 2 * row + 1)[:, :, None]
    sign_mask = tl.where(nan_block, 0, 0x8080)[:, :, None]
    signs = ((packed & 0x88) * 0x110) & sign_mask
    pairs = _table_byte(packed, t0, t1) | (_table_byte(packed >> 4, t0, t1) << 8) | signs
    lost = packed & tl.where(window | nan_block, 0, 0x77)[:, :, None]
    return pairs, lost


@triton.jit
def _mx_to_e4m3_kernel(
    data_ptr, scales_ptr, table_ptr, pairs_ptr, row_scale_ptr, row_exact_ptr, R, K, K_PER_PROGRAM,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, LIMIT: tl.constexpr, J_MIN: tl.constexpr, J_MAX: tl.constexpr,
):
    """``mx_to_e4m3_reference`` for ``BLOCK_R`` rows and ``K_PER_PROGRAM`` columns (grid axis 1
    splits K when there are few row blocks): the rows' exponents from all their scale codes,
    then ``BLOCK_K`` columns at a time, each packed byte giving an int16 of two E4M3 bytes
    (``pairs_ptr``: the codes viewed as int16). Writes the row scales (first column program)
    and per-row exactness flags of its columns (``row_exact_ptr``, bool, (K programs, R))."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k_begin = tl.program_id(1) * K_PER_PROGRAM
    n_blocks = K // 32
    NB: tl.constexpr = BLOCK_K // 32
    r = _row_exponent(scales_ptr, rows, R, n_blocks, NB, LIMIT)
    if tl.program_id(1) == 0:
        tl.store(row_scale_ptr + rows, ((r - 6 + 127) << 23).to(tl.float32, bitcast=True), mask=rows < R)
    lost = tl.zeros((BLOCK_R,), tl.int32)
    for k0 in range(k_begin, tl.minimum(k_begin + K_PER_PROGRAM, K), BLOCK_K):
        blocks = k0 // 32 + tl.arange(0, NB)
        block_mask = (rows[:, None] < R) & (blocks[None, :] < n_blocks)
        s = tl.load(scales_ptr + rows[:, None] * n_blocks + blocks[None, :], mask=block_mask, other=0).to(tl.int32)
        byte = rows[:, None, None] * (K // 2) + (blocks[None, :, None] * 16 + tl.arange(0, 16)[None, None, :])
        mask = block_mask[:, :, None]
        packed = tl.load(data_ptr + byte, mask=mask, other=0).to(tl.int32)
        pairs, tile_lost = _e4m3_pairs(packed, s, r, table_ptr, J_MIN, J_MAX)
        tl.store(pairs_ptr + byte, pairs.to(tl.int16), mask=mask)
        lost = tl.maximum(lost, tl.max(tl.max(tile_lost, axis=2), axis=1))
    tl.store(row_exact_ptr + tl.program_id(1) * R + rows, lost == 0, mask=rows < R)


@functools.lru_cache(maxsize=None)
def _code_table(device: torch.device) -> torch.Tensor:
    """int32 (17, 2): row ``j − J_MIN`` (j in [−8, 6]) holds the E4M3 codes of the E2M1
    magnitudes 0..7 times ``2^j`` (``_e4m3_magnitudes``) as 8 little-endian bytes; row 15 is
    zeros (out of the window), row 16 E4M3 NaNs (0x7F)."""
    j = torch.arange(_J_MIN, _J_MAX + 1, dtype=torch.int32)[:, None]
    codes = _e4m3_magnitudes(torch.arange(8, dtype=torch.int32), j)
    rows = torch.cat([codes, torch.zeros(1, 8, dtype=torch.int32), torch.full((1, 8), _E4M3_NAN)])
    return rows.to(torch.uint8).view(torch.int32).to(device)


def mx_to_e4m3_triton(
    qt: QuantizedTensor, config: tuple[int, int, int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mx_to_e4m3_reference(qt)`` bit for bit by ``_mx_to_e4m3_kernel`` (CUDA, or the CPU under
    ``TRITON_INTERPRET=1``): one read of the packed codes (0.5 B per element) and one write of
    the E4M3 codes (1 B); ``row_exact`` is reduced on the device over the programs that share
    a row (when K is split), without a synchronisation. ``config``: ``(BLOCK_R, BLOCK_K,
    num_warps, programs)`` instead of ``DEFAULT_CONFIG`` (tests, benchmarks)."""
    _check(qt)
    r, k = qt.padded
    dev = qt.data.device
    block_r, block_k, warps, programs = config or DEFAULT_CONFIG
    block_k = min(block_k, triton.next_power_of_2(k))
    row_blocks, k_tiles = triton.cdiv(r, block_r), triton.cdiv(k, block_k)
    k_per_program = triton.cdiv(k_tiles, min(k_tiles, triton.cdiv(programs, max(row_blocks, 1)))) * block_k
    k_programs = triton.cdiv(k, k_per_program)
    codes = torch.empty(r, k, dtype=torch.uint8, device=dev)
    row_scale = torch.empty(r, 1, dtype=torch.float32, device=dev)
    row_exact = torch.empty(k_programs, r, dtype=torch.bool, device=dev)
    _mx_to_e4m3_kernel[(row_blocks, k_programs)](
        qt.data.contiguous(), qt.scales.contiguous(), _code_table(dev), codes.view(torch.int16), row_scale, row_exact,
        r, k, k_per_program,
        BLOCK_R=block_r, BLOCK_K=block_k, LIMIT=ROW_EXPONENT_LIMIT, J_MIN=_J_MIN, J_MAX=_J_MAX, num_warps=warps,
    )
    return codes, row_scale, row_exact[0] if k_programs == 1 else row_exact.all(dim=0)


def mx_to_e4m3(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, row_scale, row_exact)`` of an MXFP4 operand (see ``mx_to_e4m3_reference``): by the
    Triton kernel on CUDA and under ``TRITON_INTERPRET=1``, else by the reference."""
    if qt.data.is_cuda or interpreting():
        return mx_to_e4m3_triton(qt)
    return mx_to_e4m3_reference(qt)
