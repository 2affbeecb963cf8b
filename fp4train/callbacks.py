"""Lightning callbacks of the training loop, and the builder of the extra ones named in config.

* ``QuantStatsLogger``: every ``every_n_steps`` optimizer steps, per ``QuantLinear``, the
  clipped/flushed fractions and QSNR (``fp4train.quant.stats.quant_stats``) of its weight under
  its Fprop weight spec and of its last input under its Fprop activation spec. The input is
  captured by a forward hook registered only for those steps.
* ``build_callbacks``: extra callbacks from ``{"_target_": "pkg.mod.Class", **kwargs}`` dicts
  (``TrainConfig.callbacks``), e.g. an oscillation tracker, so they plug in by config.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from fp4train.linear import QuantLinear
from fp4train.optim import resolve_target
from fp4train.quant.stats import quant_stats

__all__ = ["QuantStatsLogger", "build_callbacks"]


class QuantStatsLogger(L.Callback):
    """Logs ``quant/<layer>/{w,x}_{clipped,flushed,qsnr_db}`` every ``every_n_steps`` steps
    (from step 0); operands whose GEMM runs unquantized at that step are skipped."""

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._inputs: dict[str, torch.Tensor] = {}
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
            def hook(_module, args, _output, name=name):
                self._inputs[name] = args[0].detach()

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
            weight = layer.weight.detach()
            if isinstance(weight, DTensor):  # trainer=fsdp: this rank's shard; the stats are the whole weight's
                weight = weight.full_tensor()
            operands = {"w": ("w_fprop", weight)}
            if name in self._inputs:
                operands["x"] = ("x_fprop", self._inputs[name])
            for key, (operand, tensor) in operands.items():
                spec = layer.operand_spec(operand)
                if spec.is_identity:
                    continue
                for stat, value in quant_stats(tensor.float(), spec).items():
                    metrics[f"quant/{name}/{key}_{stat}"] = value
        self._inputs = {}
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
