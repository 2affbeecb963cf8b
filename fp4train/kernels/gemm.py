"""Emulated FP4 GEMM in Triton, and real FP8 GEMMs through ``torch._scaled_mm``.

``fp4_matmul(a, b)`` equals ``fp4train.quant.matmul.quantized_matmul(a, b)`` for two FP4 operands
(NVFP4 or MXFP4, any supported block). ``A' = element · block_scale`` has at most 2 + 4
significant bits, so it is exact in bf16; the bf16 tensor cores multiply exactly and accumulate
in FP32; the tensor scales are applied at the end, ``(acc · t_a) · t_b``, in the reference's
order. The result differs from the reference only by the FP32 summation order (not bit for bit:
neither torch's CPU matmul nor the tensor cores fix an order).

Two ways to feed the tensor cores:
* default: ``_dequant_kernel`` writes ``A'`` and ``B'`` once as bf16 (memory-bound, ~10% of the GEMM
  at 8192×4096×4096), then a bf16 GEMM with the scale epilogue: the persistent TMA kernel
  ``_gemm_tma_kernel`` (as fast as cuBLAS's bf16 GEMM on the H200, NOTES.md v7), or the grid
  kernel ``_gemm_kernel`` where TMA's 16-byte row alignment fails, or cuBLAS where the output has
  too few tiles to fill the GPU. Hopper has no FP4 MMA, and decoding in the GEMM's inner loop
  repeats each tile's decode N/BN times, which costs more ALU time than the MMAs (NOTES.md).
* ``fused=True``: packed codes and scales are loaded and decoded per tile in registers by
  ``_gemm_kernel`` (no bf16 copies). The K loop runs over even and odd elements separately (low
  and high nibbles): two dots over ``BK/2`` columns each, a permutation of K that only changes the
  rounding order.

Under ``TRITON_INTERPRET=1`` (the CPU tests) the operands go to the dot as float32 — the same
exact values — because the interpreter of Triton 3.9 computes bf16 dots wrongly (NumPy has no
bf16).

``mx_fp8_matmul(a, b)`` runs two MXFP4 operands on the FP8 tensor cores (opt-in: the recipe
switch ``mx_fp8_gemm``): each operand becomes E4M3 codes with a power-of-two scale per row,
exactly (``mx_fp8.mx_to_e4m3``), and ``_scaled_mm`` multiplies them with row-wise scales; output
tiles that touch a row E4M3 cannot hold (its blocks span more than 15 binades) are recomputed on
the bf16 path by a second launch, without a synchronisation. The products are exact, but
Hopper's FP8 MMA adds them with fewer bits than FP32 before cuBLAS promotes the partial sums to
FP32 (DeepSeek-V3 §3.3.2 measured ~14), so the result is not the FP32-accumulated reference up
to rounding order: the benchmark measures the difference.

``fp8_matmul(a, b)`` runs per-tensor FP8 operands (``fp8_e4m3`` / ``fp8_e5m2``, not both E5M2)
on Hopper's FP8 tensor cores: ``_scaled_mm(codes_a, codes_bᵀ, s_a, s_b)`` with FP32 output.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fp4train.quant.tensor import QuantizedTensor

from .fp8 import FP8_DTYPES
from .mx_fp8 import mx_to_e4m3
from .triton_common import device_limits, indexable_by_int32, interpreting, placeholder

__all__ = ["fp4_supported", "fp4_matmul", "dequantize_fp4", "fp8_supported", "fp8_matmul", "mx_fp8_supported", "mx_fp8_matmul"]

_FP4_FORMATS = ("nvfp4", "mxfp4")
# (BM, BN, BK, GROUP_M, num_warps, num_stages); BK a multiple of every block width (16, 32)
DEFAULT_CONFIG = (256, 128, 64, 8, 8, 3)  # bf16 operands (dequantized first): best of four on H100
FUSED_CONFIG = (128, 128, 64, 8, 4, 4)  # fused dequantization: best of four on H100 (NOTES.md v1)
TMA_CONFIG = (128, 256, 64, 8, 8, 3)  # the persistent TMA kernel: Triton's tutorial for Hopper


@triton.jit
def _e2m1_value(c):
    """float32 value of E2M1 codes (int32 in 0..15): ``formats.decode(c, E2M1)``. The code's
    exponent and mantissa bits placed at float32's exponent/mantissa boundary give
    ``value · 2^-126`` (code 1 lands on a subnormal), so one exact multiply by 2^126 decodes it."""
    bits = ((c & 8) << 28) | ((c & 7) << 22)
    return bits.to(tl.float32, bitcast=True) * 8.507059173023462e37


@triton.jit
def _scale_value(c, MX: tl.constexpr):
    """float32 value of block scale codes (int32 in 0..255): ``e8m0_decode`` (MX) or
    ``formats.decode(c, E4M3)`` (NVFP4); NaN codes give NaN."""
    if MX:
        v = tl.where(c == 0, 5.877471754111438e-39, (c << 23).to(tl.float32, bitcast=True))  # 2^-127
        return tl.where(c == 255, float("nan"), v)
    e = (c >> 3) & 15
    normal = (((e + 120) << 23) | ((c & 7) << 20)).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, (c & 7).to(tl.float32) * 0.001953125, normal)
    return tl.where((c & 0x7F) == 0x7F, float("nan"), v)


@triton.jit
def _block_scales(scales_ptr, rows, n_rows, k0, K, BK: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                  MX: tl.constexpr):
    """float32 block scale of every packed byte (element pair) of columns ``k0 .. k0+BK``: one
    load per block, broadcast over its ``BC/2`` bytes; shape (R, BK/2)."""
    R: tl.constexpr = rows.shape[0]
    sc = k0 // BC + tl.arange(0, BK // BC)
    mask = (rows[:, None] < n_rows) & (sc[None, :] < K // BC)
    s = tl.load(scales_ptr + (rows[:, None] // BR) * (K // BC) + sc[None, :], mask=mask, other=0).to(tl.int32)
    v = tl.broadcast_to(tl.reshape(_scale_value(s, MX), (R, BK // BC, 1)), (R, BK // BC, BC // 2))
    return tl.reshape(v, (R, BK // 2))


@triton.jit
def _operand_halves(codes_ptr, scales_ptr, rows, n_rows, k0, K, BK: tl.constexpr, BR: tl.constexpr,
                    BC: tl.constexpr, MX: tl.constexpr):
    """float32 ``element · block_scale`` of the even and odd columns ``k0 .. k0+BK`` of the given
    rows (each (R, BK/2)): ``padded_values(with_tensor_scale=False)[rows, k0::2]`` and ``[.., k0+1::2]``;
    exact, and exact in bf16."""
    pc = k0 // 2 + tl.arange(0, BK // 2)
    mask = (rows[:, None] < n_rows) & (pc[None, :] < K // 2)
    packed = tl.load(codes_ptr + rows[:, None] * (K // 2) + pc[None, :], mask=mask, other=0).to(tl.int32)
    scale = _block_scales(scales_ptr, rows, n_rows, k0, K, BK, BR, BC, MX)
    return _e2m1_value(packed & 15) * scale, _e2m1_value(packed >> 4) * scale


@triton.jit
def _dequant_kernel(codes_ptr, scales_ptr, out_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                    BR: tl.constexpr, BC: tl.constexpr, MX: tl.constexpr):
    """``qt.padded_values(with_tensor_scale=False).to(bfloat16)`` (exact) of an FP4 operand."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k0 = tl.program_id(1) * BLOCK_K
    lo, hi = _operand_halves(codes_ptr, scales_ptr, rows, R, k0, K, BLOCK_K, BR, BC, MX)
    v = tl.reshape(tl.join(lo, hi), (BLOCK_R, BLOCK_K))  # element 2i from the low nibble
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], v.to(tl.bfloat16),
             mask=(rows[:, None] < R) & (cols[None, :] < K))


@triton.jit
def _grouped_tile(tile, n_m, n_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of output tile number ``tile`` of an ``n_m × n_n`` grid in grouped
    order: ``GROUP_M`` row bands at a time walk the columns, so the B tiles they share stay in L2."""
    group = tile // (GROUP_M * n_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (tile % (GROUP_M * n_n)) % size_m, (tile % (GROUP_M * n_n)) // size_m


@triton.jit
def _gemm_kernel(
    a_ptr, a_scales, b_ptr, b_scales, c_ptr, ta_ptr, tb_ptr, a_exact_ptr, b_exact_ptr, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, FUSED: tl.constexpr, FIXUP: tl.constexpr,
    A_BR: tl.constexpr, A_BC: tl.constexpr, A_MX: tl.constexpr,
    B_BR: tl.constexpr, B_BC: tl.constexpr, B_MX: tl.constexpr,
    HAS_TA: tl.constexpr, HAS_TB: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    """``C = ((A' B'ᵀ) · t_a) · t_b`` (``fp4train.quant.matmul.quantized_matmul``) for ``A`` (M, K) and
    ``B`` (N, K). ``FUSED``: ``a_ptr``/``b_ptr`` hold packed FP4 codes, dequantized per tile in
    registers; else they hold ``A'``/``B'`` in bf16 (``_dequant_kernel``). Grouped program order
    for L2 reuse. ``FIXUP``: only the tiles with a row of ``A`` or ``B`` whose flag at
    ``a_exact_ptr``/``b_exact_ptr`` is False are computed and stored; the others exit."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    rows_a = pid_m * BM + tl.arange(0, BM)
    rows_b = pid_n * BN + tl.arange(0, BN)
    if FIXUP:
        exact_a = tl.min(tl.load(a_exact_ptr + rows_a, mask=rows_a < M, other=1).to(tl.int32))
        exact_b = tl.min(tl.load(b_exact_ptr + rows_b, mask=rows_b < N, other=1).to(tl.int32))
        if (exact_a & exact_b) == 1:
            return
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        if FUSED:
            a_lo, a_hi = _operand_halves(a_ptr, a_scales, rows_a, M, k0, K, BK, A_BR, A_BC, A_MX)
            b_lo, b_hi = _operand_halves(b_ptr, b_scales, rows_b, N, k0, K, BK, B_BR, B_BC, B_MX)
            acc = tl.dot(a_lo.to(DOT_DTYPE), tl.trans(b_lo.to(DOT_DTYPE)), acc, input_precision="ieee")
            acc = tl.dot(a_hi.to(DOT_DTYPE), tl.trans(b_hi.to(DOT_DTYPE)), acc, input_precision="ieee")
        else:
            ks = k0 + tl.arange(0, BK)
            a = tl.load(a_ptr + rows_a[:, None] * K + ks[None, :], mask=(rows_a[:, None] < M) & (ks[None, :] < K), other=0.0)
            b = tl.load(b_ptr + rows_b[:, None] * K + ks[None, :], mask=(rows_b[:, None] < N) & (ks[None, :] < K), other=0.0)
            acc = tl.dot(a.to(DOT_DTYPE), tl.trans(b.to(DOT_DTYPE)), acc, input_precision="ieee")
    if HAS_TA:
        acc = acc * tl.load(ta_ptr)
    if HAS_TB:
        acc = acc * tl.load(tb_ptr)
    mask = (rows_a[:, None] < M) & (rows_b[None, :] < N)
    tl.store(c_ptr + rows_a[:, None] * N + rows_b[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_tma_kernel(
    a_ptr, b_ptr, c_ptr, ta_ptr, tb_ptr, M, N, K, programs,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_TA: tl.constexpr, HAS_TB: tl.constexpr, DOT_DTYPE: tl.constexpr, SUBTILES: tl.constexpr,
):
    """``_gemm_kernel``'s bf16 path (``A'``, ``B'`` from ``_dequant_kernel``; ``C = ((A' B'ᵀ) · t_a)
    · t_b``) as a persistent kernel: ``programs`` programs (one per SM) walk the output tiles in
    grouped order, and operand tiles move by TMA (Hopper's bulk copy engine, from tensor
    descriptors made on the device: out-of-range reads give zeros), as in Triton's persistent
    matmul tutorial. The output tile is stored by TMA too (clipped at the edges), in ``SUBTILES``
    (1 or 2) column halves: the store stages its data in shared memory, and half an FP32 tile
    leaves room for one more pipeline stage of operand tiles."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN // SUBTILES])
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), n_m * n_n, programs, flatten=True):
        pid_m, pid_n = _grouped_tile(tile, n_m, n_n, GROUP_M)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k0])
            b = b_desc.load([pid_n * BN, k0])
            acc = tl.dot(a.to(DOT_DTYPE), tl.trans(b.to(DOT_DTYPE)), acc, input_precision="ieee")
        if HAS_TA:
            acc = acc * tl.load(ta_ptr)
        if HAS_TB:
            acc = acc * tl.load(tb_ptr)
        if SUBTILES == 2:
            left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            c_desc.store([pid_m * BM, pid_n * BN], left.to(c_desc.dtype))
            c_desc.store([pid_m * BM, pid_n * BN + BN // 2], right.to(c_desc.dtype))
        else:
            c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


def fp4_supported(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    """Both operands FP4 (NVFP4/MXFP4) with blocks of width 16/32 (1, 16 or 32 rows) and the same padded K;
    operands and output of fewer than 2^31 elements (``indexable_by_int32``)."""
    ok = all(q.spec.fmt in _FP4_FORMATS and q.spec.block_shape[1] in (16, 32) for q in (a, b))
    return ok and a.padded[1] == b.padded[1] and a.padded[1] % 32 == 0 and _indexable(a, b)


def _indexable(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    (m, k), (n, _) = a.padded, b.padded
    return indexable_by_int32(m * k, n * k, m * n)


def dequantize_fp4(qt: QuantizedTensor) -> torch.Tensor:
    """``qt.padded_values(with_tensor_scale=False)`` as bf16 (exact) for an FP4 operand, by
    ``_dequant_kernel``: the padded (M, K) matrix ``element · block_scale`` (RHT domain kept)."""
    (r, k), (br, bc) = qt.padded, qt.spec.block_shape
    out = torch.empty(r, k, dtype=torch.bfloat16, device=qt.data.device)
    block_r, block_k = 32, 256
    _dequant_kernel[(triton.cdiv(r, block_r), triton.cdiv(k, block_k))](
        qt.data, qt.scales, out, r, k, BLOCK_R=block_r, BLOCK_K=block_k, BR=br, BC=bc, MX=qt.spec.fmt == "mxfp4",
        num_warps=8,
    )
    return out


def fp4_matmul(
    a: QuantizedTensor,
    b: QuantizedTensor,
    out_dtype: torch.dtype = torch.float32,
    config: tuple[int, int, int, int, int, int] | None = None,
    fused: bool = False,
    cublas: bool | None = None,
    tma: bool | None = None,
) -> torch.Tensor:
    """``quantized_matmul(a, b, out_dtype)`` for FP4 operands (see ``fp4_supported``): ``A Bᵀ``
    cropped to the unpadded (M, N). Each operand is dequantized once to bf16 (``dequantize_fp4``,
    exact); then either cuBLAS multiplies into an FP32 output (``torch.mm(..., out_dtype=float32)``:
    exact products, FP32 accumulation, no intermediate rounding) and the tensor scales are applied
    after, or Triton does it with the scales in its epilogue: the persistent TMA kernel
    (``_gemm_tma_kernel``, ``TMA_CONFIG`` unless ``config``) where the output rows are 16-byte
    aligned and its tiles fit in shared memory (``tma=None``; ``tma=True`` raises where they do
    not), else ``_gemm_kernel``.
    ``cublas=None`` picks cuBLAS on a GPU when the output has fewer Triton tiles than the GPU has
    SMs (cuBLAS splits K), or when there are no tensor scales (MXFP4) and the output is FP32 or
    TMA is not possible; Triton otherwise and under ``TRITON_INTERPRET``.
    ``fused=True`` dequantizes per tile inside ``_gemm_kernel`` (no bf16 copies, each tile
    decoded N/BN times)."""
    if not fp4_supported(a, b):
        raise ValueError(
            f"fp4_matmul needs NVFP4/MXFP4 operands with blocks of width 16/32 and equal padded K "
            f"(a multiple of 32); got {a.spec.fmt} {a.padded} block {a.spec.block_shape} and "
            f"{b.spec.fmt} {b.padded} block {b.spec.block_shape}"
        )
    (mp, k), (np_, _) = a.padded, b.padded
    tma_possible = not fused and np_ * out_dtype.itemsize % 16 == 0
    subtiles = _output_subtiles(config or TMA_CONFIG, out_dtype, a.data.device) if tma_possible else None
    if tma and subtiles is None:
        raise ValueError(
            f"tma=True needs dequantized operands (not fused={fused}), 16-byte output rows ({np_} × "
            f"{out_dtype}) and tiles {config or TMA_CONFIG} that fit in shared memory"
        )
    tma = subtiles is not None if tma is None else tma
    bm, bn, bk, group_m, warps, stages = config or (FUSED_CONFIG if fused else TMA_CONFIG if tma else DEFAULT_CONFIG)
    a_in, b_in = (a.data, b.data) if fused else (dequantize_fp4(a), dequantize_fp4(b))
    m, n = a.shape[:-1].numel(), b.shape[:-1].numel()
    if cublas is None:  # measured (NOTES.md v7): without tensor scales (MXFP4) cuBLAS writes an FP32
        # output directly and beats the Triton kernels there (TMA's FP32 output tile halves its
        # pipeline) and where TMA is not possible; for bf16 outputs the TMA kernel beats cuBLAS's
        # FP32 output and cast; cuBLAS splits K where the output has too few tiles to fill the
        # GPU (Wgrad: small M×N, long K), where a Triton kernel leaves most SMs idle
        few_tiles = a.data.is_cuda and triton.cdiv(mp, bm) * triton.cdiv(np_, bn) < device_limits(a.data.device)[0]
        no_scales = a.tensor_scale is None and b.tensor_scale is None
        fp32_out = out_dtype == torch.float32
        cublas = a.data.is_cuda and not interpreting() and (few_tiles or (no_scales and (fp32_out or not tma)))
    if cublas and not fused:
        c = torch.mm(a_in, b_in.T, out_dtype=torch.float32)
        for t in (a.tensor_scale, b.tensor_scale):  # in the reference's order: (C·t_a)·t_b
            if t is not None:
                c.mul_(t)
        return c[:m, :n].to(out_dtype)
    c = torch.empty(mp, np_, dtype=out_dtype, device=a.data.device)
    if tma:
        _tma_gemm(a, b, a_in, b_in, c, (bm, bn, bk, group_m, warps, stages), subtiles)
    else:
        _triton_gemm(a, b, a_in, b_in, c, (bm, bn, bk, group_m, warps, stages), fused)
    return c[:m, :n]


def _output_subtiles(config: tuple[int, int, int, int, int, int], out_dtype: torch.dtype, device: torch.device) -> int | None:
    """In how many column halves (1 or 2) ``_gemm_tma_kernel`` with ``config`` must store its output
    tile to fit the device's shared memory, which holds ``stages`` bf16 operand tiles,
    ``stages · (BM + BN) · BK · 2`` bytes, and the part of the output tile being stored: an FP32
    tile of 128×256 (128 KiB) needs halves beside 3 stages on a Hopper GPU (227 KiB); ``None``
    if even halves do not fit (then the grid kernel runs). The interpreter has no limit."""
    if interpreting():
        return 1
    shared = device_limits(device)[1]
    bm, bn, bk, _, _, stages = config
    operands = stages * (bm + bn) * bk * 2 + 1024  # + barriers
    return next((n for n in (1, 2) if operands + bm * bn * out_dtype.itemsize // n <= shared), None)


def _epilogue_args(a: QuantizedTensor, b: QuantizedTensor, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """What both Triton GEMM kernels take for their epilogue: the tensor-scale pointers (a
    placeholder where an operand has none), ``HAS_TA``/``HAS_TB``, and the dot's operand dtype
    (float32 under the interpreter, whose bf16 dot is wrong; the values are the same, exact)."""
    dummy = placeholder(device, torch.float32)
    ptrs = tuple(q.tensor_scale if q.tensor_scale is not None else dummy for q in (a, b))
    flags = dict(HAS_TA=a.tensor_scale is not None, HAS_TB=b.tensor_scale is not None)
    return ptrs, dict(flags, DOT_DTYPE=tl.float32 if interpreting() else tl.bfloat16)


def _descriptor_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    """Memory for the tensor descriptors a kernel makes on the device (Triton's allocator hook)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreting() else "cuda")


def _tma_gemm(
    a: QuantizedTensor, b: QuantizedTensor, a_in: torch.Tensor, b_in: torch.Tensor, c: torch.Tensor,
    config: tuple[int, int, int, int, int, int], subtiles: int,
) -> None:
    """``_gemm_tma_kernel`` writing the padded (M, N) ``c`` from the bf16 ``dequantize_fp4``
    copies, storing output tiles in ``subtiles`` column halves; one program per SM (4 under the
    interpreter). Sets Triton's allocator, which the descriptors made on the device need, to
    PyTorch's."""
    (mp, k), (np_, _) = a.padded, b.padded
    bm, bn, bk, group_m, warps, stages = config
    tiles = triton.cdiv(mp, bm) * triton.cdiv(np_, bn)
    programs = min(tiles, 4 if interpreting() else device_limits(c.device)[0])
    scale_ptrs, epilogue = _epilogue_args(a, b, c.device)
    triton.set_allocator(_descriptor_scratch)
    _gemm_tma_kernel[(programs,)](
        a_in, b_in, c, *scale_ptrs, mp, np_, k, programs, BM=bm, BN=bn, BK=bk, GROUP_M=group_m, SUBTILES=subtiles,
        **epilogue, num_warps=warps, num_stages=stages,
    )


def _triton_gemm(
    a: QuantizedTensor, b: QuantizedTensor, a_in: torch.Tensor, b_in: torch.Tensor, c: torch.Tensor,
    config: tuple[int, int, int, int, int, int], fused: bool,
    exact: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """``_gemm_kernel`` writing the padded (M, N) ``c``; ``a_in``/``b_in``: packed codes (``fused``)
    or ``dequantize_fp4`` copies. ``exact``: per-row bool flags of ``a`` and ``b``; then only the
    tiles touching a False row are written (``FIXUP``)."""
    (mp, k), (np_, _) = a.padded, b.padded
    bm, bn, bk, group_m, warps, stages = config
    dummy = placeholder(a.data.device, torch.float32)
    a_exact, b_exact = exact or (dummy, dummy)
    scale_ptrs, epilogue = _epilogue_args(a, b, a.data.device)
    grid = (triton.cdiv(mp, bm) * triton.cdiv(np_, bn),)
    _gemm_kernel[grid](
        a_in, a.scales, b_in, b.scales, c, *scale_ptrs, a_exact, b_exact,
        mp, np_, k, BM=bm, BN=bn, BK=bk, GROUP_M=group_m, FUSED=fused, FIXUP=exact is not None,
        A_BR=a.spec.block_shape[0], A_BC=a.spec.block_shape[1], A_MX=a.spec.fmt == "mxfp4",
        B_BR=b.spec.block_shape[0], B_BC=b.spec.block_shape[1], B_MX=b.spec.fmt == "mxfp4",
        **epilogue, num_warps=warps, num_stages=stages,
    )


def fp8_supported(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    """Per-tensor FP8 operands that cuBLASLt multiplies: not both E5M2, dims multiples of 16."""
    if a.spec.fmt not in FP8_DTYPES or b.spec.fmt not in FP8_DTYPES:
        return False
    if a.spec.fmt == b.spec.fmt == "fp8_e5m2":
        return False
    (m, k), (n, kb) = a.padded, b.padded
    return k == kb and k % 16 == 0 and n % 16 == 0 and m % 16 == 0


def fp8_matmul(a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``quantized_matmul(a, b)`` for per-tensor FP8 on FP8 tensor cores: ``_scaled_mm`` computes
    ``(s_a·s_b)·(A Bᵀ)`` with FP32 accumulation (not ``(acc·s_a)·s_b``: last-bit differences)."""
    if not fp8_supported(a, b):
        raise ValueError(
            f"fp8_matmul needs per-tensor FP8 operands (not both E5M2) with dims multiples of 16; "
            f"got {a.spec.fmt} {a.padded} and {b.spec.fmt} {b.padded}"
        )
    # cuBLASLt takes A row-major and B column-major only: codes of a transposed view may be neither
    qa = a.data.contiguous().view(FP8_DTYPES[a.spec.fmt])
    qb = b.data.contiguous().view(FP8_DTYPES[b.spec.fmt])
    out = torch._scaled_mm(
        qa, qb.t(), scale_a=a.scales.reshape(()).float(), scale_b=b.scales.reshape(()).float(), out_dtype=torch.float32
    )
    m, n = a.shape[:-1].numel(), b.shape[:-1].numel()
    return out[:m, :n].to(out_dtype)


def mx_fp8_supported(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    """Two MXFP4 operands with 1×32 blocks, equal padded K, and M, N multiples of 16 (cuBLASLt);
    operands and output of fewer than 2^31 elements."""
    ok = all(q.spec.fmt == "mxfp4" and q.spec.block_shape == (1, 32) for q in (a, b))
    return ok and a.padded[1] == b.padded[1] and a.padded[0] % 16 == 0 and b.padded[0] % 16 == 0 and _indexable(a, b)


@functools.lru_cache(maxsize=None)
def _rowwise_out_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Output dtypes that this PyTorch build's row-wise scaled ``_scaled_mm`` accepts on
    ``device`` (bf16 always; float32 in some builds), found once by a 16×32×16 probe."""
    a = torch.zeros(16, 32, dtype=torch.float8_e4m3fn, device=device)
    s = torch.ones(16, 1, dtype=torch.float32, device=device)
    try:
        torch._scaled_mm(a, a.t(), scale_a=s, scale_b=s.t(), out_dtype=torch.float32)
    except RuntimeError:  # "Only bf16 high precision output types are supported for row-wise scaling"
        return (torch.bfloat16,)
    return (torch.bfloat16, torch.float32)


def mx_fp8_matmul(a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor | None:
    """``A Bᵀ`` of two MXFP4 operands on FP8 tensor cores: ``(Y_a Y_bᵀ) · 2^(r_a-6) · 2^(r_b-6)``
    with ``Y`` the exact E4M3 rewrite of each operand (``mx_to_e4m3``), cropped to (M, N).
    Rows whose nonzero blocks span more than the 15 binades that E4M3 holds (or whose exponent
    passes ±56) are flagged by the rewrite; a second launch (``_gemm_kernel`` with ``FIXUP``)
    recomputes on the exact bf16 path every output tile that touches a flagged row of A or B
    and leaves the others — all on the device, no synchronisation. ``None`` (the caller runs
    the bf16 path) when the row-wise ``_scaled_mm`` cannot write ``out_dtype``."""
    if not mx_fp8_supported(a, b):
        raise ValueError(
            f"mx_fp8_matmul needs two MXFP4 operands with 1x32 blocks, equal padded K and row counts "
            f"that are multiples of 16; got {a.spec.fmt} {a.padded} block {a.spec.block_shape} and "
            f"{b.spec.fmt} {b.padded} block {b.spec.block_shape}"
        )
    if out_dtype not in _rowwise_out_dtypes(a.data.device):
        return None
    ya, sa, exact_a = mx_to_e4m3(a)
    yb, sb, exact_b = mx_to_e4m3(b)
    e4m3 = torch.float8_e4m3fn
    out = torch._scaled_mm(ya.view(e4m3), yb.view(e4m3).t(), scale_a=sa, scale_b=sb.t(), out_dtype=out_dtype)
    _triton_gemm(a, b, a.data, b.data, out, FUSED_CONFIG, fused=True, exact=(exact_a, exact_b))
    return out[: a.shape[:-1].numel(), : b.shape[:-1].numel()]
