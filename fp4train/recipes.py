"""Named training recipes: which ``QuantSpec`` each of a linear layer's six GEMM operands gets,
and which layers stay in BF16.

A linear layer ``y = x Wᵀ`` runs three GEMMs, each quantizing both inputs along its own
reduction dimension (NUMERICS.md, "Where quantization happens"):

=======  ==============  ====================  =====================
GEMM     computes        operand 1 (reduce)    operand 2 (reduce)
=======  ==============  ====================  =====================
Fprop    y  = x Wᵀ       ``x_fprop`` (in)      ``w_fprop`` (in)
Dgrad    dx = dy W       ``dy_dgrad`` (out)    ``w_dgrad`` (out)
Wgrad    dW = dyᵀ x      ``dy_wgrad`` (tokens) ``x_wgrad`` (tokens)
=======  ==============  ====================  =====================

``RecipeConfig`` holds a recipe name plus the ablation switches (every one optional: ``None``
keeps the named recipe's default), so an ablation is one Hydra override (``quant.rht=false``).
``build_recipe`` turns it into a ``Recipe``: the full table of six specs plus layer rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from fp4train.quant import QuantSpec

__all__ = ["OPERANDS", "GEMMS", "Recipe", "RecipeConfig", "RECIPE_DEFAULTS", "build_recipe"]

OPERANDS = ("x_fprop", "w_fprop", "dy_dgrad", "w_dgrad", "dy_wgrad", "x_wgrad")
GEMMS = {"fprop": ("x_fprop", "w_fprop"), "dgrad": ("dy_dgrad", "w_dgrad"), "wgrad": ("dy_wgrad", "x_wgrad")}
BF16 = QuantSpec("bf16")


@dataclass(frozen=True)
class Recipe:
    """The resolved recipe: six operand specs and the layer-selection rules.

    ``double_quant`` (TetraJet §3): the Dgrad copy of W and the Wgrad copy of x are quantized
    from the *dequantized forward* operands instead of the full-precision tensors.
    ``skip_incompatible``: a layer whose features do not fit the blocks stays BF16 instead of
    raising. ``include``/``exclude``: regular expressions on module names (``re.search``).
    """

    name: str
    x_fprop: QuantSpec = BF16
    w_fprop: QuantSpec = BF16
    dy_dgrad: QuantSpec = BF16
    w_dgrad: QuantSpec = BF16
    dy_wgrad: QuantSpec = BF16
    x_wgrad: QuantSpec = BF16
    double_quant: bool = False
    bf16_first_blocks: int = 0
    bf16_last_blocks: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_incompatible: bool = False

    def spec(self, operand: str) -> QuantSpec:
        return getattr(self, operand)

    @property
    def is_bf16(self) -> bool:
        return all(self.spec(o).is_identity for o in OPERANDS)

    def table(self) -> str:
        """Markdown table of the six operand specs."""
        rows = ["| operand | fmt | block | rounding | rht | scale_rule |", "|---|---|---|---|---|---|"]
        for o in OPERANDS:
            s = self.spec(o)
            rows.append(f"| {o} | {s.fmt} | {s.block_shape} | {s.rounding} | {s.rht} | {s.scale_rule} |")
        return "\n".join(rows)


@dataclass
class RecipeConfig:
    """A named recipe plus ablation switches (``None`` = the recipe's default).

    Switches: ``rht`` (16-point RHT on the Wgrad inputs), ``rht_size``, ``sr`` (stochastic
    rounding of the gradient dy in Dgrad and Wgrad), ``weight_2d`` (square weight tiles, so W
    and Wᵀ quantize alike), ``bf16_first_blocks``/``bf16_last_blocks``, ``scale_rule`` (MX),
    ``double_quant``, ``seed`` (RHT signs and SR streams).
    """

    name: str = "nvfp4"
    rht: bool | None = None
    rht_size: int | None = None
    sr: bool | None = None
    weight_2d: bool | None = None
    bf16_first_blocks: int | None = None
    bf16_last_blocks: int | None = None
    scale_rule: str | None = None
    double_quant: bool | None = None
    skip_incompatible: bool | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass(frozen=True)
class _Defaults:
    fwd_fmt: str
    grad_fmt: str
    rht: bool = False
    rht_size: int = 16
    sr: bool = False
    weight_2d: bool = False
    bf16_first_blocks: int = 0
    bf16_last_blocks: int = 0
    scale_rule: str | None = None
    double_quant: bool = False
    skip_incompatible: bool = False


RECIPE_DEFAULTS: dict[str, _Defaults] = {
    "bf16": _Defaults("bf16", "bf16"),
    # Transformer Engine HYBRID current scaling: E4M3 forward, E5M2 gradients, per tensor.
    "fp8": _Defaults("fp8_e4m3", "fp8_e5m2"),
    # DeepSeek-V3 style: 1×128 activations/gradients, 128×128 weights.
    "fp8_block": _Defaults("fp8_block", "fp8_block", weight_2d=True),
    "mxfp8": _Defaults("mxfp8", "mxfp8"),
    # OCP MXFP4 everywhere, round-to-nearest (the NVFP4 paper's MXFP4 baseline).
    "mxfp4": _Defaults("mxfp4", "mxfp4", scale_rule="floor"),
    # arXiv 2509.25149 §4: 2D 16×16 weights, SR on gradients, 16-point RHT on Wgrad inputs,
    # linear layers of the first 2 and last 8 blocks in BF16 (of 62).
    "nvfp4": _Defaults(
        "nvfp4", "nvfp4", rht=True, rht_size=16, sr=True, weight_2d=True, bf16_first_blocks=2, bf16_last_blocks=8
    ),
}


def _spec(fmt: str, *, block=None, rounding="rn", rht=None, scale_rule=None, seed=0, pad=False) -> QuantSpec:
    if fmt == "bf16":
        return BF16
    return QuantSpec(fmt, block=block, rounding=rounding, rht=rht, scale_rule=scale_rule, seed=seed, pad=pad)


def build_recipe(cfg: RecipeConfig | str) -> Recipe:
    """Resolve a ``RecipeConfig`` (or a bare name) into the six operand specs and layer rules."""
    if isinstance(cfg, str):
        cfg = RecipeConfig(name=cfg)
    if cfg.name not in RECIPE_DEFAULTS:
        raise ValueError(f"unknown recipe {cfg.name!r}; valid: {sorted(RECIPE_DEFAULTS)}")
    d = RECIPE_DEFAULTS[cfg.name]
    overrides = {f.name: getattr(cfg, f.name) for f in fields(_Defaults) if getattr(cfg, f.name, None) is not None}
    d = replace(d, **overrides)
    mx = d.fwd_fmt.startswith("mx") or d.grad_fmt.startswith("mx")
    if d.scale_rule is not None and not mx:
        raise ValueError(f"scale_rule applies to MX recipes only; recipe {cfg.name!r} uses {d.fwd_fmt}/{d.grad_fmt}")
    rule = d.scale_rule if mx else None
    w_block = None
    if d.weight_2d and d.fwd_fmt != "bf16":
        cols = QuantSpec(d.fwd_fmt).block_shape
        if cols is None:
            raise ValueError(f"weight_2d needs a block format; recipe {cfg.name!r} scales {d.fwd_fmt} per tensor")
        w_block = (cols[1], cols[1])
    rht = d.rht_size if d.rht else None
    seed = cfg.seed
    grad_rounding = "sr" if d.sr else "rn"
    fwd = dict(scale_rule=rule, seed=seed)
    # Wgrad reduces over tokens, whose count varies: pad to whole blocks (zeros add nothing).
    wgrad = dict(scale_rule=rule, seed=seed, rht=rht, pad=True)
    return Recipe(
        name=cfg.name,
        x_fprop=_spec(d.fwd_fmt, **fwd),
        w_fprop=_spec(d.fwd_fmt, block=w_block, **fwd),
        dy_dgrad=_spec(d.grad_fmt, rounding=grad_rounding, **fwd),
        w_dgrad=_spec(d.fwd_fmt, block=w_block, **fwd),
        dy_wgrad=_spec(d.grad_fmt, rounding=grad_rounding, **wgrad),
        x_wgrad=_spec(d.fwd_fmt, **wgrad),
        double_quant=d.double_quant,
        bf16_first_blocks=d.bf16_first_blocks,
        bf16_last_blocks=d.bf16_last_blocks,
        include=tuple(cfg.include),
        exclude=tuple(cfg.exclude),
        skip_incompatible=d.skip_incompatible,
    )
