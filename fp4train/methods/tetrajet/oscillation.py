"""Oscillation of forward-quantized weights (TetraJet, arXiv 2502.20853 §4, App. A).

Over a window of optimizer steps, per weight element: the oscillation ratio
``R_w = Σ|Q(w_t) − Q(w_{t−1})| / Σ|w_t − w_{t−1}|`` (``R_w > 16`` counts as oscillating); a
*flip*, a change of ``Q(w)`` opposite to its previous change; and the quantization confidence
(``fp4train.methods.tetrajet.grid.quantization_confidence``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fp4train.linear import QuantLinear
from fp4train.methods.tetrajet.grid import quantization_confidence
from fp4train.quant import dequantize

__all__ = ["OscillationTracker", "weight_quantized_layers"]


def weight_quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The ``QuantLinear`` layers of ``model`` whose Fprop weight is quantized, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear) and not m.operand_spec("w_fprop").is_identity}


@torch.no_grad()
def _forward_weight_values(layer: QuantLinear) -> torch.Tensor:
    """``Q(W)``: the weight values the layer's Fprop GEMM multiplies right now."""
    return dequantize(layer.quantize_weight(layer.weight.detach(), layer.operand_spec("w_fprop")), dtype=torch.float32)


class OscillationTracker:
    """Per-layer oscillation statistics of the forward-quantized weights over a window of steps.

    Call ``step()`` after every optimizer step; ``metrics()`` returns, per layer:
    ``flip_fraction`` (weights whose ``Q(w)`` reversed direction at least once in the window),
    ``changed_fraction`` (``Q(w)`` changed at all), ``oscillating_fraction`` (``R_w > threshold``),
    ``oscillation_ratio`` (mean ``R_w`` over weights that moved) and ``confidence`` (mean).
    """

    def __init__(self, model: nn.Module, threshold: float = 16.0) -> None:
        self.layers = weight_quantized_layers(model)
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Start a new window from the current weights."""
        self.steps = 0
        self._prev = {n: (m.weight.detach().float().clone(), _forward_weight_values(m)) for n, m in self.layers.items()}
        zeros = {n: torch.zeros_like(w) for n, (w, _) in self._prev.items()}
        self._sum_dq = {n: z.clone() for n, z in zeros.items()}
        self._sum_dw = {n: z.clone() for n, z in zeros.items()}
        self._last_dir = {n: z.clone() for n, z in zeros.items()}
        self._flipped = {n: z.bool() for n, z in zeros.items()}

    @torch.no_grad()
    def step(self) -> None:
        """Accumulate one optimizer step's weight and quantized-weight changes."""
        for n, m in self.layers.items():
            w, q = m.weight.detach().float(), _forward_weight_values(m)
            w0, q0 = self._prev[n]
            dq = q - q0
            self._sum_dq[n] += dq.abs()
            self._sum_dw[n] += (w - w0).abs()
            direction = torch.sign(dq)
            self._flipped[n] |= (direction != 0) & (direction == -self._last_dir[n])
            self._last_dir[n] = torch.where(direction != 0, direction, self._last_dir[n])
            self._prev[n] = (w.clone(), q)
        self.steps += 1

    def oscillation_ratio(self, name: str) -> torch.Tensor:
        """Per-element ``R_w`` of layer ``name`` over the window (0 where nothing changed)."""
        dq, dw = self._sum_dq[name], self._sum_dw[name]
        return torch.where(dq > 0, dq / dw.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(dq))

    def metrics(self) -> dict[str, dict[str, float]]:
        out = {}
        for n, m in self.layers.items():
            r = self.oscillation_ratio(n)
            moved = self._sum_dw[n] > 0
            out[n] = {
                "flip_fraction": self._flipped[n].float().mean().item(),
                "changed_fraction": (self._sum_dq[n] > 0).float().mean().item(),
                "oscillating_fraction": (r > self.threshold).float().mean().item(),
                "oscillation_ratio": r[moved].mean().item() if moved.any() else 0.0,
                "confidence": quantization_confidence(m.weight.detach(), m.operand_spec("w_fprop")).mean().item(),
            }
        return out
