"""Where a weight lies on its MX quantization grid (TetraJet, arXiv 2502.20853): Q-EMA's choice
between the two grid points around it (§5, Alg. 1) and the quantization confidence (App. A).

Both work in the element domain ``W/S`` of the block scale ``S`` (exact: MX scales are powers of
two). Q-EMA: the scale and the two candidates ``q1 ≤ W/S ≤ q2`` come from the current ``W``; the
one nearer ``W_ema/S`` wins (ties: round to nearest, our choice). Confidence: the distance of
``W/S`` to the nearest rounding threshold over the largest such distance in its rounding interval
(1 on a grid point, 0 on a threshold).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fp4train.quant import QuantizedTensor, QuantSpec, quantize
from fp4train.quant.blocks import expand_blocks
from fp4train.quant.formats import decode, encode, grid_neighbours, pack_fp4, round_to_grid

__all__ = ["ema_round", "quantization_confidence"]


def _element_domain(weight: torch.Tensor, spec: QuantSpec) -> tuple[QuantizedTensor, torch.Tensor]:
    """The RN quantization of ``weight`` and ``weight / S`` (exact: MX scales are powers of two)."""
    if spec.format.scale != "e8m0":
        raise ValueError(f"TetraJet's weight quantizers are defined for MX formats (E8M0 scales), got {spec.fmt!r}")
    if spec.rht is not None or spec.pad:
        raise ValueError("TetraJet's weight quantizers take no RHT or padding")
    qt = quantize(weight, spec)
    scale = expand_blocks(qt.scale_values(), spec.block_shape, qt.padded)
    return qt, weight.reshape(qt.padded).float() / scale


def ema_round(weight: torch.Tensor, weight_ema: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Q-EMA (TetraJet Alg. 1): of the two grid points around ``W/S`` pick the one nearer
    ``W_ema/S``; ``S`` and the candidates come from the current ``W``."""
    qt, t = _element_domain(weight, spec)
    element = spec.format.element
    toward, away = grid_neighbours(t, element)
    e = weight_ema.reshape(qt.padded).float() / (weight.reshape(qt.padded).float() / t)
    e = torch.where(torch.isfinite(e), e, t)  # zero weights: S·0 — keep RN
    d_toward, d_away = (e - toward).abs(), (e - away).abs()
    nearest = round_to_grid(t, element, "rn")
    q = torch.where(d_toward < d_away, toward, torch.where(d_away < d_toward, away, nearest))
    codes = encode(q, element)
    return replace(qt, data=pack_fp4(codes) if spec.format.is_fp4 else codes)


def quantization_confidence(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-element confidence in [0, 1] (TetraJet App. A) of ``weight``'s RN quantization."""
    qt, t = _element_domain(weight, spec)
    element = spec.format.element
    grid = decode(torch.arange(2 ** (element.nbits - 1), dtype=torch.uint8), element)
    grid = grid[torch.isfinite(grid)].sort().values.to(t.device)  # non-negative grid, 0 first
    a = t.abs().clamp(max=element.max)
    idx = torch.searchsorted(grid, round_to_grid(a, element, "rn"))
    lower = torch.where(idx > 0, (grid[(idx - 1).clamp(min=0)] + grid[idx]) / 2, -grid[1] / 2)
    top = idx >= len(grid) - 1
    upper = torch.where(top, torch.full_like(a, torch.inf), (grid[idx] + grid[(idx + 1).clamp(max=len(grid) - 1)]) / 2)
    half = torch.where(top, grid[idx] - lower, (upper - lower) / 2)
    return (torch.minimum(a - lower, upper - a) / half).clamp(0, 1)
