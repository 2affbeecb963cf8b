"""TetraJet's switches and named recipes (arXiv 2502.20853): the options node
``quant.methods.tetrajet`` and ``quant=tetrajet``, ``tetrajet_qema``, ``tetrajet_qramping``."""

from __future__ import annotations

from dataclasses import dataclass

from fp4train.recipes import RecipeDefaults

__all__ = ["QRampingConfig", "RECIPES", "TetraJetOptions"]


@dataclass(frozen=True)
class QRampingConfig:
    """Q-Ramping hyperparameters (TetraJet §6, Alg. 2): every ``every_n_steps`` optimizer steps,
    ``calib_steps`` (T0) plain steps measure each weight's oscillation ratio ``R_w`` and are then
    undone; its update period becomes ``min(k2·floor(R_w/k1) + 1, n_max)``. ``n_max`` is ours
    (the preprint's value is not in our notes)."""

    k1: float = 16.0
    k2: int = 5
    n_max: int = 16
    calib_steps: int = 30
    every_n_steps: int = 1000


@dataclass(frozen=True)
class TetraJetOptions:
    """TetraJet's switches beyond the six operand specs (``quant.methods.tetrajet.<field>``).

    ``q_ema_decay``: β of Q-EMA (§5, Alg. 1), the Fprop weight quantizer that rounds toward an EMA
    of the weights (``QEMALinear``); ``None``: no Q-EMA. ``q_ema_warmup``: EMA updates before it
    rounds (the paper's first 10 steps). ``q_ramping``: Q-Ramping (§6, Alg. 2), with
    ``ramping_*`` the fields of ``QRampingConfig``. The two are independent switches; the paper
    does not combine them and neither does a named recipe.
    """

    q_ema_decay: float | None = None
    q_ema_warmup: int = 10
    q_ramping: bool = False
    ramping_k1: float = QRampingConfig.k1
    ramping_k2: int = QRampingConfig.k2
    ramping_n_max: int = QRampingConfig.n_max
    ramping_calib_steps: int = QRampingConfig.calib_steps
    ramping_every_n_steps: int = QRampingConfig.every_n_steps

    def __post_init__(self) -> None:
        if self.q_ema_decay is not None and not 0 <= self.q_ema_decay < 1:
            raise ValueError(f"q_ema_decay must be in [0, 1), got {self.q_ema_decay}")

    @property
    def ramping(self) -> QRampingConfig | None:
        """Q-Ramping's hyperparameters, or ``None`` without Q-Ramping."""
        if not self.q_ramping:
            return None
        return QRampingConfig(self.ramping_k1, self.ramping_k2, self.ramping_n_max, self.ramping_calib_steps,
                              self.ramping_every_n_steps)


# §3: MXFP4 for all six operands, truncation-free ("ceil") scales, SR on the four backward
# quantizers Q3–Q6, double quantization; + Q-EMA (§5, β = 0.998) / + Q-Ramping (§6).
_MXFP4 = RecipeDefaults("mxfp4", "mxfp4", sr=True, sr_scope="backward", scale_rule="ceil", double_quant=True)
RECIPES: dict[str, tuple[RecipeDefaults, TetraJetOptions]] = {
    "tetrajet": (_MXFP4, TetraJetOptions()),
    "tetrajet_qema": (_MXFP4, TetraJetOptions(q_ema_decay=0.998)),
    "tetrajet_qramping": (_MXFP4, TetraJetOptions(q_ramping=True)),
}
