"""Lightning callbacks for TetraJet: oscillation metrics (§4, App. A) and Q-Ramping's periodic
calibration (§6).

``QRampingCalibration`` is added to runs of a Q-Ramping recipe by the method itself
(``Method.callbacks``); ``OscillationLogger`` plugs in by config
(``callbacks: [{_target_: fp4train.methods.tetrajet.callbacks.OscillationLogger}]``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from fp4train.methods.tetrajet.oscillation import OscillationTracker
from fp4train.methods.tetrajet.qramping import QRamping

__all__ = ["OscillationLogger", "QRampingCalibration"]


def _model(pl_module: L.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "model", pl_module)


class OscillationLogger(L.Callback):
    """Every ``window`` optimizer steps, logs per quantized layer and averaged over layers
    (``osc/mean/...``): ``flip_fraction``, ``changed_fraction``, ``oscillating_fraction``
    (R_w > ``threshold``), ``oscillation_ratio`` and ``confidence`` (TetraJet §4, App. A)."""

    def __init__(self, window: int = 30, threshold: float = 16.0, per_layer: bool = True) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.threshold, self.per_layer = window, threshold, per_layer
        self.tracker: OscillationTracker | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tracker = OscillationTracker(_model(pl_module), self.threshold)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.tracker is None or not self.tracker.layers or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        self.tracker.step()
        if self.tracker.steps < self.window:
            return
        per_layer = self.tracker.metrics()
        metrics = {}
        for key in next(iter(per_layer.values())):
            metrics[f"osc/mean/{key}"] = sum(m[key] for m in per_layer.values()) / len(per_layer)
            if self.per_layer:
                metrics.update({f"osc/{name}/{key}": m[key] for name, m in per_layer.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.tracker.reset()


class QRampingCalibration(L.Callback):
    """Runs ``QRamping.calibrate`` every ``every_n_steps`` optimizer steps (and at step 0):
    ``calib_steps`` plain steps on the batches training is about to see (the datamodule's
    ``batches_from``: a loader of its own over the same stream, so training's stream is untouched
    and a resumed run calibrates on the same data), under the run's autocast and gradient
    clipping, then undone.

    Finds the ``QRamping`` that ``attach_tetrajet`` put on the optimizer (``optimizer.qramping``);
    does nothing for runs without one. The interval defaults to the recipe's ``QRampingConfig``.
    The Q-Ramping state (periods, accumulated gradients) is saved in checkpoints through this
    callback.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.periods: dict[str, float] = {}
        self.ramp: QRamping | None = None
        self._pending: dict | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ramp = getattr(trainer.optimizers[0], "qramping", None)
        if self.ramp is not None and self._pending:
            self.ramp.load_state_dict(self._pending)
        self._pending = None

    def state_dict(self) -> dict:
        return self.ramp.state_dict() if self.ramp is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict or None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        ramp, accum = self.ramp, trainer.accumulate_grad_batches
        if ramp is None or batch_idx % accum:
            return
        if trainer.global_step % (self.every_n_steps or ramp.config.every_n_steps):
            return
        dm = trainer.datamodule
        if not hasattr(dm, "batches_from"):
            raise TypeError(f"QRampingCalibration needs a datamodule with batches_from (fp4train.lit.StepDataModule), "
                            f"got {type(dm).__name__}")
        optimizer = trainer.optimizers[0]
        batches = dm.batches_from(trainer.global_step)

        def run_step() -> None:
            for _ in range(accum):
                calib_batch = pl_module.transfer_batch_to_device(next(batches), pl_module.device, 0)
                with trainer.precision_plugin.forward_context():
                    loss = pl_module.compute_loss(calib_batch)[0]
                (loss / accum).backward()
            pl_module.clip_gradients(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
            optimizer.step()
            optimizer.zero_grad()

        with torch.enable_grad():
            self.periods = ramp.calibrate(run_step)
        metrics = {f"qramping/{name or 'model'}/mean_period": p for name, p in self.periods.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
