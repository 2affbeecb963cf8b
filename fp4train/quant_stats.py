"""Quantization statistics of one tensor under one spec, for logging.

* ``clipped``: fraction of elements that saturated — their decoded element is the format's
  max and their magnitude exceeds the decoded value (e.g. OCP-rule MXFP4 block maxima).
* ``flushed``: fraction of non-zero elements that decode to zero (underflow).
* ``block_flushed``: fraction of blocks holding a non-zero element that decode to all zeros.
  For NVFP4 these are the blocks whose amax is at most ``2^-10 / 448`` (about 2.2e-6) of the
  tensor's amax: the E4M3 block scale ``amax_b / amax_t · 448`` rounds to zero (E4M3's least
  subnormal is ``2^-9``), a loss the per-tensor scale imposes that hits gradients hardest.
* ``qsnr_db``: quantization signal-to-noise ratio ``10·log10(‖x‖² / ‖x − Q(x)‖²)``; measured in
  the RHT domain when the spec has one (the values the GEMM multiplies).

A spec with stochastic rounding is measured on one draw from a generator seeded with
``spec.seed`` (the global generator, and so training, is left alone). Quantized as training
quantizes (``fp4train.dispatch.quantize``: the kernel on the GPU), so this module sits above
the dispatch, not in ``fp4train.quant``.
"""

from __future__ import annotations

import math

import torch

from fp4train.dispatch import quantize
from fp4train.quant.blocks import block_amax
from fp4train.quant.hadamard import apply_rht
from fp4train.quant.spec import QuantSpec

__all__ = ["quant_stats"]


@torch.no_grad()
def quant_stats(x: torch.Tensor, spec: QuantSpec) -> dict[str, float]:
    """``{"clipped", "flushed", "block_flushed", "qsnr_db"}`` of ``fake_quantize(x, spec)`` (see
    module doc)."""
    if spec.is_identity:
        return {"clipped": 0.0, "flushed": 0.0, "block_flushed": 0.0, "qsnr_db": math.inf}
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
    nonzero_blocks = block_amax(ref, spec.block_shape) > 0
    zero_blocks = block_amax(y, spec.block_shape) == 0
    block_flushed = (nonzero_blocks & zero_blocks).double().sum().item() / max(nonzero_blocks.sum().item(), 1)
    err = (ref - y).double().pow(2).sum().item()
    signal = ref.double().pow(2).sum().item()
    if err == 0:
        qsnr = math.inf
    else:
        qsnr = 10 * math.log10(signal / err) if signal > 0 else -math.inf
    return {"clipped": clipped, "flushed": flushed, "block_flushed": block_flushed, "qsnr_db": qsnr}
