"""TetraJet ("Oscillation-Reduced MXFP4 Training for Vision Transformers", Chen et al., arXiv
2502.20853) as a quantization method (``fp4train.methods``). Section numbers are the preprint's.

The recipe side (§3: MXFP4 on all six operands, truncation-free scales, SR on Q3–Q6, double
quantization) is the core's operand specs and switches; this package adds the rest:

* ``config``: the options node ``quant.methods.tetrajet`` (``TetraJetOptions``) and the named
  recipes ``tetrajet``, ``tetrajet_qema``, ``tetrajet_qramping``;
* ``grid``: Q-EMA's rounding choice and the quantization confidence (§5, App. A);
* ``qema``: ``QEMALinear``, the layer of Q-EMA recipes (§5, Alg. 1);
* ``oscillation``: the oscillation metrics over a window of steps (§4, App. A);
* ``qramping``: ``QRamping``, per-element gradient accumulation by oscillation (§6, Alg. 2);
* ``hooks``: ``attach_tetrajet``, the optimizer hook (Q-EMA's update, Q-Ramping's step hooks);
* ``callbacks``: Q-Ramping's periodic calibration and the oscillation logger (Lightning).
"""

from __future__ import annotations

from fp4train.linear import QuantLinear
from fp4train.methods import Method
from fp4train.methods.tetrajet.callbacks import OscillationLogger, QRampingCalibration
from fp4train.methods.tetrajet.config import RECIPES, QRampingConfig, TetraJetOptions
from fp4train.methods.tetrajet.grid import ema_round, quantization_confidence
from fp4train.methods.tetrajet.hooks import attach_tetrajet
from fp4train.methods.tetrajet.oscillation import OscillationTracker
from fp4train.methods.tetrajet.qema import QEMALinear
from fp4train.methods.tetrajet.qramping import QRamping
from fp4train.recipes import Recipe

__all__ = [
    "METHOD", "OscillationLogger", "OscillationTracker", "QEMALinear", "QRamping", "QRampingCalibration",
    "QRampingConfig", "TetraJetOptions", "attach_tetrajet", "ema_round", "quantization_confidence",
]


def _layer(recipe: Recipe) -> type[QuantLinear]:
    return QEMALinear if recipe.options.q_ema_decay is not None else QuantLinear


def _callbacks(recipe: Recipe) -> list[QRampingCalibration]:
    return [QRampingCalibration()] if recipe.options.q_ramping else []


def _sharding_refusal(recipe: Recipe) -> str | None:
    if recipe.options.q_ema_decay is None and not recipe.options.q_ramping:
        return None
    return "TetraJet's Q-EMA and Q-Ramping keep per-weight state of the whole weight, which FSDP shards"


METHOD = Method(
    name="tetrajet",
    options=TetraJetOptions,
    recipes=RECIPES,
    layer=_layer,
    optimizer_hook=attach_tetrajet,
    callbacks=_callbacks,
    sharding_refusal=_sharding_refusal,
)
