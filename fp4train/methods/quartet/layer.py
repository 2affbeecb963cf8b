"""``QuartetLinear``: the layer ``convert`` builds under Quartet's recipes (arXiv 2505.14669).

A ``QuantLinear`` whose three GEMMs are ``quartet_linear``'s (``linear``): Quartet's backward
reuses the forward's quantized operands and trust masks, so the method replaces the layer's whole
function, not single operands. What it keeps of ``QuantLinear``: the parameters, the BF16 path
when a precision schedule switches every GEMM to high precision, the autocast cast of the input,
and the SR step counter ``sr_step`` with its checkpointed state. The backward's randomness is the
``SRStream`` of key ``stream_seed(recipe seed, layer id, operand dy_dgrad[, rank])`` (the key the
core gives this layer's first SR operand; other ranks than 0 mix in their rank) at this call's
counter, drawn on the device (``randomness``), so CUDA graphs replay fresh bits.
"""

from __future__ import annotations

import torch

from fp4train.linear import QuantLinear
from fp4train.quant import SRStream

from .linear import quartet_linear

__all__ = ["QuartetLinear"]


class QuartetLinear(QuantLinear):
    """``QuantLinear`` whose GEMMs (``quantized_gemms``) are Quartet's quantized Fprop, Dgrad and
    Wgrad (module doc); the recipe's ``options`` are its ``QuartetConfig``."""

    def quantized_gemms(self, x: torch.Tensor, grad: bool) -> torch.Tensor:
        if self.high_precision:
            raise ValueError(
                f"{self.__class__.__name__}: Quartet's backward reuses the forward's quantized operands, so its "
                f"GEMMs switch to high precision together; got high_precision={sorted(self.high_precision)} (use a "
                f"precision schedule over all GEMMs: precision_schedule.scope=all)"
            )
        stream = None
        if self.training and grad:
            key = self._stream_key("dy_dgrad", self.recipe.spec("dy_dgrad"), self.process_rank())
            stream = SRStream(key, self.sr_step.clone())
        return quartet_linear(x, self.weight, self.bias, config=self.recipe.options, seed=stream)
