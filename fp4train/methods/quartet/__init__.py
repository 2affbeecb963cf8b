"""Quartet (Castro et al., arXiv 2505.14669): MXFP4 training with QuEST-clipped Hadamard forward
and stochastic-rounding Hadamard backward, emulated in torch. Facts and sources: ``README.md``.

Phase 1 holds the numerics only (``numerics``: the quantizers; ``linear``: the autograd function);
it is not yet wired into recipes or ``convert``.
"""

from .linear import BACKWARD_OPERANDS, QuartetLinearFunction, quartet_linear
from .numerics import (
    QUEST_ALPHA,
    QuartetConfig,
    QuestQuantized,
    SRQuantized,
    backward_signs,
    hadamard_transform,
    quest_quantize,
    quest_scale_exponent,
    sr_quantize,
)

__all__ = [
    "QUEST_ALPHA",
    "QuartetConfig",
    "QuestQuantized",
    "SRQuantized",
    "BACKWARD_OPERANDS",
    "QuartetLinearFunction",
    "quartet_linear",
    "backward_signs",
    "hadamard_transform",
    "quest_quantize",
    "quest_scale_exponent",
    "sr_quantize",
]
