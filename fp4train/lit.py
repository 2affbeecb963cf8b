"""LightningModules for LM pretraining and image classification, and their data module.

The training loop is step-based: ``trainer.max_steps`` optimizer steps over an endless sample
stream. ``StepSampler`` makes that stream a pure function of ``(seed, position)``, split so that
one optimizer step sees the same global batch whatever the number of processes and gradient
accumulation; a resumed run restarts it at ``global_step`` — the same continuation as an
uninterrupted run.

Shared by both modules (``TrainModule``): AdamW + LR schedule from ``fp4train.optim``, the
precision schedule applied before every step, throughput and LR logging, the global RNG state
and the run's identity (``run_identity``: recipe, model) in checkpoints, a validation after the
last step, a stop on a non-finite loss (the step is skipped; the message names the step and the
last finite checkpoint, which ``fp4train.callbacks.FiniteCheckpoint`` keeps in
``last_finite_checkpoint``), and with ``cuda_graph`` the training forward and backward replayed
from CUDA graphs (``fp4train.cuda_graphs``; captured again when the input shape or a module's
``graph_key`` changes).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fp4train.cuda_graphs import TrainingGraph, capture_training_graph, graph_key, has_hooks
from fp4train.distributed import shard_model
from fp4train.optim import OptimConfig, build_optimizer, build_scheduler
from fp4train.precision_schedule import PrecisionSchedule

__all__ = [
    "DIVERGED_FILE", "IDENTITY_KEY", "ImageClassifierModule", "LanguageModelModule", "MODULES", "StepDataModule",
    "StepSampler", "TrainModule",
]

log = logging.getLogger(__name__)
DIVERGED_FILE = "DIVERGED"  # written into the run directory when a non-finite loss or state stops the run
IDENTITY_KEY = "fp4train"  # checkpoint entry holding ``TrainModule.run_identity``


class StepSampler(Sampler[int]):
    """Endless indices: epoch ``e`` is ``randperm(n)`` seeded by ``(seed, e)`` (or ``0..n-1``
    without ``shuffle``), concatenated. Position ``p`` of the stream belongs to micro-batch
    ``p // (world_size · micro_batch)``; this rank yields its contiguous ``micro_batch`` slice of
    each, starting at micro-batch ``start``."""

    def __init__(self, n: int, micro_batch: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start: int = 0, shuffle: bool = True) -> None:
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.micro_batch, self.world_size, self.rank = n, micro_batch, world_size, rank
        self.seed, self.start, self.shuffle = seed, start, shuffle
        self._epoch, self._perm = -1, torch.arange(n)

    def _index(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if self.shuffle and epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[i])

    def __iter__(self):
        stride = self.world_size * self.micro_batch
        position = self.start * stride + self.rank * self.micro_batch
        while True:
            for j in range(self.micro_batch):
                yield self._index(position + j)
            position += stride


class StepDataModule(L.LightningDataModule):
    """Train/val loaders. ``batch_size`` is the *global* batch of one optimizer step, split over
    ``world_size`` processes and ``accumulate_grad_batches`` micro-batches."""

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def micro_batch(self) -> int:
        world, accum = self.trainer.world_size, self.trainer.accumulate_grad_batches
        if self.batch_size % (world * accum):
            raise ValueError(
                f"data.batch_size {self.batch_size} (global) is not divisible by world size {world} × "
                f"accumulate_grad_batches {accum}"
            )
        return self.batch_size // (world * accum)

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=self.micro_batch(), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **kwargs)

    def _sampler(self, step: int) -> StepSampler:
        """This rank's stream of training indices from optimizer step ``step`` on."""
        t = self.trainer
        return StepSampler(len(self.train_set), self.micro_batch(), t.world_size, t.global_rank, self.seed,
                           step * t.accumulate_grad_batches)

    def train_dataloader(self) -> DataLoader:
        # global_step is restored from the checkpoint when resuming
        return self._loader(self.train_set, sampler=self._sampler(self.trainer.global_step))

    def batches_from(self, step: int) -> Iterator[Any]:
        """The micro-batches training sees from optimizer step ``step`` on, from a loader of their own
        in this process: a look ahead at the stream (a method's calibration steps, say) that leaves
        training's own loader where it is."""
        return iter(DataLoader(self.train_set, batch_size=self.micro_batch(), sampler=self._sampler(step)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class TrainModule(L.LightningModule):
    """Shared training logic (module doc); subclasses define ``compute_loss``."""

    task = ""
    item_name = "samples"  # what the throughput counts

    def __init__(
        self, model: nn.Module, optim: OptimConfig, precision_schedule: PrecisionSchedule | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.precision_schedule = precision_schedule or PrecisionSchedule()
        self.cuda_graph = cuda_graph
        self._graph: tuple[tuple, TrainingGraph] | None = None  # (what it was captured for, the graph)
        self._told_hooks = False
        self._step_start: float | None = None
        self._items = 0
        self._step_lr = 0.0
        self.diverged: str | None = None
        self.run_identity: dict[str, str] = {}  # stored in checkpoints (``IDENTITY_KEY``)
        self.last_finite_checkpoint: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)``; in training with ``cuda_graph``, replayed from the graph captured for
        ``x``'s shape and the modules' ``graph_key`` (captured first when either is new), except
        on steps where a callback has hooked a module (the replay would skip the hook)."""
        if not (self.cuda_graph and self.training and torch.is_grad_enabled()):
            return self.model(x)
        if has_hooks(self.model):
            if not self._told_hooks:
                self._told_hooks = True
                log.info("trainer.cuda_graph: steps on which a module has a hook (e.g. quant-stats logging "
                         "steps) run eagerly; first at step %d", self.global_step)
            return self.model(x)
        key = (tuple(x.shape), x.dtype, graph_key(self.model))
        if self._graph is None or self._graph[0] != key:
            self._release_graph()  # its memory goes back to the pool before the new capture
            self._graph = (key, capture_training_graph(self.model, (x,)))
        return self._graph[1](x)

    def configure_model(self) -> None:
        """Under ``trainer.strategy=fsdp`` (Lightning's ``ModelParallelStrategy`` sets
        ``device_mesh``): shard the model with FSDP2, BF16 parameters under ``bf16-mixed``
        (``fp4train.distributed.shard_model``). A no-op under other strategies."""
        from torch.distributed.fsdp import FSDPModule

        if self.device_mesh is not None and not isinstance(self.model, FSDPModule):
            shard_model(self.model, self.device_mesh["data_parallel"], bf16=self.trainer.precision == "bf16-mixed")

    def _release_graph(self) -> None:
        if self._graph is not None:
            self._graph[1].release()
            self._graph = None

    def on_train_end(self) -> None:
        self._release_graph()

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(mean loss, extra metrics, items counted for throughput) of one batch."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict:
        opt = build_optimizer(self.model, self.optim_cfg)
        sched = build_scheduler(opt, self.trainer.max_steps, self.optim_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def clip_gradients(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Lightning's clipping, except for a fused optimizer (``OptimConfig.fused``) where no
        gradient scaler runs (bf16-mixed, 32-true): Lightning refuses to clip any optimizer that
        unscales inside ``step`` (Lightning issue #21435), a check meant for fp16's scaler; with
        nothing to unscale, the clipping is Lightning's plain one (``Precision.clip_gradients``)."""
        plugin = self.trainer.precision_plugin
        if getattr(optimizer, "_step_supports_amp_scaling", False) and getattr(plugin, "scaler", None) is None:
            val = self.trainer.gradient_clip_val if gradient_clip_val is None else gradient_clip_val
            algo = gradient_clip_algorithm or self.trainer.gradient_clip_algorithm or GradClipAlgorithmType.NORM
            Precision.clip_gradients(plugin, optimizer, val or 0.0, GradClipAlgorithmType(algo))
            return
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.precision_schedule.apply(self.model, self.global_step, self.trainer.max_steps)
        if self._step_start is None:  # first micro-batch of an optimizer step
            self._step_start, self._items = time.perf_counter(), 0
            self._step_lr = self.trainer.optimizers[0].param_groups[0]["lr"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        loss, metrics, items = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            self._stop(loss)
            return None
        self._items += items
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        stepped = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        if not stepped or self._step_start is None or self.diverged:
            return
        seconds = time.perf_counter() - self._step_start
        self._step_start = None
        self.log(f"train/{self.item_name}_per_s", self._items * self.trainer.world_size / seconds)
        self.log("train/lr", self._step_lr)
        if self.global_step >= self.trainer.max_steps:
            # Lightning validates when a stop is requested (TrainingEpochLoop._should_check_val_fx),
            # so a run whose last step is not a multiple of val_every_n_steps ends with a validation
            self.trainer.should_stop = True

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, metrics, _ = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[IDENTITY_KEY] = dict(self.run_identity)
        # tensors and plain tuples only, so that Lightning's weights_only loading accepts them
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_state"] = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng_state")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            name, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])

    def _stop(self, loss: torch.Tensor) -> None:
        value = loss.item() if not math.isfinite(loss.item()) else "non-finite on another rank"
        self.stop(f"non-finite training loss ({value}) at step {self.global_step}: stopping; the step was skipped")

    def stop(self, reason: str) -> None:
        """End the run as diverged: ``reason`` and the last finite checkpoint go to the log and to
        ``DIVERGED`` in the run directory. The first reason of a run is the one kept."""
        self.trainer.should_stop = True
        if self.diverged:
            return
        self.diverged = f"{reason}. Last finite checkpoint: {self.last_finite_checkpoint or 'none saved yet'}"
        self._report_divergence()

    @rank_zero_only
    def _report_divergence(self) -> None:
        log.error(self.diverged)
        Path(self.trainer.default_root_dir, DIVERGED_FILE).write_text(self.diverged + "\n")


class LanguageModelModule(TrainModule):
    """Next-token prediction: batches ``(x, y)`` of int64 token windows, loss = mean token CE."""

    task = "text"
    item_name = "tokens"

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()), {}, y.numel()


class ImageClassifierModule(TrainModule):
    """Classification: batches ``(images, labels)``, loss = mean CE, plus top-1 accuracy."""

    task = "vision"
    item_name = "images"

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        x, y = batch
        logits = self(x)
        acc = (logits.argmax(-1) == y).float().mean()
        return F.cross_entropy(logits.float(), y), {"acc": acc}, y.numel()


# model name -> its LightningModule
MODULES: dict[str, type[TrainModule]] = {
    "hybrid_lm": LanguageModelModule, "vit": ImageClassifierModule, "hf": LanguageModelModule,
}
