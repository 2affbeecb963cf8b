"""Transposing packed FP4 codes in one pass: the GPU path of ``fp4train.quant.transpose``.

An (M, K) matrix of E2M1 codes is stored packed two per byte along K, (M, K/2) bytes with
element ``2i`` in the low nibble; its transpose is stored the same way along M, (K, M/2). A
tile of bytes is split into codes in registers, transposed and packed again: one read and one
write of the codes, against an amax pass and a quantize pass over the source tensor for
quantizing the transpose anew.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import indexable_by_int32

__all__ = ["transpose_fp4_codes"]

_TILE = (64, 64)  # codes per tile (rows, cols): 2 KiB read and written per program


@triton.jit
def _transpose_fp4_kernel(src, dst, M, K, BM: tl.constexpr, BK: tl.constexpr):
    """``pack_fp4(unpack_fp4(src).T)`` for the (BM, BK) tile of codes at this program's origin."""
    r0 = tl.program_id(0) * BM
    c0 = tl.program_id(1) * BK
    rows = r0 + tl.arange(0, BM)
    pcols = c0 // 2 + tl.arange(0, BK // 2)
    packed = tl.load(src + rows[:, None] * (K // 2) + pcols[None, :],
                     mask=(rows[:, None] < M) & (pcols[None, :] < K // 2), other=0)
    codes = tl.reshape(tl.join(packed & 15, packed >> 4), (BM, BK))  # element 2i from the low nibble
    lo, hi = tl.split(tl.reshape(tl.trans(codes), (BK, BM // 2, 2)))
    trows = c0 + tl.arange(0, BK)
    tcols = r0 // 2 + tl.arange(0, BM // 2)
    tl.store(dst + trows[:, None] * (M // 2) + tcols[None, :], lo | (hi << 4),
             mask=(trows[:, None] < K) & (tcols[None, :] < M // 2))


def transpose_fp4_codes(packed: torch.Tensor) -> torch.Tensor:
    """The packed codes of the transpose of the matrix whose packed codes are ``packed``
    ((M, K/2) uint8 → (K, M/2)); M must be even (``ValueError`` otherwise)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed FP4 codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    m, k = packed.shape[0], 2 * packed.shape[1]
    if m % 2 or not indexable_by_int32(m * k):
        raise ValueError(f"cannot transpose packed FP4 codes of a {m}×{k} matrix: an even row count and fewer than 2^31 codes needed")
    src = packed.contiguous()
    out = torch.empty(k, m // 2, dtype=torch.uint8, device=packed.device)
    bm, bk = _TILE
    _transpose_fp4_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bk))](src, out, m, k, BM=bm, BK=bk, num_warps=4)
    return out
