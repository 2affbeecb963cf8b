"""Quantization statistics of one tensor under one spec, for logging.

* ``clipped``: fraction of elements that saturated — their decoded element is the format's
  max and their magnitude exceeds the decoded value (e.g. OCP-rule MXFP4 block maxima).
* ``flushed``: fraction of non-zero elements that decode to zero (underflow).
* ``qsnr_db``: quantization signal-to-noise ratio ``10·log10(‖x‖² / ‖x − Q(x)‖²)``; measured in
  the RHT domain when the spec has one (the values the GEMM multiplies).
"""

from __future__ import annotations

import math

import torch

from .api import quantize
from .hadamard import apply_rht
from .spec import QuantSpec

__all__ = ["quant_stats"]


@torch.no_grad()
def quant_stats(x: torch.Tensor, spec: QuantSpec) -> dict[str, float]:
    """``{"clipped", "flushed", "qsnr_db"}`` of ``fake_quantize(x, spec)`` (see module doc)."""
    if spec.is_identity:
        return {"clipped": 0.0, "flushed": 0.0, "qsnr_db": math.inf}
    # SR specs: one draw from a generator of their own (the global RNG, and so training, untouched)
    qt = quantize(x, spec, generator=torch.Generator(device=x.device).manual_seed(spec.seed))
    y = qt.padded_values()
    rows, cols = qt.padded
    ref = x.reshape(-1, x.shape[-1]).float()
    ref = torch.nn.functional.pad(ref, (0, cols - ref.shape[1], 0, rows - ref.shape[0]))
    if spec.rht:
        ref = apply_rht(ref, spec.rht, spec.seed)
    at_max = qt.element_values().abs() == spec.format.element.max
    clipped = (at_max & (ref.abs() > y.abs())).double().sum().item() / x.numel()
    nonzero = ref != 0
    flushed = ((y == 0) & nonzero).double().sum().item() / max(nonzero.sum().item(), 1)
    err = (ref - y).double().pow(2).sum().item()
    signal = ref.double().pow(2).sum().item()
    if err == 0:
        qsnr = math.inf
    else:
        qsnr = 10 * math.log10(signal / err) if signal > 0 else -math.inf
    return {"clipped": clipped, "flushed": flushed, "qsnr_db": qsnr}
