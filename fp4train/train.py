"""Training entry point: ``python -m fp4train.train [overrides]`` (Hydra over ``conf/``) or
``train(TrainConfig(...))`` from Python — the same typed config either way.

Config groups (``conf/``): ``model``, ``data``, ``quant`` (a ``RecipeConfig``; ablations are
overrides such as ``quant.rht=false``), ``optim``, ``trainer``, ``logger``, ``launcher``; study
recipes (``recipes/``) are picked with ``recipe=NAME``. ``-m quant=bf16,fp8,nvfp4`` runs a
comparison as a Hydra multirun and ends with its report (``fp4train.compare``).

A run directory holds ``.hydra/`` (composed config and overrides), ``run_info.json`` (study,
recipe, overrides), ``conversion.md``, ``csv/metrics.csv`` (always), ``wandb/`` (offline unless
``logger.offline=false``) and ``checkpoints/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fp4train.callbacks import QuantStatsLogger, build_callbacks
from fp4train.tetrajet_callbacks import QRampingCalibration
from fp4train.convert import convert
from fp4train.data import build_datasets
from fp4train.distributed import build_strategy, check_strategy, check_sweep, launch_topology
from fp4train.lit import DIVERGED_FILE, MODULES, StepDataModule
from fp4train.models import REGISTRY, build_model
from fp4train.optim import OptimConfig
from fp4train.recipes import RecipeConfig, build_recipe
from fp4train.schedule import PrecisionSchedule

__all__ = [
    "CheckpointConfig", "DataConfig", "LoggerConfig", "ModelConfig", "TrainConfig", "TrainResult",
    "TrainerConfig", "main", "train",
]

log = logging.getLogger(__name__)
TEXT_DATA = ("stdlib_text", "token_file")
RUN_INFO = "run_info.json"
# absolute, so that `python -m fp4train.train`, the `fp4train` script and an import all find it
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ModelConfig:
    """``build_model(name, size, **overrides)``; ``overrides`` are fields of the model's config."""

    name: str = "hybrid_lm"
    size: str = "micro"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """``build_datasets(name, **options)``. ``batch_size`` is the global batch of one optimizer
    step (split over processes and gradient-accumulation micro-batches)."""

    name: str = "stdlib_text"
    batch_size: int = 16
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings. ``precision=None``: ``bf16-mixed`` on GPU, ``32-true`` on
    CPU. Validation runs every ``val_every_n_steps`` optimizer steps on ``val_batches`` batches.
    ``strategy``: Lightning's, or ``ddp``/``ddp_spawn``/``fsdp`` (FSDP2) as ``fp4train.distributed``
    describes; under ``torchrun`` ``devices=auto`` takes its process counts.
    ``torch_threads``: intra-op threads (``None`` keeps torch's default). ``cuda_graph``: replay
    the training forward and backward from CUDA graphs (one GPU per process, one process or DDP;
    ``fp4train.graphs``) — the same losses, without the per-kernel host work that bounds small
    models' steps."""

    max_steps: int = 200
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    val_every_n_steps: int = 50
    val_batches: int = 4
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    torch_threads: int | None = None
    cuda_graph: bool = False


@dataclass
class LoggerConfig:
    """W&B through Lightning's ``WandbLogger`` (``wandb=False`` turns it off) beside the CSV log,
    which is always written. ``offline`` needs no account and never prompts. ``group`` defaults
    to the study name. ``quant_stats_every_n_steps=0`` turns the per-layer quant stats off."""

    wandb: bool = True
    offline: bool = True
    project: str = "fp4train"
    entity: str | None = None
    group: str | None = None
    quant_stats_every_n_steps: int = 50


@dataclass
class CheckpointConfig:
    """Checkpoints in ``<run>/checkpoints``: every ``every_n_steps`` steps (0: none periodic),
    ``last.ckpt`` at the end, and one on SIGTERM or any other exception. ``resume``: a
    checkpoint path to continue from."""

    every_n_steps: int = 0
    save_last: bool = True
    resume: str | None = None


@dataclass
class TrainConfig:
    """One training run. ``callbacks``: extra Lightning callbacks as ``{"_target_": ..., **kwargs}``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: RecipeConfig = field(default_factory=lambda: RecipeConfig(name="bf16"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    precision_schedule: PrecisionSchedule = field(default_factory=PrecisionSchedule)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    study: str = "default"
    seed: int = 0
    out_dir: str = "outputs/run"


@dataclass
class TrainResult:
    """What a run left: its directory, last logged metrics, status (``finished``/``diverged``)."""

    out_dir: str
    status: str
    metrics: dict[str, float]
    message: str = ""


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _check_pairing(cfg: TrainConfig) -> None:
    if cfg.model.name not in MODULES:
        raise ValueError(f"unknown model {cfg.model.name!r}; valid: {sorted(REGISTRY)}")
    task = MODULES[cfg.model.name].task
    data_task = "text" if cfg.data.name in TEXT_DATA else "vision"
    if task != data_task:
        raise ValueError(
            f"model {cfg.model.name!r} needs {task} data but data {cfg.data.name!r} is {data_task}; "
            f"valid {task} data: {list(TEXT_DATA) if task == 'text' else ['digits', 'npz', 'image_folder']}"
        )
    if cfg.trainer.max_steps < 1:
        raise ValueError(f"trainer.max_steps must be >= 1 (training is step-based), got {cfg.trainer.max_steps}")
    if cfg.trainer.cuda_graph and not torch.cuda.is_available():
        raise ValueError("trainer.cuda_graph=true needs a CUDA GPU; none is visible (set it false on CPU)")


def _loggers(cfg: TrainConfig, out: Path, overrides: list[str]) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(out), name="csv", version="")]
    if cfg.logger.wandb:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        if not cfg.logger.offline and not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
            raise RuntimeError(
                "logger.offline=false needs W&B credentials (`wandb login` or WANDB_API_KEY); "
                "offline logging (the default) needs none"
            )
        tags = [cfg.quant.name, cfg.model.name, cfg.data.name, *overrides]
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group or cfg.study,
            job_type="train", name=out.name, tags=[t[:64] for t in tags],
            config={**asdict(cfg), "overrides": overrides},
            save_dir=str(out), offline=cfg.logger.offline, settings=wandb.Settings(quiet=True),
        ))
    return loggers


def _callbacks(cfg: TrainConfig, out: Path) -> list[L.Callback]:
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="step_{step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps or None, save_top_k=-1,
        every_n_epochs=None if cfg.checkpoint.every_n_steps else 0,
        save_last=cfg.checkpoint.save_last, save_on_exception=True,
    )
    callbacks: list[L.Callback] = [ckpt]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    if cfg.logger.quant_stats_every_n_steps > 0:
        callbacks.append(QuantStatsLogger(cfg.logger.quant_stats_every_n_steps))
    callbacks.append(QRampingCalibration())  # a no-op unless the recipe has Q-Ramping
    return callbacks + build_callbacks(cfg.callbacks)


def _trainer(cfg: TrainConfig, out: Path, loggers: list[Logger], callbacks: list[L.Callback]) -> L.Trainer:
    t = cfg.trainer
    precision = t.precision or ("bf16-mixed" if torch.cuda.is_available() else "32-true")
    devices, num_nodes = launch_topology(t.devices, t.num_nodes)
    return L.Trainer(
        default_root_dir=str(out), max_steps=t.max_steps, max_epochs=-1, accelerator=t.accelerator,
        devices=devices, strategy=build_strategy(t.strategy), num_nodes=num_nodes, precision=precision,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_every_n_steps * t.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=t.val_batches, num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, logger=loggers, callbacks=callbacks,
        use_distributed_sampler=False, enable_model_summary=False,
    )


def train(cfg: TrainConfig, overrides: list[str] | None = None) -> TrainResult:
    """Build data, model (converted to ``cfg.quant`` before the optimizer exists), module,
    loggers and trainer; fit. ``overrides`` (the command line's) only label the run."""
    _check_pairing(cfg)
    check_strategy(cfg.trainer.strategy, cfg.trainer.precision, cfg.trainer.cuda_graph, build_recipe(cfg.quant))
    overrides = list(overrides or [])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.torch_threads:
        torch.set_num_threads(cfg.trainer.torch_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = build_datasets(cfg.data.name, **cfg.data.options)
    model = build_model(cfg.model.name, cfg.model.size, **cfg.model.overrides)
    report = convert(model, cfg.quant)
    print(report, flush=True)
    (out / "conversion.md").write_text(str(report) + "\n")
    (out / RUN_INFO).write_text(json.dumps(
        {"study": cfg.study, "group": cfg.logger.group or cfg.study, "recipe": cfg.quant.name,
         "model": cfg.model.name, "data": cfg.data.name, "overrides": overrides}, indent=1))
    module = MODULES[cfg.model.name](model, cfg.optim, cfg.precision_schedule, cfg.trainer.cuda_graph)
    data = StepDataModule(train_set, val_set, cfg.data.batch_size, cfg.data.num_workers, cfg.seed)
    loggers = _loggers(cfg, out, overrides)
    trainer = _trainer(cfg, out, loggers, _callbacks(cfg, out))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=cfg.checkpoint.resume)
    except SIGTERMException:
        print(f"SIGTERM: checkpoint saved in {out / 'checkpoints'}; resume with "
              f"checkpoint.resume={out / 'checkpoints' / 'last.ckpt'}", file=sys.stderr, flush=True)
        raise SystemExit(143) from None
    finally:
        if cfg.logger.wandb:
            import wandb

            wandb.finish()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    diverged = out / DIVERGED_FILE
    if diverged.exists():
        return TrainResult(str(out), "diverged", metrics, diverged.read_text().strip())
    return TrainResult(str(out), "finished", metrics)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The typed ``TrainConfig`` of a composed Hydra config (validates every field)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), plain))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final validation (else training) loss for sweepers."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        check_sweep(cfg.trainer.strategy)
    result = train(to_train_config(cfg), list(hc.overrides.task))
    if result.status == "diverged":
        print(result.message, file=sys.stderr, flush=True)
        if hc.mode == RunMode.RUN:
            raise SystemExit(1)
    return result.metrics.get("val/loss", result.metrics.get("train/loss"))


if __name__ == "__main__":
    main()
