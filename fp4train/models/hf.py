"""Any Hugging Face ``transformers`` causal LM as an fp4train model (``model=hf``).

``build_hf_model(HFModelConfig(...))`` builds the architecture from a config and never downloads:

* ``model_type`` (e.g. ``"llama"``, ``"qwen3"``, ``"nemotron_h"``): transformers' config class of
  that name with ``config`` as constructor arguments over its defaults (the defaults are full-size
  models: give the sizes). Weights are initialised by transformers' ``_init_weights``.
* ``path``: a local folder with ``config.json`` (``config`` overrides its fields). When it also
  holds weights (``model.safetensors``, ``pytorch_model.bin`` or their sharded indexes) they are
  loaded (``load_weights``: ``None`` loads them when present, ``True`` requires them, ``False``
  builds from ``config.json`` only).

Vocabulary: byte-level by default. A ``model_type`` build without ``config.vocab_size`` takes the
data's vocabulary size (``data_vocab_size``; 256 for byte data), else 256; a data vocabulary larger
than the model's is an error (the embedding would be indexed out of range).

Parameters are float32 whatever dtype a folder's ``config.json`` names (mixed precision comes
from the trainer; quantization from ``fp4train.convert``). ``HFCausalLM`` wraps the model so that
``model(x)`` maps token ids (b, l) to logits (b, l, vocab) like the other LMs, and exposes the
transformer's layer list as ``blocks`` for the recipes' first/last-block rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["BYTE_VOCAB", "HFCausalLM", "HFModelConfig", "build_hf_model", "import_transformers"]

log = logging.getLogger(__name__)
BYTE_VOCAB = 256
INSTALL_HINT = 'pip install -e ".[hf]"  (or: pip install "transformers>=5.17")'
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class HFModelConfig:
    """Which transformers causal LM to build (module doc). ``attn_implementation``: transformers'
    attention backend (``"sdpa"``, ``"eager"``, …; ``None`` keeps its default)."""

    model_type: str | None = None
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    load_weights: bool | None = None
    attn_implementation: str | None = None


def import_transformers():
    """The ``transformers`` module, or an ``ImportError`` saying how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"model=hf needs the optional package transformers ({e}); install it with {INSTALL_HINT}") from e
    return transformers


def _block_path(model: nn.Module) -> str:
    """Dotted name of the transformer's layer list: the shallowest non-empty ``nn.ModuleList``
    under the base model (``model.layers`` for Llama, Qwen and Nemotron-H, ``transformer.h`` for
    GPT-2, ``model.decoder.layers`` for OPT; an MoE layer's expert list sits deeper)."""
    base = model.base_model
    prefix = "" if base is model else f"{model.base_model_prefix}."
    best: tuple[int, str] | None = None
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (best is None or name.count(".") < best[0]):
            best = (name.count("."), name)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of layers under {type(base).__name__}")
    return prefix + best[1]


class HFCausalLM(nn.Module):
    """A transformers ``*ForCausalLM`` behind the LM interface: ``forward(x)`` → ``logits``
    (transformers' own forward, ``use_cache=False``). ``blocks`` is its layer list.

    The first training forward checks that every ``nn.Linear`` inside ``blocks`` ran its own
    forward: a model that multiplies by a layer's ``weight`` itself (transformers' fused Mamba
    kernel from ``mamba_ssm`` does so with ``out_proj.weight``) would bypass that layer's quantized
    GEMMs, so it raises naming the layers instead of training a mislabelled study."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.block_path = "model." + _block_path(model)
        self._checked = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.get_submodule(self.block_path)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x, use_cache=False).logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._checked or not self.training:
            return self._logits(x)
        linears = {n: m for n, m in self.blocks.named_modules() if isinstance(m, nn.Linear)}
        ran: set[str] = set()
        handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: ran.add(n)) for n, m in linears.items()]
        try:
            logits = self._logits(x)
        finally:
            for h in handles:
                h.remove()
        skipped = [f"{self.block_path}.{n}" for n in linears if n not in ran]
        if skipped:
            raise RuntimeError(
                f"{type(self.model).__name__}'s training forward did not call {len(skipped)} of its "
                f"{len(linears)} linear layers: {skipped}. The model computes them another way (e.g. "
                "transformers' fused Mamba-2 kernel from mamba_ssm multiplies by out_proj.weight itself), "
                "so a recipe cannot quantize those GEMMs. Uninstall the package that provides the fused "
                "kernel (pip uninstall mamba-ssm) to use transformers' PyTorch path."
            )
        self._checked = True
        return logits


def _config(cfg: HFModelConfig, data_vocab_size: int | None):
    """The transformers config of ``cfg``: its class's constructor over the folder's
    ``config.json`` or the class defaults, with ``cfg.config`` on top."""
    transformers = import_transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    overrides = dict(cfg.config)
    if cfg.path:
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model.hf.path {cfg.path!r} is not a local folder with a config.json (fp4train never "
                "downloads: save the model there first, e.g. with save_pretrained)"
            )
        base = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        if cfg.model_type and cfg.model_type != base.model_type:
            raise ValueError(
                f"model.hf.model_type {cfg.model_type!r} contradicts {folder / 'config.json'} "
                f"(model_type {base.model_type!r}); leave model_type unset with a path"
            )
        config_cls, fields = type(base), base.to_dict()
    elif cfg.model_type:
        if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"model.hf.model_type {cfg.model_type!r} is not a causal-LM architecture of transformers "
                f"{transformers.__version__}; valid: {sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)}"
            )
        config_cls, fields = type(transformers.AutoConfig.for_model(cfg.model_type)), {}
        overrides.setdefault("vocab_size", data_vocab_size or BYTE_VOCAB)
    else:
        raise ValueError(
            "model=hf needs model.hf.model_type (a transformers architecture, e.g. llama, qwen3, "
            "nemotron_h, with sizes in +model.hf.config.KEY=VALUE) or model.hf.path (a local folder "
            "with config.json)"
        )
    if not overrides:
        config = base
    else:
        config = config_cls(**{**fields, **overrides})
        defaults = config_cls()
        unknown = sorted(k for k in overrides if not hasattr(defaults, k) and hasattr(config, k))
        if unknown:
            raise ValueError(f"unknown {config_cls.__name__} keys {unknown} in model.hf.config")
    if data_vocab_size and data_vocab_size > config.vocab_size:
        raise ValueError(
            f"the data's vocabulary ({data_vocab_size} tokens) is larger than the model's vocab_size "
            f"{config.vocab_size}; set +model.hf.config.vocab_size={data_vocab_size} or use data of that vocabulary"
        )
    return config


def build_hf_model(cfg: HFModelConfig, data_vocab_size: int | None = None) -> HFCausalLM:
    """``HFCausalLM`` of ``cfg`` (module doc), float32, in training mode. ``data_vocab_size``:
    the training data's vocabulary (``TokenWindows.vocab_size``), or ``None`` if unknown."""
    transformers = import_transformers()
    config = _config(cfg, data_vocab_size)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    folder = Path(cfg.path) if cfg.path else None
    has_weights = folder is not None and any((folder / f).is_file() for f in WEIGHT_FILES)
    if cfg.load_weights and not has_weights:
        raise FileNotFoundError(
            f"model.hf.load_weights=true but {cfg.path!r} holds none of {list(WEIGHT_FILES)}"
            if folder else "model.hf.load_weights=true needs model.hf.path (a folder with the weights)"
        )
    if has_weights and cfg.load_weights is not False:
        if data_vocab_size and data_vocab_size != config.vocab_size:
            log.warning("model.hf.path %s: pretrained vocabulary of %d tokens, data of %d: train on token "
                        "files from its tokenizer (data=token_file) for its embeddings to mean anything",
                        cfg.path, config.vocab_size, data_vocab_size)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            folder, config=config, local_files_only=True, output_loading_info=True, **kwargs
        )
        missing = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
        if missing:
            raise ValueError(f"the weights in {cfg.path!r} do not cover the model: missing or mismatched {missing}")
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
    model.train()
    return HFCausalLM(model)

