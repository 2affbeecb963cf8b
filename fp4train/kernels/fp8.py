"""Per-tensor FP8 current scaling with PyTorch's own FP8 casts (a few fused-size ops, any device).

Equals ``fp4train.quant.quantize`` for ``fp8_e4m3``/``fp8_e5m2`` with ``rounding="rn"``, bit for bit
(codes of finite values and the FP32 scale): the scale comes from the reference's ``fp32_scale``
and the element rounding is PyTorch's float→float8 cast, round-to-nearest-even, after the same
saturation to ``±max``. NaN/Inf make the scale NaN exactly as in the reference.
"""

from __future__ import annotations

import torch

from fp4train.quant.api import QuantizedTensor
from fp4train.quant.blocks import fp32_scale
from fp4train.quant.spec import QuantSpec

__all__ = ["FP8_DTYPES", "fp8_cast_supported", "quantize_fp8_per_tensor"]

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def fp8_cast_supported(spec: QuantSpec) -> bool:
    """Per-tensor FP8, round to nearest, no RHT or padding."""
    return spec.fmt in FP8_DTYPES and spec.rounding == "rn" and spec.rht is None


def quantize_fp8_per_tensor(x: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """``quantize(x, spec)`` for a spec that ``fp8_cast_supported`` accepts."""
    if not fp8_cast_supported(spec):
        raise ValueError(f"quantize_fp8_per_tensor takes per-tensor FP8 with RN and no RHT; got {spec}")
    element = spec.format.element
    m = x.reshape(-1, x.shape[-1])
    s_dec, s_enc = fp32_scale(m.abs().amax().float().reshape(1, 1), element)
    codes = (m.float() * s_enc).clamp(-element.max, element.max).to(FP8_DTYPES[spec.fmt])
    return QuantizedTensor(spec, x.shape, x.dtype, codes.view(torch.uint8), s_dec, None, tuple(m.shape))
