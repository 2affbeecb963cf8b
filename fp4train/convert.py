"""Model surgery: ``convert(model, recipe)`` swaps ``nn.Linear`` modules for ``QuantLinear`` (or
the layer class of the recipe's quantization method, ``fp4train.methods``).

Rules (NVFP4 paper §4: embeddings, the output head and norms stay high precision; the linear
layers of the first and last few blocks stay BF16):

* Only ``nn.Linear`` modules inside the model's block list are candidates. The block list is
  ``model.blocks`` (or ``layers``/``h``, also under ``model.model``/``model.transformer``);
  a model without one has every ``nn.Linear`` as a candidate except those named like an output
  head (``head``, ``lm_head``, ``classifier``, ``output``).
* Linears of the first ``bf16_first_blocks`` and last ``bf16_last_blocks`` blocks stay BF16.
  A recipe's default counts are chosen for a reference depth (``nvfp4``: 2 and 8 of the
  paper's 62 blocks) and scaled to the model's ``n`` blocks by ``bf16_block_counts``:
  ``max(1, round(k·n/62))`` for each nonzero count ``k``, then, where that would leave no
  block quantized, the first group and then the last gives way until one block is (the paper
  keeps more of the last blocks than of the first). Counts the user sets are taken as they are.
* ``include``/``exclude`` regular expressions filter candidates by module name.
* A layer whose ``in_features``/``out_features`` do not fit its blocks raises a ``ValueError``
  naming it, or stays BF16 when ``recipe.skip_incompatible`` — the table says which.
* A quantizing recipe that converts no layer at all (e.g. 2 + 8 BF16 blocks set on a 9-block
  model) raises a ``ConfigError`` with the table and the override that would quantize some: a
  run labelled ``nvfp4`` must not be BF16.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch.nn as nn

from fp4train.errors import ConfigError
from fp4train.linear import QuantLinear
from fp4train.methods import method_of
from fp4train.recipes import Recipe, RecipeConfig, build_recipe

__all__ = ["ConversionReport", "bf16_block_counts", "convert", "find_blocks"]

_HEAD_NAMES = ("head", "lm_head", "classifier", "output")
_BLOCK_ATTRS = ("blocks", "layers", "h")


@dataclass
class ConversionReport:
    """What became what. ``rows``: (module name, in → out, block index, result, why kept);
    a quantized layer's row has an empty reason. ``bf16_first_blocks``/``bf16_last_blocks``: the
    counts in force for this model (after scaling)."""

    recipe: str
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    bf16_first_blocks: int = 0
    bf16_last_blocks: int = 0

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


def _scaled(count: int, of: int | None, n_blocks: int) -> int:
    """``count`` blocks of an ``of``-block model, scaled to ``n_blocks`` (at least 1 if nonzero)."""
    if of is None or count == 0:
        return count
    return max(1, math.floor(count * n_blocks / of + 0.5))


def bf16_block_counts(recipe: Recipe, n_blocks: int) -> tuple[int, int]:
    """(first, last) BF16 block counts of ``recipe`` on a model of ``n_blocks`` blocks.

    Exact counts (``bf16_*_of`` None) are returned as they are. Scaled ones (the recipe's
    defaults, e.g. NVFP4's 2 and 8 of 62, arXiv 2509.25149 §4) become
    ``max(1, round(count · n_blocks / of))``; if first + last would cover every block, the scaled
    first count and then the scaled last count shrink until one block is quantized.
    """
    first = _scaled(recipe.bf16_first_blocks, recipe.bf16_first_of, n_blocks)
    last = _scaled(recipe.bf16_last_blocks, recipe.bf16_last_of, n_blocks)
    if first + last >= n_blocks and recipe.bf16_first_of is not None:
        first = max(0, n_blocks - 1 - last)
    if first + last >= n_blocks and recipe.bf16_last_of is not None:
        last = max(0, n_blocks - 1 - first)
    return first, last


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
    """Swap the recipe's candidate ``nn.Linear`` modules of ``model`` (in place) for ``QuantLinear``,
    or the class the recipe's method builds (``Method.layer``).

    Parameters are shared, not copied, so an optimizer built before or after sees the same
    tensors. Returns the conversion table.
    """
    if not isinstance(recipe, Recipe):
        recipe = build_recipe(recipe)
    method = method_of(recipe)
    layer_cls = (method.layer(recipe) if method is not None else None) or QuantLinear
    blocks = find_blocks(model)
    block_of: dict[int, int] = {}
    if blocks is not None:
        for i, blk in enumerate(blocks):
            for m in blk.modules():
                block_of[id(m)] = i
    n_blocks = len(blocks) if blocks is not None else 0
    first, last = bf16_block_counts(recipe, n_blocks)
    report = ConversionReport(recipe.name, bf16_first_blocks=first, bf16_last_blocks=last)
    layer_id = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear and not isinstance(module, QuantLinear):
            continue
        idx = block_of.get(id(module))
        shape = f"{module.in_features} → {module.out_features}"
        blk = "-" if idx is None else str(idx)
        why = _keep_reason(name, idx, n_blocks, blocks is not None, recipe, first, last)
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
        _set_module(model, name, layer_cls.from_linear(module, recipe, layer_id))
        report.rows.append((name, shape, blk, recipe.name, ""))
        layer_id += 1
    if report.rows and not report.quantized and not recipe.is_bf16:
        raise ConfigError(
            f"recipe {recipe.name!r} quantized none of the model's {len(report.rows)} linear layers "
            f"({n_blocks} blocks; bf16_first_blocks={first}, bf16_last_blocks={last}) — a run under this "
            f"name would be BF16. {_remedy(report, n_blocks, first, last)}\n\n{report}"
        )
    return report


def _remedy(report: ConversionReport, n_blocks: int, first: int, last: int) -> str:
    """What would make a recipe that quantized nothing quantize something."""
    if n_blocks and first + last >= n_blocks:
        last_ok = min(last, n_blocks - 1)
        first_ok = min(first, n_blocks - 1 - last_ok)
        return (
            f"The BF16 blocks cover all {n_blocks}: set bf16_first_blocks={first_ok}, bf16_last_blocks={last_ok} "
            f"(command line: quant.bf16_first_blocks={first_ok} quant.bf16_last_blocks={last_ok}), or leave both "
            "unset to scale the recipe's defaults to the model."
        )
    return "Every candidate was excluded or did not fit (the table's last column says why): check include/exclude."


def _keep_reason(name: str, idx: int | None, n_blocks: int, has_blocks: bool, recipe: Recipe,
                 first: int, last: int) -> str | None:
    """Why the linear ``name`` stays BF16 regardless of its shape, or ``None``."""
    if has_blocks and idx is None:
        return "outside the blocks (embedding/head)"
    if not has_blocks and name.rsplit(".", 1)[-1] in _HEAD_NAMES:
        return "output head"
    if idx is not None and idx < first:
        return f"first {first} blocks in BF16{_scaled_from(recipe.bf16_first_blocks, recipe.bf16_first_of)}"
    if idx is not None and idx >= n_blocks - last:
        return f"last {last} blocks in BF16{_scaled_from(recipe.bf16_last_blocks, recipe.bf16_last_of)}"
    if recipe.include and not any(re.search(p, name) for p in recipe.include):
        return "not matched by include"
    if any(re.search(p, name) for p in recipe.exclude):
        return "matched by exclude"
    return None


def _scaled_from(count: int, of: int | None) -> str:
    return f" ({count} of {of} scaled to the model)" if of is not None else ""


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
