"""Training entry point: ``python -m fp4train.train [overrides]`` (Hydra over ``conf/``) or
``train(TrainConfig(...))`` from Python — the same typed config either way.

Config groups (``conf/``): ``model``, ``data``, ``quant`` (a ``RecipeConfig``; ablations are
overrides such as ``quant.rht=false``), ``optim``, ``trainer``, ``logger``, ``launcher``; study
recipes (``recipes/``) are picked with ``recipe=NAME``. ``-m quant=bf16,fp8,nvfp4`` runs a
comparison as a Hydra multirun and ends with its report (``fp4train.compare``).

A run directory holds ``.hydra/`` (composed config and overrides), ``train.log`` (the run's log),
``run_info.json`` (study, recipe, overrides), ``conversion.md``, ``csv/metrics.csv`` (always;
a run resumed into its own directory continues it), ``wandb/`` (offline unless
``logger.offline=false``) and ``checkpoints/`` (finite ones only). A run ends with a summary:
steps, tokens or images, final losses, status and folder.

Bad input the user can fix (a path, a config value, a checkpoint of another run) raises
``fp4train.errors.ConfigError``; ``main`` prints its message alone and exits with status 2
(``HYDRA_FULL_ERROR=1`` shows the traceback instead).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from fp4train.callbacks import FiniteCheckpoint, QuantStatsLogger, build_callbacks
from fp4train.convert import ConversionReport, convert
from fp4train.linear import QuantLinear
from fp4train.data import build_datasets
from fp4train.distributed import (
    build_strategy, check_strategy, check_sweep, launch_topology, sharded_checkpoint_summary,
)
from fp4train.errors import ConfigError
from fp4train.lit import DIVERGED_FILE, IDENTITY_KEY, MODULES, StepDataModule, TrainModule
from fp4train.loggers import ResumableCSVLogger
from fp4train.logs import quiet_library_noise, route_lightning_logs, use_stdout_if_unconfigured
from fp4train.methods import method_of
from fp4train.models import HFModelConfig, build_hf_model, build_model
from fp4train.models.compile import compile_blocks
from fp4train.optim import OptimConfig
from fp4train.precision_schedule import PrecisionSchedule
from fp4train.recipes import OPERANDS, SR_SCOPES, Recipe, RecipeConfig, build_recipe

__all__ = [
    "CheckpointConfig", "DataConfig", "LoggerConfig", "ModelConfig", "TrainConfig", "TrainResult",
    "TrainerConfig", "build_converted_model", "check_config", "effective_quant_config", "main", "train",
]

log = logging.getLogger("fp4train.train")  # not __main__ under `python -m`
TEXT_DATA = ("stdlib_text", "text_folders", "token_file")
RUN_INFO = "run_info.json"
# absolute, so that `python -m fp4train.train`, the `fp4train` script and an import all find it
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ModelConfig:
    """``build_model(name, size, **overrides)``; ``overrides`` are fields of the model's config.
    ``compile_blocks``: ``torch.compile`` each block after conversion, quantized layers and the
    Mamba-2 scan left eager (``fp4train.models.compile``). ``name="hf"``: ``build_hf_model(hf)``,
    any transformers causal LM (``size``/``overrides`` unused)."""

    name: str = "hybrid_lm"
    size: str = "micro"
    overrides: dict[str, Any] = field(default_factory=dict)
    compile_blocks: bool = False
    hf: HFModelConfig | None = None


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
    ``fp4train.cuda_graphs``) — the same losses, without the per-kernel host work that bounds small
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
    ``last.ckpt`` at the end, and one on SIGTERM or any other exception; never one holding a
    non-finite tensor. ``resume``: a checkpoint path to continue from (checked first: readable,
    same recipe and model, before ``max_steps``)."""

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
    """What a run left: its directory, last logged metrics, status (``finished``/``diverged``),
    the optimizer steps taken and the tokens or images (``item_name``) they consumed."""

    out_dir: str
    status: str
    metrics: dict[str, float]
    message: str = ""
    steps: int = 0
    items: int = 0
    item_name: str = "samples"

    def summary(self) -> str:
        """A few lines for the end of the console and ``train.log``."""
        losses = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in ("train/loss", "val/loss", "val/acc") if k in self.metrics)
        lines = [f"Run {self.status}: {self.steps} steps, {self.items:,} {self.item_name}; final {losses or 'losses not logged'}"]
        if self.message:
            lines.append(self.message)
        lines.append(f"Output: {self.out_dir}")
        return "\n".join(lines)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def check_config(cfg: TrainConfig) -> None:
    """The checks of ``cfg`` that need no data, model or hardware; ``ConfigError`` names the field."""
    if cfg.model.name not in MODULES:
        raise ConfigError(f"unknown model {cfg.model.name!r}; valid: {sorted(MODULES)}")
    task = MODULES[cfg.model.name].task
    data_task = "text" if cfg.data.name in TEXT_DATA else "vision"
    if task != data_task:
        raise ConfigError(
            f"model {cfg.model.name!r} needs {task} data but data {cfg.data.name!r} is {data_task}; "
            f"valid {task} data: {list(TEXT_DATA) if task == 'text' else ['digits', 'npz', 'image_folder']}"
        )
    at_least = {
        "trainer.max_steps": (cfg.trainer.max_steps, 1), "data.batch_size": (cfg.data.batch_size, 1),
        "trainer.accumulate_grad_batches": (cfg.trainer.accumulate_grad_batches, 1),
        "trainer.val_every_n_steps": (cfg.trainer.val_every_n_steps, 1), "trainer.val_batches": (cfg.trainer.val_batches, 1),
        "data.num_workers": (cfg.data.num_workers, 0), "checkpoint.every_n_steps": (cfg.checkpoint.every_n_steps, 0),
        "logger.quant_stats_every_n_steps": (cfg.logger.quant_stats_every_n_steps, 0),
    }
    for name, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if cfg.data.batch_size % cfg.trainer.accumulate_grad_batches:
        raise ConfigError(
            f"data.batch_size {cfg.data.batch_size} (the global batch of one optimizer step) is not divisible "
            f"by trainer.accumulate_grad_batches {cfg.trainer.accumulate_grad_batches}"
        )


@contextmanager
def _config_errors(what: str) -> Iterator[None]:
    """Re-raise the ``ValueError``/``OSError`` of a builder of user-named things as a
    ``ConfigError`` prefixed with ``what`` (the builders raise those for bad input only)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise ConfigError(f"{what}: {e}") from e


def build_converted_model(cfg: TrainConfig, data_vocab_size: int | None = None) -> tuple[nn.Module, ConversionReport]:
    """``cfg``'s model, converted to its recipe (``ConfigError`` for bad model or recipe settings).
    ``data_vocab_size``: the text data's vocabulary, which a ``model=hf`` model takes by default."""
    with _config_errors(f"model {cfg.model.name!r} (size {cfg.model.size!r})"):
        model = _build_model(cfg.model, data_vocab_size)
    with _config_errors(f"recipe {cfg.quant.name!r}"):
        report = convert(model, cfg.quant)
    return model, report


def _check_geometry(cfg: TrainConfig, model: nn.Module, dataset: Dataset) -> None:
    """An image model's input geometry and classes against the data's (before any step runs)."""
    if MODULES[cfg.model.name].task != "vision":
        return
    mc = model.config
    c, h, w = dataset.image_shape
    if (c, h, w) == (mc.in_channels, mc.image_size, mc.image_size) and dataset.num_classes <= mc.num_classes:
        return
    if h != w:
        raise ConfigError(
            f"data {cfg.data.name!r} gives {h}×{w} images; the ViT takes square ones (image_folder: set "
            "data.options.image_size to resize)"
        )
    fix = {"image_size": h, "in_channels": c, "num_classes": dataset.num_classes}
    if h % mc.patch_size:
        fix["patch_size"] = next(p for p in (4, 2, 1) if h % p == 0)
    overrides = " ".join(f"++model.overrides.{k}={v}" for k, v in fix.items())
    raise ConfigError(
        f"data {cfg.data.name!r} gives {c}×{h}×{w} images of {dataset.num_classes} classes, but model "
        f"{cfg.model.name!r} (size {cfg.model.size!r}) takes {mc.in_channels}×{mc.image_size}×{mc.image_size} "
        f"images of {mc.num_classes} classes. Set the model's geometry: {overrides}"
    )


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's entries other than the weights, and the shape of each entry of its state
    dict (``None`` for a module's extra state): a single-file Lightning checkpoint, or a sharded
    one (``fp4train.distributed.sharded_checkpoint_summary``; only its metadata is read)."""
    if path.is_dir():
        if not (path / ".metadata").is_file() or not (path / "meta.pt").is_file():
            raise ValueError("a folder, but not a sharded checkpoint (no .metadata and meta.pt inside)")
        return sharded_checkpoint_summary(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError("not a Lightning checkpoint (no state_dict)")
    return ckpt, {k: v.shape if torch.is_tensor(v) else None for k, v in ckpt["state_dict"].items()}


def _check_resume(path: str, cfg: TrainConfig, module: TrainModule) -> int:
    """The global step of checkpoint ``path`` after checking that ``module`` can continue from
    it: a readable Lightning checkpoint (one file, or a sharded folder) of the same recipe and
    model, before ``max_steps``."""
    where = f"checkpoint.resume={path}"
    if not Path(path).exists():
        raise ConfigError(f"{where}: no such file or folder")
    try:
        ckpt, theirs = _read_checkpoint(Path(path))
    except Exception as e:  # a user's file: any failure to read it is theirs to fix
        raise ConfigError(f"{where} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if "global_step" not in ckpt:
        raise ConfigError(f"{where} is not a Lightning checkpoint (no global_step)")
    saved = ckpt.get(IDENTITY_KEY, {})
    for key, value in module.run_identity.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"{where} was written by a run with {key} {saved[key]!r}; this run has {value!r}")
    own = {k: v.shape if torch.is_tensor(v) else None for k, v in module.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    resized = sorted(k for k in set(own) & set(theirs)
                     if None not in (own[k], theirs[k]) and tuple(own[k]) != tuple(theirs[k]))
    if missing or unexpected or resized:
        raise ConfigError(
            f"{where} does not fit this run's model and recipe ({cfg.model.name} {cfg.model.size}, {cfg.quant.name}): "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'…' if len(unexpected) > 3 else ''}, other shapes {resized[:3]}"
        )
    step = int(ckpt["global_step"])
    if step >= cfg.trainer.max_steps:
        raise ConfigError(
            f"{where} is at step {step}, and this run stops at trainer.max_steps={cfg.trainer.max_steps}: nothing "
            f"left to train (the run finished). To train on, raise trainer.max_steps above {step}"
        )
    return step


def effective_quant_config(cfg: RecipeConfig, report: ConversionReport) -> dict[str, Any]:
    """``cfg``'s fields with the value each switch has in the built recipe (``None`` in ``cfg``
    means "the recipe's default"; here it is resolved), BF16 block counts as applied to the model.
    Switches that do not apply (``sr_scope`` without SR, ``rht_size`` without RHT, ``scale_rule``
    outside MX) stay ``None``. Under ``methods``, the recipe's quantization method has the options
    in force; the other methods' entries are as given (unused)."""
    recipe = build_recipe(cfg)
    specs = [recipe.spec(o) for o in OPERANDS]
    sr = tuple(o for o in OPERANDS if recipe.spec(o).rounding == "sr")
    rht = sorted({s.rht for s in specs if s.rht is not None})
    mx = [s.mx_rule for s in specs if not s.is_identity and s.format.scale == "e8m0"]
    w = recipe.w_fprop.block_shape
    resolved = {
        "rht": bool(rht), "rht_size": rht[0] if rht else None,
        "sr": bool(sr), "sr_scope": next((k for k, ops in SR_SCOPES.items() if set(ops) == set(sr)), None) if sr else None,
        "weight_2d": w is not None and w[0] > 1, "scale_rule": mx[0] if mx else None,
        "bf16_first_blocks": report.bf16_first_blocks, "bf16_last_blocks": report.bf16_last_blocks,
        "double_quant": recipe.double_quant, "skip_incompatible": recipe.skip_incompatible,
        "mx_fp8_gemm": recipe.mx_fp8_gemm,
    }
    given = asdict(cfg)
    if recipe.method is not None:
        resolved["methods"] = {**given["methods"], recipe.method: asdict(recipe.options)}
    return {f.name: resolved[f.name] if f.name in resolved else given[f.name] for f in fields(cfg)}


def _loggers(cfg: TrainConfig, out: Path, overrides: list[str], report: ConversionReport, resume_step: int) -> list[Logger]:
    loggers: list[Logger] = [ResumableCSVLogger(str(out), resume_step)]
    if cfg.logger.wandb:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        if not cfg.logger.offline and not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
            raise ConfigError(
                "logger.offline=false needs W&B credentials (`wandb login` or WANDB_API_KEY); "
                "offline logging (the default) needs none"
            )
        tags = [cfg.quant.name, cfg.model.name, cfg.data.name, *overrides]
        logger = WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group or cfg.study,
            job_type="train", name=out.name, tags=[t[:64] for t in tags],
            config={**asdict(cfg), "quant": effective_quant_config(cfg.quant, report), "overrides": overrides},
            save_dir=str(out), offline=cfg.logger.offline, settings=wandb.Settings(quiet=True),
        )
        # Lightning passes anonymous=None to wandb.init, which warns that the setting is deprecated
        logger._wandb_init.pop("anonymous", None)
        loggers.append(logger)
    return loggers


def _callbacks(cfg: TrainConfig, out: Path, recipe: Recipe) -> list[L.Callback]:
    """Checkpointing, progress bar, quant stats, the recipe's method's callbacks, then ``cfg.callbacks``."""
    ckpt = FiniteCheckpoint(
        dirpath=out / "checkpoints", filename="step_{step}", auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps or None, save_top_k=-1,
        every_n_epochs=None if cfg.checkpoint.every_n_steps else 0,
        save_last=cfg.checkpoint.save_last, save_on_exception=True,
        enable_version_counter=False,  # a run resumed into its directory replaces last.ckpt
    )
    callbacks: list[L.Callback] = [ckpt]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    if cfg.logger.quant_stats_every_n_steps > 0:
        callbacks.append(QuantStatsLogger(cfg.logger.quant_stats_every_n_steps))
    method = method_of(recipe)
    if method is not None:
        callbacks += method.callbacks(recipe)
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


def _build_model(cfg: ModelConfig, data_vocab_size: int | None) -> torch.nn.Module:
    """Our models by name and size; ``hf`` from ``cfg.hf``, its vocabulary the data's by default."""
    if cfg.name != "hf":
        return build_model(cfg.name, cfg.size, **cfg.overrides)
    if cfg.overrides:
        raise ValueError(f"model=hf takes its settings in model.hf (model_type, path, config), not model.overrides {cfg.overrides}")
    return build_hf_model(cfg.hf or HFModelConfig(), data_vocab_size)


def train(cfg: TrainConfig, overrides: list[str] | None = None) -> TrainResult:
    """Build data, model (converted to ``cfg.quant`` before the optimizer exists), module,
    loggers and trainer; fit; log the summary. ``overrides`` (the command line's) only label
    the run. Bad input raises ``ConfigError`` before any step runs."""
    quiet_library_noise()
    use_stdout_if_unconfigured()
    check_config(cfg)
    if cfg.trainer.cuda_graph and not torch.cuda.is_available():
        raise ConfigError("trainer.cuda_graph=true needs a CUDA GPU; none is visible (set it false on CPU)")
    with _config_errors(f"recipe {cfg.quant.name!r}"):
        recipe = build_recipe(cfg.quant)
    with _config_errors("trainer"):  # before any process is started
        check_strategy(cfg.trainer.strategy, cfg.trainer.precision, cfg.trainer.cuda_graph, recipe)
    overrides = list(overrides or [])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DIVERGED_FILE).unlink(missing_ok=True)  # a run resumed into a diverged run's directory
    if cfg.trainer.torch_threads:
        torch.set_num_threads(cfg.trainer.torch_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with _config_errors(f"data {cfg.data.name!r}"):
        train_set, val_set = build_datasets(cfg.data.name, **cfg.data.options)
    model, report = build_converted_model(cfg, getattr(train_set, "vocab_size", None))
    _check_geometry(cfg, model, train_set)
    if cfg.model.compile_blocks:
        compile_blocks(model, eager=(QuantLinear,))
    log.info("%s", report)
    (out / "conversion.md").write_text(str(report) + "\n")
    (out / RUN_INFO).write_text(json.dumps(
        {"study": cfg.study, "group": cfg.logger.group or cfg.study, "recipe": cfg.quant.name,
         "model": cfg.model.name, "data": cfg.data.name, "overrides": overrides}, indent=1))
    module = MODULES[cfg.model.name](model, cfg.optim, cfg.precision_schedule, cfg.trainer.cuda_graph)
    module.run_identity = {"recipe": cfg.quant.name, "model": f"{cfg.model.name} {cfg.model.size}"}
    resume = cfg.checkpoint.resume
    resume_step = _check_resume(resume, cfg, module) if resume else 0
    data = StepDataModule(train_set, val_set, cfg.data.batch_size, cfg.data.num_workers, cfg.seed)
    loggers = _loggers(cfg, out, overrides, report, resume_step)
    with _config_errors("callbacks"):
        callbacks = _callbacks(cfg, out, recipe)
    trainer = _trainer(cfg, out, loggers, callbacks)
    split = trainer.world_size * cfg.trainer.accumulate_grad_batches
    if cfg.data.batch_size % split:
        raise ConfigError(
            f"data.batch_size {cfg.data.batch_size} (global) is not divisible by {trainer.world_size} processes × "
            f"trainer.accumulate_grad_batches {cfg.trainer.accumulate_grad_batches}"
        )
    log.info("Training %s %s on %s under recipe %s for %d steps (from step %d); output: %s", cfg.model.name,
             cfg.model.size, cfg.data.name, cfg.quant.name, cfg.trainer.max_steps, resume_step, out)
    try:
        with warnings.catch_warnings():
            if resume:  # resuming into the run's own folder: its checkpoints are expected there
                warnings.filterwarnings("ignore", message=re.escape(
                    f"Checkpoint directory {os.path.realpath(out / 'checkpoints')} exists and is not empty"))
            trainer.fit(module, datamodule=data, ckpt_path=resume)
    except SIGTERMException:
        last = trainer.checkpoint_callback.last_finite
        log.error("SIGTERM: stopped at step %d; %s", trainer.global_step,
                  f"resume with checkpoint.resume={last}" if last else "no finite checkpoint was saved")
        raise SystemExit(143) from None
    finally:
        if cfg.logger.wandb:
            import wandb

            wandb.finish()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    diverged = out / DIVERGED_FILE
    status, message = ("diverged", diverged.read_text().strip()) if diverged.exists() else ("finished", "")
    per_sample = train_set[0][1].numel()  # tokens of an LM window, 1 for an image
    result = TrainResult(str(out), status, metrics, message, trainer.global_step,
                         trainer.global_step * cfg.data.batch_size * per_sample, module.item_name)
    log.info("%s", result.summary())
    return result


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The typed ``TrainConfig`` of a composed Hydra config (validates every field)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    with _config_errors("config"):
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), plain))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final validation (else training) loss for sweepers.
    A ``ConfigError`` is printed as one line and ends the process with status 2; a single run
    that diverged exits with status 1 (a sweep goes on to its next job)."""
    route_lightning_logs()
    hc = HydraConfig.get()
    try:
        if hc.mode == RunMode.MULTIRUN:
            with _config_errors("trainer.strategy"):
                check_sweep(cfg.trainer.strategy)
        result = train(to_train_config(cfg), list(hc.overrides.task))
    except ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("error: %s", e)
        raise SystemExit(2) from None
    if result.status == "diverged" and hc.mode == RunMode.RUN:
        raise SystemExit(1)
    return result.metrics.get("val/loss", result.metrics.get("train/loss"))


if __name__ == "__main__":
    main()
