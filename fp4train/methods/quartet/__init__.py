"""Quartet (Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language
Models", arXiv 2505.14669) as a quantization method (``fp4train.methods``): MXFP4 training with a
QuEST-clipped Hadamard forward and a stochastic-rounding Hadamard backward, emulated in torch
(its own kernels need Blackwell). Facts, sources and our choices: ``README.md`` beside this file.

* ``numerics``: the quantizers (QuEST forward with trust masks, SR backward) and the transforms;
* ``randomness``: the backward's SR bits and signs from a step counter on the device;
* ``linear``: ``quartet_linear``, the autograd function over the three GEMMs;
* ``layer``: ``QuartetLinear``, what ``convert`` builds under ``quant=quartet``.

The named recipe ``quartet``: every linear of the model's blocks quantized (as ``mxfp4``: no BF16
blocks by default; ``quant.bf16_first_blocks``/``bf16_last_blocks`` keep some), its options the
fields of ``QuartetConfig`` under ``quant.methods.quartet`` (e.g. ``scale_stat=rms``,
``backward_rht=fixed`` for what the published code computes). The recipe's operand specs (MXFP4,
SR on the four backward operands, ceil scales) are nominal: they decide which layers can be
converted (features in whole 32-blocks) and what the quantization statistics measure; the layer
quantizes as Quartet does.
"""

from fp4train.methods import Method
from fp4train.recipes import RecipeDefaults

from .layer import QuartetLinear
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
    "METHOD",
    "QUEST_ALPHA",
    "QuartetConfig",
    "QuartetLinear",
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

_SPECS = RecipeDefaults("mxfp4", "mxfp4", sr=True, sr_scope="backward", scale_rule="ceil")

METHOD = Method(
    name="quartet",
    options=QuartetConfig,
    recipes={"quartet": (_SPECS, QuartetConfig())},
    layer=lambda recipe: QuartetLinear,
)
