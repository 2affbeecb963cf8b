"""Per-tensor FP8 current scaling on the GPU: both orientations of an operand from one read.

``quantize_fp8(x, row_spec, col_spec)`` equals ``(quantize(x, row_spec), quantize(x_mat.T,
col_spec))`` of ``fp4train.quant`` for per-tensor ``fp8_e4m3`` / ``fp8_e5m2`` with round-to-nearest
and no RHT, bit for bit (the codes of finite values and the FP32 decode scale). Two launches:
the amax pass shared with the FP4 quantizer (``triton_common.amax_kernel``, one read of ``x``: the
tensor amax, NaN propagating), then ``_fp8_kernel``, which reads each tile once and writes the
codes of one or both orientations — the column-wise copy (``x.T`` quantized, the operand layout
that ``_scaled_mm`` wants for Dgrad and Wgrad) through a transposed store.

Per element, as ``reference.quantize``: ``s_enc = min(max/amax, FLT_MAX)`` (``blocks.fp32_scale``,
correctly rounded), then ``RN-even(clamp(x·s_enc, ±max))`` on the FP8 grid. The rounding is done
with integer operations on the float32 bits (``triton_common.fp8_rn``), not by the hardware cast:
Triton's interpreter, which runs these kernels in CI, truncates in its float→FP8 cast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fp4train.quant.tensor import QuantizedTensor
from fp4train.quant.spec import QuantSpec

from .triton_common import amax_kernel, fp8_rn, indexable_by_int32, load_tile, placeholder, tensor_scales, tile_origin

__all__ = ["FP8_DTYPES", "fp8_quantize_supported", "quantize_fp8"]

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_FP8_BITS = {"fp8_e4m3": (3, 7), "fp8_e5m2": (2, 15)}  # (mantissa bits, exponent bias)
_TILE = (32, 256, 8, 4)  # (BM, BK, VEC, num_warps): best of five on an H200 (NOTES.md v6)


@triton.jit
def _fp8_codes(v, MAN: tl.constexpr, BIAS: tl.constexpr, MAX: tl.constexpr):
    """uint8 codes of ``encode(round_to_grid(clamp(v, -MAX, MAX), fmt, "rn"))`` for float32 ``v``;
    the sign goes to bit 7 (``-0.0`` → 0x80) and NaN to 0x7F (a NaN in E4M3 and E5M2)."""
    bits = v.to(tl.int32, bitcast=True)
    a = tl.minimum((bits & 0x7FFFFFFF).to(tl.float32, bitcast=True), MAX)
    code, _ = fp8_rn(a, MAN, BIAS)
    code = tl.where(v != v, 0x7F, code | ((bits >> 24) & 0x80))
    return code.to(tl.uint8)


@triton.jit
def _quantize_fp8_tile(x, amax, codes_ptr, ts_ptr, rows, cols, n_cols, mask,
                       MAN: tl.constexpr, BIAS: tl.constexpr, MAX: tl.constexpr):
    """Codes of the float32 tile ``x`` (its element ``[i, j]`` goes to ``codes[rows[i], cols[j]]``
    of a matrix with ``n_cols`` columns); the first program also writes the decode scale."""
    s_enc, s_dec = tensor_scales(amax, MAX)
    tl.store(codes_ptr + rows[:, None] * n_cols + cols[None, :], _fp8_codes(x * s_enc, MAN, BIAS, MAX), mask=mask)
    if tl.program_id(0) == 0:
        tl.store(ts_ptr, s_dec)


@triton.jit
def _fp8_kernel(
    x_ptr, M, K, stride, amax_ptr, row_codes, row_ts, col_codes, col_ts,
    BM: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr,
    ROW: tl.constexpr, ROW_MAN: tl.constexpr, ROW_BIAS: tl.constexpr, ROW_MAX: tl.constexpr,
    COL: tl.constexpr, COL_MAN: tl.constexpr, COL_BIAS: tl.constexpr, COL_MAX: tl.constexpr,
):
    """``reference.quantize(x, row_spec)`` (ROW: codes (M, K)) and ``reference.quantize(x.T, col_spec)`` (COL:
    codes (K, M)) of one (BM, BK) tile, given the tensor amax (int32 bits) at ``amax_ptr``."""
    r0, c0, _ = tile_origin(M, K, BM, BK, True, 1)  # after the amax pass: start where it ended (L2)
    x = load_tile(x_ptr, M, K, stride, r0, c0, BM, BK, VEC).to(tl.float32)
    amax = tl.load(amax_ptr).to(tl.float32, bitcast=True)
    rows = r0 + tl.arange(0, BM)
    cols = c0 + tl.arange(0, BK)
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    if ROW:
        _quantize_fp8_tile(x, amax, row_codes, row_ts, rows, cols, K, mask, ROW_MAN, ROW_BIAS, ROW_MAX)
    if COL:
        _quantize_fp8_tile(tl.trans(x), amax, col_codes, col_ts, cols, rows, M, tl.trans(mask), COL_MAN, COL_BIAS, COL_MAX)


def fp8_quantize_supported(x: torch.Tensor, spec: QuantSpec) -> bool:
    """Per-tensor FP8 with RN and no RHT, of a non-empty bf16/fp16/fp32 tensor of fewer than
    2^31 elements."""
    return (
        spec.fmt in FP8_DTYPES and spec.rounding == "rn" and spec.rht is None and x.dim() > 0 and x.numel() > 0
        and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and indexable_by_int32(x.numel())
    )


def quantize_fp8(
    x: torch.Tensor,
    row_spec: QuantSpec | None,
    col_spec: QuantSpec | None,
    tile: tuple[int, int, int, int] | None = None,
) -> tuple[QuantizedTensor | None, QuantizedTensor | None]:
    """``(quantize(x, row_spec), quantize(x_mat.T, col_spec))`` for per-tensor FP8 specs (see
    ``fp8_quantize_supported``), ``x_mat`` = ``x`` viewed as a matrix (M, K); either spec may be
    ``None`` to skip that orientation. One amax pass and one quantize pass over ``x`` (copied
    first if its last dim is strided). ``tile``: ``(BM, BK, VEC, num_warps)`` (benchmarks)."""
    specs = [s for s in (row_spec, col_spec) if s is not None]
    if not specs:
        raise ValueError("quantize_fp8 needs at least one of row_spec, col_spec")
    for s in specs:
        if not fp8_quantize_supported(x, s):
            raise ValueError(
                f"quantize_fp8 takes per-tensor fp8_e4m3/fp8_e5m2 with RN and no RHT of a non-empty "
                f"bf16/fp16/fp32 tensor of fewer than 2^31 elements; got {s} for a {x.dtype} tensor of "
                f"shape {tuple(x.shape)}"
            )
    xm = x.reshape(-1, x.shape[-1])
    if xm.stride(-1) != 1:
        xm = xm.contiguous()
    m, k = xm.shape
    dev = x.device
    bm, bk, vec, warps = tile or _TILE
    grid = (triton.cdiv(m, bm) * triton.cdiv(k, bk),)
    amax = torch.zeros(1, dtype=torch.int32, device=dev)
    amax_kernel[grid](
        xm, m, k, xm.stride(0), amax, placeholder(dev, torch.float32), grid[0], BM=bm, BK=bk, VEC=vec, num_warps=warps,
        ROW=True, COL=False, ROW_RHT=0, COL_RHT=0,
    )
    u8, f32 = torch.uint8, torch.float32
    rc, cc = (torch.empty(m, k, dtype=u8, device=dev) if row_spec else None), (torch.empty(k, m, dtype=u8, device=dev) if col_spec else None)
    rts, cts = (torch.empty(1, 1, dtype=f32, device=dev) if s else None for s in (row_spec, col_spec))
    dummy_codes, dummy_ts = placeholder(dev, u8), placeholder(dev, f32)

    def fmt(spec: QuantSpec | None) -> dict:
        man, bias = _FP8_BITS[spec.fmt] if spec else (3, 7)
        return {"MAN": man, "BIAS": bias, "MAX": spec.format.element.max if spec else 448.0}

    row_kw, col_kw = fmt(row_spec), fmt(col_spec)
    _fp8_kernel[grid](
        xm, m, k, xm.stride(0), amax,
        rc if rc is not None else dummy_codes, rts if rts is not None else dummy_ts,
        cc if cc is not None else dummy_codes, cts if cts is not None else dummy_ts,
        BM=bm, BK=bk, VEC=vec, num_warps=warps, enable_fp_fusion=False,
        ROW=row_spec is not None, **{f"ROW_{n}": v for n, v in row_kw.items()},
        COL=col_spec is not None, **{f"COL_{n}": v for n, v in col_kw.items()},
    )
    row = None if row_spec is None else QuantizedTensor(row_spec, x.shape, x.dtype, rc, rts, None, (m, k))
    col = None if col_spec is None else QuantizedTensor(col_spec, torch.Size((k, m)), x.dtype, cc, cts, None, (k, m))
    return row, col
