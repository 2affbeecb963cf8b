"""Block scaling: per-block amax, scale computation (MX, NVFP4, FP32) and element encoding.

All functions take a float32 matrix ``x`` of shape ``(M, K)`` and a block ``(br, bc)`` that
tiles it exactly; scales have shape ``(M/br, K/bc)``. ``block=None`` means one block for the
whole tensor.

Scale rules (with ``amax`` the block's max |x| and ``E`` the element format):

* **MX (E8M0), OCP MX v1.0 §6.3, "floor"**: ``X = 2^(floor(log2 amax) - emax_E)``; elements
  ``RN_sat(x / X)``. ``amax/X`` can reach ``2^(emax+1)(1-ε)`` > max, so the block maximum may clip.
  **"ceil"** (NVIDIA RCEIL; TetraJet §3.2 "truncation-free"): ``X = 2^ceil(log2(amax / max_E))``,
  never clips. Exponents are clamped to E8M0's [-127, 127]; ``amax = 0`` stores ``2^-127``.
* **NVFP4** ("Pretraining LLMs with NVFP4", arXiv 2509.25149, App. B; Transformer Engine's
  kernel order of operations): ``s_enc = 6·448 / amax_tensor`` (FP32, capped at FLT_MAX;
  1 when amax_tensor = 0), ``s_dec = 1/s_enc``; block decode scale
  ``sb = e4m3_RN_sat(amax_b · (s_enc · fp32(1/6)))``; elements
  ``q = RN_sat(x · min(1 / (fp32(sb) · s_dec), FLT_MAX))``; value ``(q · sb) · s_dec``.
* **FP32 scales** (Transformer Engine current scaling; DeepSeek-V3 blockwise FP8):
  ``s = min(max_E / amax, FLT_MAX)`` (1 when amax = 0), ``q = RN_sat(x · s)``, stored
  ``s_dec = 1/s``, value ``q · s_dec``.

Non-finite input never becomes finite: a block holding NaN/Inf gets a NaN scale (E4M3 code
0x7F, E8M0 code 0xFF, FP32 NaN), and for NVFP4 a non-finite tensor amax makes the tensor
scale NaN.
"""

from __future__ import annotations

import torch

from .formats import (
    E4M3,
    ElementFormat,
    e8m0_encode_exponent,
    floor_log2,
    pow2,
    round_to_grid,
)

__all__ = [
    "FP4_MAX_RECIPROCAL",
    "divide",
    "check_tiles",
    "block_amax",
    "expand_blocks",
    "mx_scale_exponent",
    "nvfp4_tensor_scales",
    "nvfp4_block_scale",
    "fp32_scale",
]

FLT_MAX = torch.finfo(torch.float32).max
FP4_MAX_RECIPROCAL = torch.tensor(1.0 / 6.0, dtype=torch.float32)  # fp32(1/6), TE's multiplier


def divide(numerator: float, t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded ``numerator / t``.

    ``python_float / tensor`` in PyTorch computes ``reciprocal(t) * numerator`` — two roundings,
    wrong in ~25% of float32 cases — so every scale division goes through here.
    """
    return torch.div(torch.full_like(t, numerator), t)


def check_tiles(shape: tuple[int, int], block: tuple[int, int] | None, what: str = "tensor") -> None:
    """Raise a ``ValueError`` naming the shape and block if the block does not tile the matrix."""
    if block is None:
        return
    m, k = shape
    br, bc = block
    if k % bc or m % br:
        raise ValueError(
            f"{what} is a {m}×{k} matrix, not a whole number of {block} blocks: the last dim must be "
            f"a multiple of {bc}" + (f" and the rows of {br}" if br > 1 else "")
            + " (pass pad=True in the QuantSpec to zero-pad)"
        )


def _tiles(x: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """View ``x`` (M, K) as (M/br, br, K/bc, bc)."""
    m, k = x.shape
    br, bc = block if block is not None else (m, k)
    return x.reshape(m // br, br, k // bc, bc)


def block_amax(x: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """Max |x| per block, shape (M/br, K/bc); NaN propagates."""
    return _tiles(x.abs(), block).amax(dim=(1, 3))


def expand_blocks(s: torch.Tensor, block: tuple[int, int] | None, shape: tuple[int, int]) -> torch.Tensor:
    """Broadcast per-block values (M/br, K/bc) back to the element grid (M, K)."""
    m, k = shape
    br, bc = block if block is not None else (m, k)
    return s[:, None, :, None].expand(m // br, br, k // bc, bc).reshape(m, k)


def mx_scale_exponent(amax: torch.Tensor, element: ElementFormat, rule: str) -> torch.Tensor:
    """Integer exponent ``k`` of the MX block scale ``X = 2^k`` (int32, clamped to [-127, 127]).

    ``floor``: ``k = floor(log2 amax) - emax``. ``ceil``: the least ``k`` with
    ``max · 2^k >= amax``, computed exactly (no ``log2``/division rounding).
    """
    positive = amax > 0
    safe = torch.where(positive & torch.isfinite(amax), amax, torch.ones_like(amax))
    e = floor_log2(safe)
    k = e - element.emax
    if rule == "ceil":
        # amax in [2^e, 2^(e+1)) and max = M·2^emax with M in [1, 2): the answer is k or k+1.
        k = k + (safe > element.max * pow2(k)).to(k.dtype)
    elif rule != "floor":
        raise ValueError(f"unknown MX scale rule {rule!r}; valid: ['floor', 'ceil']")
    k = torch.where(positive, k, torch.full_like(k, -127))
    return k.clamp(-127, 127)


def mx_scale_codes(amax: torch.Tensor, element: ElementFormat, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """E8M0 codes and the float32 encode multipliers ``2^-k`` for each block."""
    k = mx_scale_exponent(amax, element, rule)
    codes = e8m0_encode_exponent(k)
    codes = torch.where(torch.isfinite(amax), codes, torch.full_like(codes, 0xFF))
    return codes, pow2(-k)


def nvfp4_tensor_scales(amax_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_enc, s_dec)`` of NVFP4's second level (FP32): ``s_enc = 6·448/amax`` (1 if amax = 0)."""
    s_enc = torch.clamp(divide(6.0 * 448.0, amax_tensor), max=FLT_MAX)
    s_enc = torch.where(amax_tensor == 0, torch.ones_like(s_enc), s_enc)
    s_enc = torch.where(torch.isfinite(amax_tensor), s_enc, torch.full_like(s_enc, torch.nan))
    return s_enc, divide(1.0, s_enc)


def nvfp4_block_scale(amax_b: torch.Tensor, s_enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 block decode scales ``sb`` (as float32 values on the E4M3 grid) and the element
    encode multipliers ``min(1 / (sb · s_dec), FLT_MAX)``."""
    multiplier = s_enc * FP4_MAX_RECIPROCAL  # a 0-dim CPU tensor: an fp32 scalar on any device, no copy
    sb = torch.clamp(amax_b * multiplier, max=FLT_MAX)
    sb = round_to_grid(sb, E4M3, "rn")  # saturates at 448
    sb = torch.where(torch.isfinite(amax_b), sb, torch.full_like(sb, torch.nan))
    encode = torch.clamp(divide(1.0, sb * divide(1.0, s_enc)), max=FLT_MAX)
    return sb, encode


def fp32_scale(amax: torch.Tensor, element: ElementFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_dec, s_enc)`` of FP32 current scaling: ``s_enc = min(max/amax, FLT_MAX)``."""
    s_enc = torch.clamp(divide(element.max, amax), max=FLT_MAX)
    s_enc = torch.where(amax == 0, torch.ones_like(s_enc), s_enc)
    s_enc = torch.where(torch.isfinite(amax), s_enc, torch.full_like(s_enc, torch.nan))
    return divide(1.0, s_enc), s_enc
