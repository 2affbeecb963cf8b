"""Quantization methods as plug-ins: what a method adds to a recipe, and how the core asks for it.

A *method* is a training technique beyond a recipe's six operand specs (``fp4train.recipes``): its
own way of quantizing an operand, optimizer machinery, periodic work during training, metrics.
TetraJet (``fp4train/methods/tetrajet/``) is one; ``docs/methods.md`` shows how to add one.

A method is a package under ``fp4train/methods/`` whose ``__init__`` defines ``METHOD =
Method(...)``. Every such package is imported and registered the first time anything is looked up
here (``register`` adds a method defined elsewhere: a test, a notebook). The core asks the method
of the recipe in use (``method_of``) and never names one:

==============================  ==============================================  ===================
who asks                        for what                                        ``Method`` field
==============================  ==============================================  ===================
``recipes.build_recipe``        named recipes (``quant=<name>``) and their      ``recipes``,
                                options (``quant.methods.<method>.<option>``)   ``options``
``convert.convert``             the class of each quantized linear layer        ``layer``
``optim.build_optimizer``       hooks on the optimizer                          ``optimizer_hook``
``train``                       Lightning callbacks (periodic work, metrics)    ``callbacks``
``distributed.check_strategy``  why sharded weights (FSDP) are refused, if so   ``sharding_refusal``
==============================  ==============================================  ===================
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:  # annotations only: these modules import this one
    import lightning as L
    import torch
    from torch import nn

    from fp4train.linear import QuantLinear
    from fp4train.recipes import Recipe, RecipeDefaults

__all__ = [
    "Method", "method_of", "named_recipe", "option_nodes", "register", "registered", "resolve_options", "unregister",
]


@dataclass(frozen=True)
class Method:
    """What one quantization method contributes. ``name``, ``options`` and ``recipes`` are
    required; a hook left at its default adds nothing.

    * ``name``: a Python identifier, the key of the method's options node ``quant.methods.<name>``.
    * ``options``: a frozen dataclass whose fields (each with a default) are the method's
      switches, typed: the keys of ``quant.methods.<name>`` (``null`` there: the named recipe's
      value), checked and converted to the field's type as Hydra would. Refuse bad values in
      ``__post_init__`` with a ``ValueError`` naming the value and the valid range.
    * ``recipes``: ``{recipe name: (RecipeDefaults, options)}``, the named recipes the method adds
      (run as ``quant=<name>`` with ``conf/quant/<name>.yaml`` holding ``name: <name>``). The
      ``fp4train.recipes.RecipeDefaults`` give the six operand specs, which the core switches
      (``quant.sr=false``, …) override as for any recipe; the options instance gives the method's
      switches. The built ``Recipe`` carries the method's name (``recipe.method``) and the
      resolved options (``recipe.options``), where the method's own code reads them.
    * ``layer(recipe) -> type[QuantLinear]``: the class ``convert`` builds for each linear it
      quantizes (``cls.from_linear(linear, recipe, layer_id)``), a subclass of
      ``fp4train.linear.QuantLinear`` (``None``: ``QuantLinear`` itself). The subclass changes what
      is quantized how through ``QuantLinear``'s hooks: ``operand_quantizer(operand)`` replaces
      ``fp4train.quant.quantize`` for any of the six operands (``fp4train.recipes.OPERANDS``),
      forward and backward; ``quantize_weight`` rounds the Fprop weight from layer state (with
      ``rounds_weight_plainly``); ``graph_key`` names the Python-side choices a CUDA graph
      depends on; buffers and ``get_extra_state``/``set_extra_state`` keep its state in
      checkpoints. A gradient mask (a straight-through estimator that passes the gradient only
      where the forward did not clip) is an autograd function applied to the input in the
      subclass's ``forward``: the identity forward, the mask backward (``docs/methods.md``).
    * ``optimizer_hook(model, optimizer) -> None``: called by ``fp4train.optim.build_optimizer``
      once the optimizer exists (before ``optim.wrappers``) when ``model`` has layers of the
      method's recipes. Attach through ``optimizer.register_step_pre_hook``/
      ``register_step_post_hook``: the training loop keeps the same optimizer object (fused
      AdamW included).
    * ``callbacks(recipe) -> list[lightning.Callback]``: Lightning callbacks ``fp4train.train``
      adds to a run of one of the method's recipes (after its own, before those named in
      ``callbacks:``). Metrics are logged from a callback through ``trainer.loggers``, under a
      prefix of the method's; a callback with state to resume defines ``state_dict`` and
      ``load_state_dict``; one that needs the batches training is about to see (a calibration)
      gets them from ``trainer.datamodule.batches_from(step)`` (``fp4train.lit.StepDataModule``).
    * ``sharding_refusal(recipe) -> str | None``: why the recipe cannot train with its weights
      sharded (``trainer=fsdp``), e.g. state kept per element of the whole weight; ``None``: it
      can. ``fp4train.distributed.check_strategy`` refuses such a run before any process starts.
    """

    name: str
    options: type
    recipes: Mapping[str, tuple[RecipeDefaults, Any]]
    layer: Callable[[Recipe], type[QuantLinear] | None] = lambda recipe: None
    optimizer_hook: Callable[[nn.Module, torch.optim.Optimizer], None] = lambda model, optimizer: None
    callbacks: Callable[[Recipe], list[L.Callback]] = lambda recipe: []
    sharding_refusal: Callable[[Recipe], str | None] = lambda recipe: None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a method's name is a Python identifier (its config key), got {self.name!r}")
        if not (is_dataclass(self.options) and self.options.__dataclass_params__.frozen):
            raise TypeError(f"method {self.name!r}: options must be a frozen dataclass, got {self.options!r}")
        for recipe, (_, options) in self.recipes.items():
            if not isinstance(options, self.options):
                raise TypeError(f"method {self.name!r}: recipe {recipe!r} has options {options!r}, "
                                f"not a {self.options.__name__}")


_REGISTRY: dict[str, Method] = {}
_found = False  # whether the packages under fp4train/methods/ are registered


def register(method: Method) -> Method:
    """Add ``method``; its name and recipe names must be new (the packages under
    ``fp4train/methods/`` are registered first). Returns it."""
    known = registered()
    if known.get(method.name, method) is not method:
        raise ValueError(f"a method named {method.name!r} is already registered (unregister it first)")
    for other in known.values():
        taken = sorted(set(other.recipes) & set(method.recipes))
        if other is not method and taken:
            raise ValueError(f"method {method.name!r} names recipes {taken}, which method {other.name!r} names")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove the method ``name`` (e.g. before registering an edited version of it)."""
    if name not in _REGISTRY:
        raise ValueError(f"no method named {name!r} is registered; registered: {sorted(_REGISTRY)}")
    del _REGISTRY[name]


def registered() -> dict[str, Method]:
    """Every registered method by name. The first call imports and registers the packages under
    ``fp4train/methods/``."""
    global _found
    if not _found:
        _found = True  # first: a method package may look something up while it is imported
        try:
            for info in pkgutil.iter_modules(__path__, f"{__name__}."):
                if info.ispkg:
                    register(_method_in(importlib.import_module(info.name)))
        except BaseException:
            _found = False
            raise
    return dict(_REGISTRY)


def _method_in(module: Any) -> Method:
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise TypeError(f"{module.__name__} is a package under fp4train/methods/ without METHOD = Method(...)")
    return method


def named_recipe(name: str) -> tuple[Method, RecipeDefaults, Any] | None:
    """The method that names recipe ``name``, with that recipe's defaults and options; ``None``
    if no method names it."""
    for method in registered().values():
        if name in method.recipes:
            defaults, options = method.recipes[name]
            return method, defaults, options
    return None


def method_of(recipe: Recipe) -> Method | None:
    """The method of a built recipe; ``None`` for a recipe of no method."""
    if recipe.method is None:
        return None
    methods = registered()
    if recipe.method not in methods:
        raise ValueError(f"recipe {recipe.name!r} is method {recipe.method!r}'s, which is not registered; "
                         f"registered: {sorted(methods)}")
    return methods[recipe.method]


def option_nodes() -> dict[str, dict[str, None]]:
    """``{method: {option: None}}`` for every method: the default of ``quant.methods``, so that
    every option is a key the command line can set (``quant.methods.tetrajet.q_ema_decay=0.999``)."""
    return {name: {f.name: None for f in fields(m.options)} for name, m in registered().items()}


def resolve_options(method: Method, options: Any, given: Mapping[str, Any]) -> Any:
    """``options`` (a named recipe's) with the fields ``given`` sets replaced (``None``: keep),
    each converted to its field's type; ``ValueError`` naming an unknown option or a bad value."""
    valid = [f.name for f in fields(method.options)]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"method {method.name!r} has no option {unknown[0]!r}; valid: {valid}")
    set_here = {k: v for k, v in given.items() if v is not None}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(options, flags={"readonly": False}), set_here))
    except OmegaConfBaseException as e:
        raise ValueError(f"quant.methods.{method.name}.{e.full_key}: {str(e).splitlines()[0]}") from None
