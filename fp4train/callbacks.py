"""Lightning callbacks of the training loop, and the builder of the extra ones named in config.

* ``QuantStatsLogger``: every ``every_n_steps`` optimizer steps, per ``QuantLinear``, the
  clipped/flushed fractions and QSNR (``fp4train.quant.stats.quant_stats``) of its weight, its
  last input and its last output gradient, each under the spec of the GEMM operand it becomes.
  Input and gradient are captured by hooks registered only for those steps.
* ``build_callbacks``: extra callbacks from ``{"_target_": "pkg.mod.Class", **kwargs}`` dicts
  (``TrainConfig.callbacks``), e.g. an oscillation tracker, so they plug in by config.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from fp4train.linear import QuantLinear
from fp4train.optim import resolve_target
from fp4train.quant.stats import quant_stats

__all__ = ["QuantStatsLogger", "build_callbacks"]


class QuantStatsLogger(L.Callback):
    """Logs ``quant/<layer>/<operand>_<stat>`` every ``every_n_steps`` steps (from step 0), with
    ``<stat>`` the clipped, flushed and block-flushed fractions and the QSNR
    (``fp4train.quant.stats.quant_stats``) and ``<operand>``: ``w`` (the weight, Fprop spec),
    ``x`` (the input, Fprop spec), ``dy`` (the output gradient, Dgrad spec), and the Wgrad copies
    ``x_wgrad``, ``dy_wgrad`` (transposed: blocks and RHT along tokens). Each is measured on the
    tensor the layer quantizes: the input after autocast's cast, the gradient as backward
    receives it. Inputs and gradients are caught by hooks registered only on those steps (a
    forward hook, and a hook on the output's gradient); operands whose GEMM runs unquantized at
    that step are skipped."""

    # logged name: (operand whose spec applies, captured tensor, transposed as the Wgrad GEMM takes it)
    OPERANDS = {
        "w": ("w_fprop", "w", False),
        "x": ("x_fprop", "x", False),
        "dy": ("dy_dgrad", "dy", False),
        "x_wgrad": ("x_wgrad", "x", True),
        "dy_wgrad": ("dy_wgrad", "dy", True),
    }

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._captured: dict[str, dict[str, torch.Tensor]] = {}
        self._handles: list = []
        self._step = 0

    def _layers(self, pl_module: L.LightningModule) -> dict[str, QuantLinear]:
        model = getattr(pl_module, "model", pl_module)
        return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps or self._handles:
            return
        self._step = trainer.global_step
        for name, layer in self._layers(pl_module).items():
            def hook(module, args, output, name=name):
                captured = self._captured.setdefault(name, {})
                captured["x"] = module.gemm_input(args[0]).detach()  # as the layer casts it
                if output.requires_grad:
                    output.register_hook(lambda dy: captured.__setitem__("dy", dy.detach()))

            self._handles.append(layer.register_forward_hook(hook))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._handles:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        metrics = {}
        for name, layer in self._layers(pl_module).items():
            tensors = {"w": layer.weight.detach(), **self._captured.get(name, {})}
            for key, (operand, source, transposed) in self.OPERANDS.items():
                spec = layer.operand_spec(operand)
                if spec.is_identity or source not in tensors:
                    continue
                t = tensors[source]
                t = t.reshape(-1, t.shape[-1]).T if transposed else t
                for stat, value in quant_stats(t, spec).items():
                    metrics[f"quant/{name}/{key}_{stat}"] = value
        self._captured = {}
        for logger in trainer.loggers:  # directly: Lightning would repeat hook-logged values next step
            logger.log_metrics(metrics, step=self._step)


def build_callbacks(specs: list[dict[str, Any]]) -> list[L.Callback]:
    """Instantiate ``{"_target_": dotted path, **kwargs}`` specs; each must give a ``Callback``."""
    callbacks = []
    for spec in specs:
        spec = dict(spec)
        target = spec.get("_target_")
        cb = resolve_target(spec, "callback")(**spec)
        if not isinstance(cb, L.Callback):
            raise TypeError(f"callback {target!r} built a {type(cb).__name__}, not a lightning Callback")
        callbacks.append(cb)
    return callbacks
