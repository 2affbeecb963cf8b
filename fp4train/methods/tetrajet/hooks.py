"""TetraJet's optimizer hook (``Method.optimizer_hook``): Q-EMA's EMA update after every step
(§5) and Q-Ramping's step hooks (§6), attached to the optimizer the training loop holds."""

from __future__ import annotations

import torch
import torch.nn as nn

from fp4train.linear import QuantLinear
from fp4train.methods.tetrajet.config import TetraJetOptions
from fp4train.methods.tetrajet.qema import QEMALinear
from fp4train.methods.tetrajet.qramping import QRamping

__all__ = ["attach_tetrajet"]


def attach_tetrajet(model: nn.Module, optimizer: torch.optim.Optimizer) -> QRamping | None:
    """Hook TetraJet's per-step machinery to ``optimizer``: Q-EMA updates after every step for
    ``QEMALinear`` layers, and a ``QRamping`` if the layers' recipe asks for it (returned and set
    as ``optimizer.qramping``, where ``QRampingCalibration`` finds it to calibrate on schedule)."""
    ema_layers = [m for m in model.modules() if isinstance(m, QEMALinear)]
    if ema_layers:
        def update(*_):
            for m in ema_layers:
                m.update_ema()

        optimizer.register_step_post_hook(update)
    configs = {m.recipe.options.ramping for m in model.modules()
               if isinstance(m, QuantLinear) and isinstance(m.recipe.options, TetraJetOptions)}
    config = next((c for c in configs if c is not None), None)
    if config is None:
        return None
    optimizer.qramping = QRamping(model, optimizer, config)
    return optimizer.qramping
