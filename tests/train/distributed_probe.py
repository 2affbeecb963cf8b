"""A test instrument for multi-process runs, plugged in by config
(``callbacks=[{_target_:tests.train.distributed_probe.DistributedProbe}]``): per rank, for every
micro-batch, the training loss and how often each ``QuantLinear``'s weight was quantized (and in
what shape), written to ``<run>/probe_rank<r>.json`` when training ends.

A weight quantization is a call of ``fp4train.linear.quantize`` on a tensor that shares the
layer's weight storage at that moment (under FSDP2 the gathered weight, in forward and backward)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.distributed.tensor import DTensor

import fp4train.linear as linear_module
from fp4train.linear import QuantLinear


class DistributedProbe(L.Callback):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._counts: collections.Counter = collections.Counter()
        self._shapes: dict[str, list[int]] = {}
        self._original = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = {n: m for n, m in pl_module.model.named_modules() if isinstance(m, QuantLinear)}
        original = self._original = linear_module.quantize

        def counting_quantize(t: torch.Tensor, spec, *args, **kwargs):
            for name, layer in layers.items():
                w = layer.weight
                if not isinstance(w, DTensor) and t.untyped_storage().data_ptr() == w.untyped_storage().data_ptr():
                    self._counts[name] += 1
                    self._shapes[name] = list(t.shape)
            return original(t, spec, *args, **kwargs)

        linear_module.quantize = counting_quantize

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._counts.clear()  # validation's forward passes are not the training step's

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.records.append({
            "step": trainer.global_step, "batch_idx": batch_idx, "loss": float(outputs["loss"]),
            "weight_quantizes": dict(self._counts), "weight_shapes": dict(self._shapes),
        })

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        linear_module.quantize = self._original
        out = Path(trainer.default_root_dir) / f"probe_rank{trainer.global_rank}.json"
        out.write_text(json.dumps(self.records, indent=1))
