"""Lightning callbacks of the training loop, and the builder of the extra ones named in config.

* ``QuantStatsLogger``: every ``every_n_steps`` optimizer steps, per ``QuantLinear``, the
  clipped/flushed fractions and QSNR (``fp4train.quant_stats.quant_stats``) of its weight, its
  last input and its last output gradient, each under the spec of the GEMM operand it becomes.
  Input and gradient are captured by hooks registered only for those steps.
* ``FiniteCheckpoint``: Lightning's ``ModelCheckpoint`` that refuses to write a checkpoint
  holding a non-finite weight, buffer or optimizer-state tensor, stops the run instead, and
  keeps the path of the last checkpoint it wrote (``last_finite``) for the messages that name it.
* ``build_callbacks``: extra callbacks from ``{"_target_": "pkg.mod.Class", **kwargs}`` dicts
  (``TrainConfig.callbacks``), e.g. an oscillation tracker, so they plug in by config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.tensor import DTensor

from fp4train.linear import QuantLinear
from fp4train.optim import resolve_target
from fp4train.quant_stats import quant_stats

__all__ = ["FiniteCheckpoint", "QuantStatsLogger", "build_callbacks", "first_non_finite"]

log = logging.getLogger(__name__)


class QuantStatsLogger(L.Callback):
    """Logs ``quant/<layer>/<operand>_<stat>`` every ``every_n_steps`` steps (from step 0), with
    ``<stat>`` the clipped, flushed and block-flushed fractions and the QSNR
    (``fp4train.quant_stats.quant_stats``) and ``<operand>``: ``w`` (the weight, Fprop spec),
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
            weight = layer.weight.detach()
            if isinstance(weight, DTensor):  # trainer=fsdp: this rank's shard; the stats are the whole weight's
                weight = weight.full_tensor()
            tensors = {"w": weight, **self._captured.get(name, {})}
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


def first_non_finite(module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> str | None:
    """The name of the first floating-point tensor of ``module``'s state dict or of the
    optimizers' state that holds a NaN or an infinity, or ``None`` if all are finite (one
    device-to-host transfer when they are). Sharded tensors (FSDP's ``DTensor``) are checked
    shard by shard and the verdict is agreed over the ranks (a collective: every rank calls it)."""
    named = [(name, t) for name, t in module.state_dict().items() if torch.is_tensor(t)]
    param_names = {id(p): name for name, p in module.named_parameters()}
    for opt in optimizers:
        for p, state in opt.state.items():
            named += [(f"optimizer state {k!r} of {param_names.get(id(p), 'a parameter')}", t)
                      for k, t in state.items() if torch.is_tensor(t)]
    named = [(name, t) for name, t in named if t.is_floating_point() or t.is_complex()]
    if not named:
        return None
    sharded = any(isinstance(t, DTensor) for _, t in named)
    local = [t.to_local() if isinstance(t, DTensor) else t for _, t in named]
    device = local[0].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for t in local]).to(torch.int32)
    if sharded:  # each rank sees its own shards (FSDP): all ranks agree, as the sharded save is collective
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if bool(finite.all()):
        return None
    return named[int((finite == 0).nonzero()[0, 0])][0]


class FiniteCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes only finite checkpoints.

    Before each write (periodic, ``last.ckpt``, on SIGTERM or an exception) the module's weights
    and buffers and the optimizers' state are checked; if one is not finite the file is not
    written, the reason is logged and the module's ``stop(reason)`` ends the run (it names
    ``last_finite``). ``last_finite`` starts as the checkpoint the run resumed from.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_finite: str | None = None
        self._finite_step: int | None = None
        self._refused_step: int | None = None

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so that checkpoints written before this class resume alike
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_finite = trainer.ckpt_path
        self._publish(pl_module)

    def _publish(self, pl_module: L.LightningModule) -> None:
        pl_module.last_finite_checkpoint = self.last_finite

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        pl_module = trainer.lightning_module
        bad = first_non_finite(pl_module, trainer.optimizers)
        if bad is None:
            super()._save_checkpoint(trainer, filepath)
            # name the step's own file (step_<k>.ckpt) rather than last.ckpt, which later writes replace
            if Path(filepath).stem != self.CHECKPOINT_NAME_LAST or self._finite_step != trainer.global_step:
                self.last_finite, self._finite_step = filepath, trainer.global_step
                self._publish(pl_module)
            return
        if self._refused_step == trainer.global_step:
            return  # said already (a periodic and the last checkpoint of the same step)
        self._refused_step = trainer.global_step
        reason = f"{bad} is not finite after step {trainer.global_step}: checkpoint {filepath} not written"
        stop = getattr(pl_module, "stop", None)
        if callable(stop):
            stop(reason)
        elif trainer.is_global_zero:
            log.error("%s; last finite checkpoint: %s", reason, self.last_finite or "none")


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
