"""Q-EMA (TetraJet, arXiv 2502.20853 §5, Alg. 1): a linear layer whose Fprop weight quantizer
rounds toward an exponential moving average of its weights.

``W_ema ← β·W_ema + (1−β)·W`` after every optimizer step (``update_ema``, called by the optimizer
hook of ``fp4train.methods.tetrajet.hooks``). Once the EMA has ``q_ema_warmup`` updates, ``Q2``
(the Fprop weight) is ``ema_round(W, W_ema)``; Dgrad's copy of W (``Q4``) then re-quantizes
that, as double quantization does.
"""

from __future__ import annotations

import torch

from fp4train.linear import QuantLinear
from fp4train.methods.tetrajet.config import TetraJetOptions
from fp4train.methods.tetrajet.grid import ema_round
from fp4train.quant import QuantizedTensor, QuantSpec

__all__ = ["QEMALinear"]


class QEMALinear(QuantLinear):
    """``QuantLinear`` whose Fprop weight quantizer is Q-EMA (``recipe.options.q_ema_decay``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        options = self.recipe.options
        if not isinstance(options, TetraJetOptions) or options.q_ema_decay is None:
            raise ValueError(f"recipe {self.recipe.name!r} has no q_ema_decay: use QuantLinear")
        self.register_buffer("weight_ema", None)
        self.ema_updates = 0

    @torch.no_grad()
    def update_ema(self) -> None:
        """``W_ema ← β·W_ema + (1−β)·W`` (initialised to ``W`` on the first call)."""
        w = self.weight.detach().float()
        if self.weight_ema is None:
            self.weight_ema = w.clone()
        else:
            decay = self.recipe.options.q_ema_decay
            self.weight_ema.mul_(decay).add_(w, alpha=1 - decay)
        self.ema_updates += 1

    def quantize_weight(self, weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
        if spec.is_identity or not self._ema_rounds():
            return super().quantize_weight(weight, spec)
        return ema_round(weight.detach(), self.weight_ema, spec)

    def rounds_weight_plainly(self) -> bool:
        return not self._ema_rounds()

    def _ema_rounds(self) -> bool:
        return self.weight_ema is not None and self.ema_updates >= self.recipe.options.q_ema_warmup

    def graph_key(self) -> tuple:
        return (*super().graph_key(), self._ema_rounds())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight_ema"
        if key in state_dict and self.weight_ema is None:
            self.weight_ema = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "ema_updates": self.ema_updates}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.ema_updates = int(state.get("ema_updates", 0))
