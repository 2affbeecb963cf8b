"""Model surgery: ``convert(model, recipe)`` swaps ``nn.Linear`` modules for ``QuantLinear``.

Rules (NVFP4 paper §4: embeddings, the output head and norms stay high precision; the linear
layers of the first and last few blocks stay BF16):

* Only ``nn.Linear`` modules inside the model's block list are candidates. The block list is
  ``model.blocks`` (or ``layers``/``h``, also under ``model.model``/``model.transformer``);
  a model without one has every ``nn.Linear`` as a candidate except those named like an output
  head (``head``, ``lm_head``, ``classifier``, ``output``).
* Linears of the first ``bf16_first_blocks`` and last ``bf16_last_blocks`` blocks stay BF16.
* ``include``/``exclude`` regular expressions filter candidates by module name.
* A layer whose ``in_features``/``out_features`` do not fit its blocks raises a ``ValueError``
  naming it, or stays BF16 when ``recipe.skip_incompatible`` — the table says which.
* A quantizing recipe that converts no layer at all (e.g. NVIDIA's 2 + 8 BF16 blocks on a
  9-block model) raises, with the table: a run labelled ``nvfp4`` must not be BF16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

from fp4train.linear import QuantLinear
from fp4train.recipes import Recipe, RecipeConfig, build_recipe
from fp4train.tetrajet import QEMALinear

__all__ = ["ConversionReport", "convert", "find_blocks"]

_HEAD_NAMES = ("head", "lm_head", "classifier", "output")
_BLOCK_ATTRS = ("blocks", "layers", "h")


@dataclass
class ConversionReport:
    """What became what. ``rows``: (module name, in → out, block index, result, why kept);
    a quantized layer's row has an empty reason."""

    recipe: str
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    @property
    def quantized(self) -> list[str]:
        return [r[0] for r in self.rows if not r[4]]

    def __str__(self) -> str:
        n = len(self.quantized)
        lines = [
            f"Conversion to recipe {self.recipe!r}: {n} of {len(self.rows)} linear layers quantized",
            "",
            "| module | in → out | block | became | why |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {name} | {shape} | {blk} | {became} | {why} |" for name, shape, blk, became, why in self.rows]
        return "\n".join(lines)


def find_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's ordered list of blocks, or ``None`` if it has none."""
    for owner in (model, getattr(model, "model", None), getattr(model, "transformer", None)):
        for attr in _BLOCK_ATTRS:
            blocks = getattr(owner, attr, None) if owner is not None else None
            if isinstance(blocks, nn.ModuleList):
                return blocks
    return None


def _misfit(linear: nn.Linear, recipe: Recipe) -> str | None:
    """Why ``linear``'s shape does not fit the recipe's blocks, or ``None`` if it fits."""
    checks = [  # (operand, the dimension that runs along its blocks, the other dimension)
        ("x_fprop", linear.in_features, None),
        ("w_fprop", linear.in_features, linear.out_features),
        ("dy_dgrad", linear.out_features, None),
        ("w_dgrad", linear.out_features, linear.in_features),
    ]
    for operand, cols, rows in checks:
        block = recipe.spec(operand).block_shape
        if block is None:
            continue
        br, bc = block
        if cols % bc or (rows is not None and rows % br):
            return f"{operand} blocks {block} do not tile weight {linear.out_features}×{linear.in_features}"
    return None


def convert(model: nn.Module, recipe: Recipe | RecipeConfig | str) -> ConversionReport:
    """Swap the recipe's candidate ``nn.Linear`` modules of ``model`` (in place) for ``QuantLinear``.

    Parameters are shared, not copied, so an optimizer built before or after sees the same
    tensors. Returns the conversion table.
    """
    if not isinstance(recipe, Recipe):
        recipe = build_recipe(recipe)
    report = ConversionReport(recipe.name)
    blocks = find_blocks(model)
    block_of: dict[int, int] = {}
    if blocks is not None:
        for i, blk in enumerate(blocks):
            for m in blk.modules():
                block_of[id(m)] = i
    n_blocks = len(blocks) if blocks is not None else 0
    layer_id = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear and not isinstance(module, QuantLinear):
            continue
        idx = block_of.get(id(module))
        shape = f"{module.in_features} → {module.out_features}"
        blk = "-" if idx is None else str(idx)
        why = _keep_reason(name, idx, n_blocks, blocks is not None, recipe)
        if why is None and not recipe.is_bf16:
            misfit = _misfit(module, recipe)
            if misfit is not None:
                if not recipe.skip_incompatible:
                    raise ValueError(
                        f"layer {name!r} ({shape}) cannot take recipe {recipe.name!r}: {misfit}; "
                        "resize it, exclude it, or set skip_incompatible=true to keep it in BF16"
                    )
                why = f"kept: {misfit}"
        if why is not None or recipe.is_bf16:
            report.rows.append((name, shape, blk, "bf16", why or "recipe is bf16"))
            continue
        layer_cls = QEMALinear if recipe.q_ema_decay is not None else QuantLinear
        _set_module(model, name, layer_cls.from_linear(module, recipe, layer_id))
        report.rows.append((name, shape, blk, recipe.name, ""))
        layer_id += 1
    if report.rows and not report.quantized and not recipe.is_bf16:
        raise ValueError(
            f"recipe {recipe.name!r} quantized none of the model's {len(report.rows)} linear layers "
            f"({n_blocks} blocks; bf16_first_blocks={recipe.bf16_first_blocks}, "
            f"bf16_last_blocks={recipe.bf16_last_blocks}) — a run under this name would be BF16. "
            f"Lower those, or check include/exclude.\n\n{report}"
        )
    return report


def _keep_reason(name: str, idx: int | None, n_blocks: int, has_blocks: bool, recipe: Recipe) -> str | None:
    """Why the linear ``name`` stays BF16 regardless of its shape, or ``None``."""
    if has_blocks and idx is None:
        return "outside the blocks (embedding/head)"
    if not has_blocks and name.rsplit(".", 1)[-1] in _HEAD_NAMES:
        return "output head"
    if idx is not None and idx < recipe.bf16_first_blocks:
        return f"first {recipe.bf16_first_blocks} blocks in BF16"
    if idx is not None and idx >= n_blocks - recipe.bf16_last_blocks:
        return f"last {recipe.bf16_last_blocks} blocks in BF16"
    if recipe.include and not any(re.search(p, name) for p in recipe.include):
        return "not matched by include"
    if any(re.search(p, name) for p in recipe.exclude):
        return "matched by exclude"
    return None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
