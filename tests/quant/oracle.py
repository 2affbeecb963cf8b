"""An independent reference for the block formats: NumPy float32 arithmetic + ml_dtypes casts.

Shares no code with ``fp4train.quant``: element rounding is ml_dtypes' round-to-nearest-even
cast (inputs clipped first: ml_dtypes maps e4m3fn overflow to NaN and e5m2 overflow to inf),
MX exponents come from float64 ``log2``/``frexp`` and scales are laid out with ``np.repeat``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

F32 = np.float32
FLT_MAX = np.finfo(np.float32).max
ELEMENTS = {
    "e2m1": (ml_dtypes.float4_e2m1fn, 6.0, 2),
    "e4m3": (ml_dtypes.float8_e4m3fn, 448.0, 8),
    "e5m2": (ml_dtypes.float8_e5m2, 57344.0, 15),
}
FORMATS = {  # name: (element, default block or None for per-tensor, scale kind)
    "nvfp4": ("e2m1", (1, 16), "nv"),
    "mxfp4": ("e2m1", (1, 32), "mx"),
    "mxfp8": ("e4m3", (1, 32), "mx"),
    "fp8_e4m3": ("e4m3", None, "fp32"),
    "fp8_e5m2": ("e5m2", None, "fp32"),
    "fp8_block": ("e4m3", (1, 128), "fp32"),
}


def cast(v: np.ndarray, element: str) -> np.ndarray:
    """RN-even, saturating cast onto ``element``'s grid, back in float32 (NaN stays NaN)."""
    dt, mx, _ = ELEMENTS[element]
    return np.clip(v, -mx, mx).astype(dt).astype(F32)


def block_amax(x: np.ndarray, block) -> np.ndarray:
    """Max |x| of each block of the matrix ``x`` (NaN propagates); an (M/br, K/bc) array."""
    m, k = x.shape
    br, bc = block if block is not None else (m, k)
    return np.abs(x.reshape(m // br, br, k // bc, bc)).max(axis=(1, 3)).astype(F32)


def spread(s: np.ndarray, block, shape) -> np.ndarray:
    m, k = shape
    br, bc = block if block is not None else (m, k)
    return np.repeat(np.repeat(s, br, axis=0), bc, axis=1)


def mx_scale(a: F32, element: str, rule: str) -> F32:
    _, mx, emax = ELEMENTS[element]
    if not np.isfinite(a):
        return F32(np.nan)
    if a == 0:
        k = -127
    elif rule == "floor":
        k = int(np.frexp(np.float64(a))[1]) - 1 - emax
    else:
        k = int(np.ceil(np.log2(np.float64(a) / mx)))
    return F32(np.ldexp(1.0, int(np.clip(k, -127, 127))))


def fake_quantize(x: np.ndarray, fmt: str, block=None, rule: str = "floor") -> np.ndarray:
    """float32 (M, K) in, float32 (M, K) out: the value every element decodes to."""
    element, default_block, kind = FORMATS[fmt]
    block = block or default_block
    x = x.astype(F32)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        amaxes = block_amax(x, block)
        if kind == "mx":
            scale = np.vectorize(lambda a: mx_scale(a, element, rule), otypes=[F32])(amaxes)
            full = spread(scale, block, x.shape)
            return cast(x / full, element) * full
        if kind == "fp32":
            s_enc = np.minimum(F32(ELEMENTS[element][1]) / amaxes, FLT_MAX).astype(F32)
            s_enc[amaxes == 0] = 1
            s_enc[~np.isfinite(amaxes)] = np.nan
            full = spread(s_enc, block, x.shape)
            return cast(x * full, element) * (F32(1) / full)
        # NVFP4, arXiv 2509.25149 App. B with Transformer Engine's order of operations
        t_amax = F32(np.abs(x).max())
        s_enc = F32(1) if t_amax == 0 else np.minimum(F32(2688) / t_amax, FLT_MAX).astype(F32)
        if not np.isfinite(t_amax):
            s_enc = F32(np.nan)
        s_dec = F32(1) / s_enc
        sb = cast(np.minimum(amaxes * (s_enc * F32(1 / 6)), FLT_MAX).astype(F32), "e4m3")
        sb[~np.isfinite(amaxes)] = np.nan
        enc = np.minimum(F32(1) / (sb * s_dec), FLT_MAX).astype(F32)
        q = cast(x * spread(enc, block, x.shape), "e2m1")
        return (q * spread(sb, block, x.shape)) * s_dec


def te_mxfp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transformer Engine's MXFP8 (E4M3) cast of float32 ``x`` (M, K), 1×32 blocks: ``(values,
    E8M0 codes)``. TE (``common/util/ptx.cuh`` / ``utils.cuh``): code = ``float_to_e8m0(amax *
    fp32(1/448))``, the FP32 product rounded *up* to a power of two (``cvt.rp.satfinite.ue8m0x2``
    on sm_100, the same rule in integer code elsewhere); elements ``e4m3_satfinite(x *
    exp2f_rcp(code))`` with ``exp2f_rcp(0) = 1``; value ``element · 2^(code − 127)``. Finite
    input only (TE saturates an Inf amax to code 0xFE)."""
    m, k = x.shape
    amax = block_amax(x, (1, 32))
    with np.errstate(over="ignore"):
        val = (amax * (F32(1) / F32(448))).astype(F32)
    bits = val.view(np.uint32)
    exp, man = (bits >> 23).astype(np.int64) & 0xFF, bits & 0x7FFFFF
    codes = exp + ((man > 0) & (exp != 0xFE) & ~((exp == 0) & (man <= 0x400000)))
    rcp = np.where(codes == 0, 1.0, np.ldexp(1.0, (127 - codes).astype(np.int32)))
    elements = cast((x * spread(rcp, (1, 32), x.shape)).astype(F32), "e4m3")
    values = elements * spread(np.ldexp(1.0, (codes - 127).astype(np.int32)), (1, 32), x.shape)
    return values.astype(F32), codes.astype(np.uint8)
