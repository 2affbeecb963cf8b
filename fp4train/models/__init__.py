"""Models as plain ``nn.Module``s: a DeiT-style ViT and a Nemotron-H-style hybrid LM (named
sizes in ``REGISTRY``), and any ``transformers`` causal LM (``hf.build_hf_model``; optional
package, imported only when such a model is built).

All expose ``model.blocks`` (an ``nn.ModuleList`` of the per-layer blocks, in order) and keep
every GEMM-carrying projection an ``nn.Linear``; embeddings and heads sit outside ``blocks``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from . import hybrid_lm, vit
from .hf import HFCausalLM, HFModelConfig, build_hf_model
from .hybrid_lm import HybridLM, HybridLMConfig
from .mamba2 import Mamba2Mixer, RMSNorm, ssd_chunked, ssd_naive
from .vit import ViT, ViTConfig

# name -> (config class, model class, named sizes as overrides of the config defaults)
REGISTRY: dict[str, tuple[type, type[nn.Module], dict[str, dict]]] = {
    "vit": (ViTConfig, ViT, vit.SIZES),
    "hybrid_lm": (HybridLMConfig, HybridLM, hybrid_lm.SIZES),
}


def model_config(name: str, size: str = "micro", **overrides) -> ViTConfig | HybridLMConfig:
    """The config of a named model size with ``overrides`` applied (field names of its config)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(REGISTRY)}")
    config_cls, _, sizes = REGISTRY[name]
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for model {name!r}; valid: {list(sizes)}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields {unknown}; valid: {sorted(fields)}")
    return config_cls(**{**sizes[size], **overrides})


def build_model(name: str, size: str = "micro", **overrides) -> nn.Module:
    """Build ``name`` in {"vit", "hybrid_lm"} at a named ``size``: micro | tiny | small, and for the
    hybrid LM also base | 1b (``REGISTRY[name][2]``)."""
    config = model_config(name, size, **overrides)
    return REGISTRY[name][1](config)


def param_count_table() -> str:
    """Markdown table of parameter counts of every named size (instantiated on the meta device)."""
    rows = ["| model | size | parameters | in `blocks` | config |", "|---|---|---:|---:|---|"]
    for name, (_, _, sizes) in REGISTRY.items():
        for size in sizes:
            with torch.device("meta"):
                model = build_model(name, size)
            total = sum(p.numel() for p in model.parameters())
            in_blocks = sum(p.numel() for p in model.blocks.parameters())
            rows.append(f"| {name} | {size} | {total:,} | {in_blocks:,} | {model.config.summary()} |")
    return "\n".join(rows)


__all__ = [
    "HFCausalLM",
    "HFModelConfig",
    "HybridLM",
    "HybridLMConfig",
    "Mamba2Mixer",
    "RMSNorm",
    "REGISTRY",
    "ViT",
    "ViTConfig",
    "build_hf_model",
    "build_model",
    "model_config",
    "param_count_table",
    "ssd_chunked",
    "ssd_naive",
]
