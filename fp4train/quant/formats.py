"""Element formats: E2M1 (FP4), E4M3 and E5M2 (FP8), E8M0 (power-of-two scales).

Everything here is elementwise and exact: a value is rounded onto a format's grid in
float32 arithmetic where every step (power-of-two scaling, ``floor``/``round``, the
difference to the lower grid point) is exact, so the result does not depend on how the
arithmetic is vectorised. That is what lets the Triton kernels match this code bit for bit.

Sources: OCP 8-bit Floating Point Specification (OFP8) rev. 1.0 (E4M3 "fn", E5M2);
OCP Microscaling Formats (MX) Specification v1.0 §5.3 (E2M1, E8M0).

Rounding (``round_to_grid``):

* ``rn``: round to nearest, ties to even, saturating to ``±max`` (the OCP "satfinite"
  conversion). E2M1 decision points on |x|: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2,
  3.5→4, 5→4, above 5→6.
* ``sr``: stochastic rounding. With ``lo <= |x| < hi`` the neighbouring grid points and
  ``f = (|x| - lo) / (hi - lo)`` the fraction, a ``b``-bit random integer ``r`` rounds up
  iff ``floor(f * 2^b) + r >= 2^b`` — "add random bits below the kept mantissa, then
  truncate", as hardware SR (Blackwell ``cvt.rs``, 8 bits) does. ``P(up) = floor(f 2^b)/2^b``,
  so ``E[SR(x)] = x`` up to ``2^-b`` of a grid step (exact when ``f`` has at most ``b`` bits).
  Values beyond ``±max`` saturate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "ElementFormat",
    "E2M1",
    "E4M3",
    "E5M2",
    "ELEMENT_FORMATS",
    "round_to_grid",
    "grid_neighbours",
    "encode",
    "decode",
    "e8m0_encode_exponent",
    "e8m0_decode",
    "random_bits",
    "floor_log2",
    "pow2",
    "pack_fp4",
    "unpack_fp4",
]


@dataclass(frozen=True)
class ElementFormat:
    """A sign-exponent-mantissa floating-point element format.

    ``emin`` is the exponent of the smallest normal number; below it the grid is uniform
    with step ``2^(emin - mbits)`` (subnormals). ``emax`` is the exponent of ``max``.
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    max: float
    nan_code: int | None  # code written for NaN (None: the format has no NaN)
    inf_code: int | None  # code of +inf (None: no infinities)

    @property
    def nbits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return int(torch.tensor(self.max).log2().floor().item())

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mbits)


E2M1 = ElementFormat("e2m1", ebits=2, mbits=1, bias=1, max=6.0, nan_code=None, inf_code=None)
E4M3 = ElementFormat("e4m3", ebits=4, mbits=3, bias=7, max=448.0, nan_code=0x7F, inf_code=None)
E5M2 = ElementFormat("e5m2", ebits=5, mbits=2, bias=15, max=57344.0, nan_code=0x7E, inf_code=0x7C)
ELEMENT_FORMATS = {f.name: f for f in (E2M1, E4M3, E5M2)}

ROUNDINGS = ("rn", "sr")


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact ``floor(log2(a))`` for positive finite float32 ``a`` (``frexp`` is exact)."""
    return torch.frexp(a)[1] - 1


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact ``2^e`` in float32 for integer ``e`` in [-149, 127] (subnormals included)."""
    return torch.ldexp(torch.ones_like(e, dtype=torch.float32), e)


def _grid_position(x: torch.Tensor, fmt: ElementFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, quantum)`` with ``|x|`` (saturated at ``max``) ``= t · quantum`` exactly and the grid
    points around ``|x|`` at ``floor(t)·quantum`` and ``(floor(t) + 1)·quantum``."""
    if x.dtype != torch.float32:
        raise TypeError(f"expected float32, got {x.dtype}")
    a = x.abs().clamp(max=fmt.max)  # saturate; clamp keeps NaN
    e = floor_log2(a).clamp(min=fmt.emin)
    quantum = pow2(e - fmt.mbits)
    return a / quantum, quantum  # exact: power-of-two scaling, t < 2^(mbits+1)


def grid_neighbours(x: torch.Tensor, fmt: ElementFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid points of ``fmt`` on either side of float32 ``x``: ``(toward zero, away from
    zero)``, both with the sign of ``x`` (equal when ``x`` is on the grid; ``±max`` beyond it)."""
    t, quantum = _grid_position(x, fmt)
    lo = torch.floor(t)
    hi = torch.where(t > lo, lo + 1, lo)
    return torch.copysign(lo * quantum, x), torch.copysign(hi * quantum, x)


def round_to_grid(
    x: torch.Tensor,
    fmt: ElementFormat,
    rounding: str = "rn",
    rand: torch.Tensor | None = None,
    sr_bits: int = 16,
) -> torch.Tensor:
    """Round float32 ``x`` onto ``fmt``'s grid (saturating at ``±fmt.max``).

    ``rand`` (SR only): integers in ``[0, 2^sr_bits)``, one per element, any integer dtype.
    The sign of ``x`` is kept (``-0.1 -> -0.0``); NaN stays NaN; ``±inf`` saturates.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; valid: {ROUNDINGS}")
    t, quantum = _grid_position(x, fmt)
    if rounding == "rn":
        q = torch.round(t)  # round half to even
    else:
        if rand is None:
            raise ValueError("stochastic rounding needs `rand` (random integers per element)")
        if rand.shape != x.shape:
            raise ValueError(f"rand has shape {tuple(rand.shape)}, expected {tuple(x.shape)}")
        lo = torch.floor(t)
        frac_bits = torch.floor((t - lo) * float(2**sr_bits))  # both steps exact
        up = (frac_bits + rand.to(torch.float32)) >= float(2**sr_bits)
        q = lo + up.to(torch.float32)
    return torch.copysign(q * quantum, x)


@lru_cache(maxsize=None)
def _decode_table(fmt: ElementFormat) -> torch.Tensor:
    """float32 value of every code of ``fmt`` (OFP8 §3 / MX §5.3 bit layouts)."""
    codes = torch.arange(2**fmt.nbits, dtype=torch.int32)
    sign = (codes >> (fmt.nbits - 1)) & 1
    exp_field = (codes >> fmt.mbits) & ((1 << fmt.ebits) - 1)
    mant = (codes & ((1 << fmt.mbits) - 1)).to(torch.float32)
    normal = (mant + 2**fmt.mbits) * pow2(exp_field - fmt.bias - fmt.mbits)
    subnormal = mant * 2.0 ** (fmt.emin - fmt.mbits)
    mag = torch.where(exp_field == 0, subnormal, normal)
    if fmt.inf_code is not None:  # IEEE-like (E5M2): all-ones exponent is inf/NaN
        special = exp_field == (1 << fmt.ebits) - 1
        mag = torch.where(special & (codes & ((1 << fmt.mbits) - 1) == 0), torch.inf, mag)
        mag = torch.where(special & (codes & ((1 << fmt.mbits) - 1) != 0), torch.nan, mag)
    elif fmt.nan_code is not None:  # E4M3 "fn": only S.1111.111 is NaN
        mag = torch.where((codes & 0x7F) == fmt.nan_code, torch.nan, mag)
    return torch.where(sign == 1, -mag, mag)


@lru_cache(maxsize=None)
def _decode_table_on(fmt: ElementFormat, device: torch.device) -> torch.Tensor:
    return _decode_table(fmt).to(device)  # one copy per device: none per call, none in a CUDA graph capture


def decode(codes: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """float32 values of unsigned integer ``codes`` (one code per element, not packed)."""
    return _decode_table_on(fmt, codes.device)[codes.long()]


def encode(v: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """uint8 codes of float32 values ``v`` that already lie on ``fmt``'s grid.

    ``±inf`` becomes the format's infinity (E5M2) or NaN (E4M3), NaN its NaN code; E2M1 has
    neither and writes 0 (block formats carry NaN in their scale instead). Use
    ``round_to_grid`` first for arbitrary values.
    """
    sign = torch.signbit(v).to(torch.int32)
    a = v.abs()
    finite = torch.isfinite(a)
    a = torch.where(finite, a, torch.zeros_like(a))
    e = floor_log2(torch.where(a > 0, a, torch.ones_like(a)))
    is_normal = a >= fmt.min_normal
    e = torch.where(is_normal, e, torch.full_like(e, fmt.emin))
    steps = (a / pow2(e - fmt.mbits)).to(torch.int32)  # exact integer on the grid
    exp_field = torch.where(is_normal, e + fmt.bias, torch.zeros_like(e))
    mant = torch.where(is_normal, steps - 2**fmt.mbits, steps)
    code = (sign << (fmt.nbits - 1)) | (exp_field << fmt.mbits) | mant
    signed = sign << (fmt.nbits - 1)
    if fmt.inf_code is not None:
        code = torch.where(torch.isinf(v), signed | fmt.inf_code, code)
    if fmt.nan_code is not None:  # and ±inf in a format without infinities (E4M3) is NaN
        special = torch.isnan(v) if fmt.inf_code is not None else ~torch.isfinite(v)
        code = torch.where(special, signed | fmt.nan_code, code)
    else:  # E2M1 has neither: 0, the block scale carries the NaN
        code = torch.where(torch.isfinite(v), code, torch.zeros_like(code))
    return code.to(torch.uint8)


def e8m0_encode_exponent(k: torch.Tensor) -> torch.Tensor:
    """E8M0 code of ``2^k`` for integer ``k`` in [-127, 127]: ``k + 127`` (0xFF is NaN)."""
    return (k + 127).to(torch.uint8)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 value of E8M0 codes: ``2^(c - 127)``, NaN for 0xFF."""
    c = codes.to(torch.int32)
    v = pow2(c - 127)
    return torch.where(c == 0xFF, torch.full_like(v, torch.nan), v)


def random_bits(
    shape: torch.Size | tuple[int, ...],
    bits: int,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``bits``-bit uniform random integers (int32) for stochastic rounding."""
    if not 1 <= bits <= 24:
        raise ValueError(f"sr_bits must be in [1, 24], got {bits}")
    return torch.randint(0, 2**bits, tuple(shape), generator=generator, device=device, dtype=torch.int32)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dim: element ``2i`` in the low nibble.

    This is the layout of ``torch.float4_e2m1fn_x2`` and of the OCP MX spec (first element
    in the least significant bits).
    """
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dimension, got shape {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_fp4``: uint8 codes, last dim doubled."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)
