"""Optimizer and learning-rate schedules.

* ``build_optimizer``: AdamW (Loshchilov & Hutter, arXiv 1711.05101) on the FP32 master weights,
  with weight decay only on matrices: parameters marked ``_no_weight_decay`` (Mamba's ``A_log``,
  ``D``, ``dt_bias``), 0-/1-D tensors (norm weights, biases), ``nn.Embedding`` tables and the
  ViT's ``cls_token``/``pos_embed`` (timm's ``no_weight_decay`` names) are not decayed.
  ``fused``: PyTorch's single-kernel AdamW step (``fused=True``), by default wherever every
  parameter is a CUDA floating-point tensor (``fused_by_default``). The optimizer hooks of the
  quantization methods of the model's layers (``fp4train.methods``) are attached to it; then
  ``OptimConfig.wrappers`` hands it to hooks named by dotted path, so new optimizer machinery
  plugs in by config.
* ``lr_factor``: the multiplier of the peak learning rate at an optimizer step —
  ``cosine`` (linear warmup, then half-cosine to ``min_lr_ratio``; SGDR, arXiv 1608.03983),
  ``wsd`` (warmup-stable-decay: linear warmup, constant, then linear decay over the last
  ``decay_fraction`` of the steps to ``min_lr_ratio``; MiniCPM, arXiv 2404.06395 §4.1, as used by
  "Pretraining LLMs with NVFP4", arXiv 2509.25149 §4) or ``constant`` (warmup, then flat).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fp4train.linear import QuantLinear
from fp4train.methods import Method, method_of

__all__ = [
    "OptimConfig", "SCHEDULES", "build_optimizer", "build_scheduler", "fused_by_default", "lr_factor", "param_groups",
    "resolve_target",
]

SCHEDULES = ("cosine", "wsd", "constant")
NO_DECAY_NAMES = ("cls_token", "pos_embed", "dist_token")


@dataclass
class OptimConfig:
    """AdamW hyperparameters and the LR schedule.

    ``warmup_steps``: linear warmup from 0. ``min_lr_ratio``: the final LR as a fraction of ``lr``.
    ``decay_fraction``: WSD's decay phase as a fraction of all steps. ``fused``: AdamW's fused
    step — ``None`` where every parameter is a CUDA floating-point tensor (``fused_by_default``),
    ``True`` always (PyTorch refuses what it cannot fuse), ``False`` never (PyTorch's default
    step: ``foreach`` on CUDA).
    The fused step unscales fp16 gradients inside ``step``, so Lightning cannot clip them: with
    ``precision=16-mixed`` and gradient clipping set ``fused=False``. ``wrappers``: dotted paths of
    callables ``f(model=..., optimizer=..., **kwargs)`` applied in order after the optimizer is
    built; one that returns a ``torch.optim.Optimizer`` replaces it, any other result is ignored
    (a hook that attached itself in place). Each entry is ``{"_target_": "pkg.mod.fn", **kwargs}``
    (Hydra's convention; resolved here, so plain Python dicts work the same).
    """

    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    fused: bool | None = None
    wrappers: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.schedule!r}; valid: {list(SCHEDULES)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def _no_decay(module: nn.Module, name: str, p: nn.Parameter) -> bool:
    return (
        getattr(p, "_no_weight_decay", False)
        or p.ndim < 2
        or isinstance(module, nn.Embedding)
        or name in NO_DECAY_NAMES
    )


def _named_params(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield f"{module_name}.{name}" if module_name else name, module, name, p


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices and everything else (see module doc), each with the
    parameter names under ``"names"`` for inspection."""
    decay: dict[str, list] = {"params": [], "names": [], "weight_decay": weight_decay}
    keep: dict[str, list] = {"params": [], "names": [], "weight_decay": 0.0}
    for full, module, name, p in _named_params(model):
        group = keep if _no_decay(module, name, p) else decay
        group["params"].append(p)
        group["names"].append(full)
    return [g for g in (decay, keep) if g["params"]]


def resolve_target(spec: dict[str, Any], what: str) -> Any:
    """Pop ``spec["_target_"]`` (a dotted path) and return the object it names."""
    if "_target_" not in spec:
        raise ValueError(f"{what} {spec} has no '_target_' (a dotted path such as 'pkg.module.name')")
    path = spec.pop("_target_")
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot resolve {what} {path!r}: {e}") from None


def fused_by_default(params: list[torch.Tensor]) -> bool:
    """The default of ``OptimConfig.fused``: true iff there are parameters and every one is a
    floating-point tensor on CUDA (what PyTorch's fused AdamW takes; a mixed or CPU model keeps
    the ``foreach`` step, as before)."""
    return bool(params) and all(p.device.type == "cuda" and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over ``param_groups(model)`` (fused per ``cfg.fused``), then the optimizer hook of each
    quantization method whose recipe a ``QuantLinear`` of ``model`` has (``Method.optimizer_hook``,
    step hooks, so they work on the fused step too), then ``cfg.wrappers`` applied in order."""
    groups = param_groups(model, cfg.weight_decay)
    fused = fused_by_default([p for g in groups for p in g["params"]]) if cfg.fused is None else cfg.fused
    opt: torch.optim.Optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True if fused else None  # None: foreach on CUDA
    )
    for method in _methods_of(model):
        method.optimizer_hook(model, opt)
    for spec in cfg.wrappers:
        spec = dict(spec)
        out = resolve_target(spec, "optimizer wrapper")(model=model, optimizer=opt, **spec)
        if isinstance(out, torch.optim.Optimizer):
            opt = out
    return opt


def _methods_of(model: nn.Module) -> list[Method]:
    """The quantization methods of ``model``'s ``QuantLinear`` layers, each once, in module order."""
    found: dict[str, Method] = {}
    for m in model.modules():
        method = method_of(m.recipe) if isinstance(m, QuantLinear) else None
        if method is not None:
            found.setdefault(method.name, method)
    return list(found.values())


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The LR multiplier at 0-based optimizer ``step`` of ``total_steps`` (see module doc)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":  # from the peak at step `warmup` to the minimum at the last step
        span = max(total_steps - 1 - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max(total_steps - round(cfg.decay_fraction * total_steps), cfg.warmup_steps)
    if step < decay_start:
        return 1.0
    # the decay phase's first step is already below the peak and its last step is the minimum
    progress = min((step - decay_start + 1) / max(total_steps - decay_start, 1), 1.0)
    return 1 - (1 - cfg.min_lr_ratio) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` applying ``lr_factor``."""
    if total_steps < 1:
        raise ValueError(f"the LR schedule needs total_steps >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
