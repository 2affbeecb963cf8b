"""Named training recipes: which ``QuantSpec`` each of a linear layer's six GEMM operands gets,
and which layers stay in BF16.

A linear layer ``y = x Wᵀ`` runs three GEMMs, each quantizing both inputs along its own
reduction dimension (as Transformer Engine does; arXiv 2509.25149 §4):

=======  ==============  ====================  =====================
GEMM     computes        operand 1 (reduce)    operand 2 (reduce)
=======  ==============  ====================  =====================
Fprop    y  = x Wᵀ       ``x_fprop`` (in)      ``w_fprop`` (in)
Dgrad    dx = dy W       ``dy_dgrad`` (out)    ``w_dgrad`` (out)
Wgrad    dW = dyᵀ x      ``dy_wgrad`` (tokens) ``x_wgrad`` (tokens)
=======  ==============  ====================  =====================

``RecipeConfig`` holds a recipe name plus the ablation switches (every one optional: ``None``
keeps the named recipe's default), so an ablation is one Hydra override (``quant.rht=false``).
``build_recipe`` turns it into a ``Recipe``: the full table of six specs plus layer rules. The
named recipes are the core's (``RECIPE_DEFAULTS``) and those of the quantization methods
(``fp4train.methods``), whose own switches are ``RecipeConfig.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from fp4train.methods import named_recipe, option_nodes, registered, resolve_options
from fp4train.quant import QuantSpec

__all__ = [
    "OPERANDS", "GEMMS", "Recipe", "RecipeConfig", "RecipeDefaults", "RECIPE_DEFAULTS", "SR_SCOPES", "build_recipe",
]

OPERANDS = ("x_fprop", "w_fprop", "dy_dgrad", "w_dgrad", "dy_wgrad", "x_wgrad")
GEMMS = {"fprop": ("x_fprop", "w_fprop"), "dgrad": ("dy_dgrad", "w_dgrad"), "wgrad": ("dy_wgrad", "x_wgrad")}
BF16 = QuantSpec("bf16")
# Which operands stochastic rounding applies to when ``sr`` is on: the gradient dy only
# (NVIDIA, arXiv 2509.25149 §4), or every backward operand Q3–Q6 (TetraJet §3, Table 1).
SR_SCOPES = {"grad": ("dy_dgrad", "dy_wgrad"), "backward": ("dy_dgrad", "w_dgrad", "dy_wgrad", "x_wgrad")}


@dataclass(frozen=True)
class Recipe:
    """The resolved recipe: six operand specs and the layer-selection rules.

    ``double_quant`` (TetraJet §3): the Dgrad copy of W and the Wgrad copy of x are quantized
    from the *dequantized forward* operands instead of the full-precision tensors.
    ``method``: the quantization method whose named recipe this is (``fp4train.methods``), and
    ``options`` its resolved switches (an instance of its ``Method.options``); ``None`` for the
    core's recipes.
    ``bf16_first_blocks``/``bf16_last_blocks``: blocks whose linears stay BF16; ``bf16_*_of``: the
    model depth such a count was chosen for (a recipe default: ``convert`` scales it to the
    model's depth), ``None`` for a count set by the user (taken as is).
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
    bf16_first_of: int | None = None
    bf16_last_of: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_incompatible: bool = False
    mx_fp8_gemm: bool = False
    method: str | None = None
    options: Any = None

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
    rounding; ``sr_scope``: ``grad`` = dy in Dgrad and Wgrad, ``backward`` = all four backward
    operands), ``weight_2d`` (square weight tiles, so W and Wᵀ quantize alike),
    ``bf16_first_blocks``/``bf16_last_blocks`` (exact counts; unset, the recipe's defaults are
    scaled to the model's depth by ``fp4train.convert``), ``scale_rule`` (MX), ``allow_biased_sr``
    (SR with the floor MX scale rule, refused without it: see ``build_recipe``), ``double_quant``,
    ``seed`` (RHT signs and SR streams), ``mx_fp8_gemm`` (GPU: MXFP4 × MXFP4 GEMMs on the FP8
    tensor cores where exact, ``fp4train.kernels.gemm.mx_fp8_matmul``).
    ``methods``: the quantization methods' switches, ``{method: {option: value}}``
    (``quant.methods.<method>.<option>``; ``None`` = the named recipe's value). A method reads
    its own entry when the recipe is one of its; the others' entries are unused (so a sweep over
    recipes can set them once). Every registered method's options are keys by default.
    """

    name: str = "nvfp4"
    rht: bool | None = None
    rht_size: int | None = None
    sr: bool | None = None
    sr_scope: str | None = None
    weight_2d: bool | None = None
    bf16_first_blocks: int | None = None
    bf16_last_blocks: int | None = None
    scale_rule: str | None = None
    allow_biased_sr: bool | None = None
    double_quant: bool | None = None
    skip_incompatible: bool | None = None
    mx_fp8_gemm: bool | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    methods: dict[str, dict[str, Any]] = field(default_factory=option_nodes)


@dataclass(frozen=True)
class RecipeDefaults:
    """A named recipe's formats and switch defaults (``RecipeConfig``'s switches override them):
    ``fwd_fmt`` for x and W, ``grad_fmt`` for dy, in every GEMM."""

    fwd_fmt: str
    grad_fmt: str
    rht: bool = False
    rht_size: int = 16
    sr: bool = False
    sr_scope: str = "grad"
    weight_2d: bool = False
    bf16_first_blocks: int = 0
    bf16_last_blocks: int = 0
    bf16_reference_depth: int | None = None  # the depth the two counts were chosen for
    scale_rule: str | None = None
    allow_biased_sr: bool = False
    double_quant: bool = False
    skip_incompatible: bool = False
    mx_fp8_gemm: bool = False


RECIPE_DEFAULTS: dict[str, RecipeDefaults] = {
    "bf16": RecipeDefaults("bf16", "bf16"),
    # Transformer Engine HYBRID current scaling: E4M3 forward, E5M2 gradients, per tensor.
    "fp8": RecipeDefaults("fp8_e4m3", "fp8_e5m2"),
    # DeepSeek-V3 style: 1×128 activations/gradients, 128×128 weights.
    "fp8_block": RecipeDefaults("fp8_block", "fp8_block", weight_2d=True),
    # MXFP8 as Transformer Engine computes it: E8M0 scale 2^ceil(log2(amax/448)), rounded up as
    # Mishra et al. (arXiv 2506.08027) recommend, so no block maximum clips; floor = OCP's rule.
    "mxfp8": RecipeDefaults("mxfp8", "mxfp8", scale_rule="ceil"),
    # OCP MXFP4 everywhere, round-to-nearest (the NVFP4 paper's MXFP4 baseline).
    "mxfp4": RecipeDefaults("mxfp4", "mxfp4", scale_rule="floor"),
    # arXiv 2509.25149 §4: 2D 16×16 weights, SR on gradients, 16-point RHT on Wgrad inputs,
    # linear layers of the first 2 and last 8 of the 62 blocks in BF16 (scaled to the model's depth
    # by ``convert``: 1 and 1 of 9 blocks).
    "nvfp4": RecipeDefaults(
        "nvfp4", "nvfp4", rht=True, rht_size=16, sr=True, weight_2d=True, bf16_first_blocks=2, bf16_last_blocks=8,
        bf16_reference_depth=62,
    ),
}


def _spec(fmt: str, *, block=None, rounding="rn", rht=None, scale_rule=None, seed=0, pad=False) -> QuantSpec:
    """A spec, or the identity for ``bf16`` (which ignores every other argument)."""
    if fmt == "bf16":
        return BF16
    return QuantSpec(fmt, block=block, rounding=rounding, rht=rht, scale_rule=scale_rule, seed=seed, pad=pad)


def _check_sr_scale_rule(name: str, specs: dict[str, QuantSpec], allowed: bool) -> None:
    """Refuse stochastic rounding of an MX operand under the floor (OCP) scale rule, unless
    ``allowed``. SR is unbiased only for values within the format's range: under the floor rule
    a block's amax can reach nearly ``2·max·X`` (MXFP4: 8·X) and clips to ``max·X`` in every draw
    (the mean of SR draws of 7.9 in an MXFP4 block of scale 1 is 6). The ceil rule never clips,
    which is why TetraJet (§3.2) pairs it with SR."""
    biased = [o for o, s in specs.items() if s.rounding == "sr" and s.format.scale == "e8m0" and s.mx_rule == "floor"]
    if biased and not allowed:
        raise ValueError(
            f"recipe {name!r} rounds {', '.join(biased)} stochastically with the floor (OCP) MX scale rule, "
            "which is biased where a block maximum clips (the mean of SR draws of 7.9 in an MXFP4 block of "
            "scale 1 is 6). Set quant.scale_rule=ceil (never clips; TetraJet §3.2) or quant.sr=false; to "
            "study the biased combination on purpose (e.g. the ablation of TetraJet §3.2), set "
            "quant.allow_biased_sr=true"
        )


def _named(cfg: RecipeConfig) -> tuple[RecipeDefaults, str | None, Any]:
    """The named recipe's defaults, and for a method's recipe the method's name and its options
    with ``cfg.methods``' switches applied (``None``, ``None`` for a core recipe)."""
    known = registered()
    unknown = sorted(set(cfg.methods) - set(known))
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} in quant.methods; valid: {sorted(known)}")
    found = named_recipe(cfg.name)
    if found is None:
        if cfg.name not in RECIPE_DEFAULTS:
            valid = sorted([*RECIPE_DEFAULTS, *(r for m in known.values() for r in m.recipes)])
            raise ValueError(f"unknown recipe {cfg.name!r}; valid: {valid}")
        return RECIPE_DEFAULTS[cfg.name], None, None
    method, defaults, options = found
    if cfg.name in RECIPE_DEFAULTS:
        raise ValueError(f"recipe name {cfg.name!r} is both a core recipe and method {method.name!r}'s")
    return defaults, method.name, resolve_options(method, options, cfg.methods.get(method.name, {}))


def build_recipe(cfg: RecipeConfig | str) -> Recipe:
    """Resolve a ``RecipeConfig`` (or a bare name) into the six operand specs and layer rules."""
    if isinstance(cfg, str):
        cfg = RecipeConfig(name=cfg)
    d, method, options = _named(cfg)
    overrides = {f.name: getattr(cfg, f.name) for f in fields(RecipeDefaults) if getattr(cfg, f.name, None) is not None}
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
    if d.sr_scope not in SR_SCOPES:
        raise ValueError(f"unknown sr_scope {d.sr_scope!r}; valid: {sorted(SR_SCOPES)}")
    if d.mx_fp8_gemm and "mxfp4" not in (d.fwd_fmt, d.grad_fmt):
        raise ValueError(f"mx_fp8_gemm runs MXFP4 GEMMs on FP8 tensor cores; recipe {cfg.name!r} uses {d.fwd_fmt}/{d.grad_fmt}")
    rht = d.rht_size if d.rht else None
    sr_operands = SR_SCOPES[d.sr_scope] if d.sr else ()
    common = dict(scale_rule=rule, seed=cfg.seed)
    # Wgrad reduces over tokens, whose count varies: pad to whole blocks (zeros add nothing).
    wgrad = dict(common, rht=rht, pad=True)

    def spec(operand: str, fmt: str, **kw) -> QuantSpec:
        return _spec(fmt, rounding="sr" if operand in sr_operands else "rn", **kw)

    specs = {
        "x_fprop": spec("x_fprop", d.fwd_fmt, **common),
        "w_fprop": spec("w_fprop", d.fwd_fmt, block=w_block, **common),
        "dy_dgrad": spec("dy_dgrad", d.grad_fmt, **common),
        "w_dgrad": spec("w_dgrad", d.fwd_fmt, block=w_block, **common),
        "dy_wgrad": spec("dy_wgrad", d.grad_fmt, **wgrad),
        "x_wgrad": spec("x_wgrad", d.fwd_fmt, **wgrad),
    }
    _check_sr_scale_rule(cfg.name, specs, d.allow_biased_sr)
    return Recipe(
        name=cfg.name,
        **specs,
        double_quant=d.double_quant,
        bf16_first_blocks=d.bf16_first_blocks,
        bf16_last_blocks=d.bf16_last_blocks,
        bf16_first_of=d.bf16_reference_depth if cfg.bf16_first_blocks is None else None,
        bf16_last_of=d.bf16_reference_depth if cfg.bf16_last_blocks is None else None,
        include=tuple(cfg.include),
        exclude=tuple(cfg.exclude),
        skip_incompatible=d.skip_incompatible,
        mx_fp8_gemm=d.mx_fp8_gemm,
        method=method,
        options=options,
    )
