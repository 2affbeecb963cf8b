"""``QuantSpec``: how one GEMM operand is quantized, and the table of block formats.

A spec is a small frozen dataclass that Hydra (structured configs) and plain Python build
alike. Blocks always run along the *last* dimension of the tensor handed to ``quantize``;
a GEMM puts its reduction dimension last before quantizing (see ``fp4train.linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import E2M1, E4M3, E5M2, ROUNDINGS, ElementFormat

__all__ = ["BlockFormat", "BLOCK_FORMATS", "QuantSpec", "SCALE_RULES"]

SCALE_RULES = ("floor", "ceil")


@dataclass(frozen=True)
class BlockFormat:
    """A scaled format: element format, default block, and how scales are stored.

    ``scale``:
      * ``"e8m0"``  — power-of-two block scale (OCP MX v1.0 §5).
      * ``"e4m3"``  — E4M3 block decode scale plus an FP32 tensor scale (NVFP4, two-level).
      * ``"fp32"``  — FP32 scale per block, or per tensor when ``default_block`` is None
        (Transformer Engine's "current scaling"; DeepSeek-V3-style blockwise FP8).
      * ``"none"``  — no quantization (bf16 baseline: identity).
    """

    name: str
    element: ElementFormat | None
    default_block: tuple[int, int] | None
    scale: str

    @property
    def is_fp4(self) -> bool:
        return self.element is E2M1


BLOCK_FORMATS: dict[str, BlockFormat] = {
    f.name: f
    for f in (
        BlockFormat("nvfp4", E2M1, (1, 16), "e4m3"),
        BlockFormat("mxfp4", E2M1, (1, 32), "e8m0"),
        BlockFormat("mxfp8", E4M3, (1, 32), "e8m0"),
        BlockFormat("fp8_e4m3", E4M3, None, "fp32"),
        BlockFormat("fp8_e5m2", E5M2, None, "fp32"),
        BlockFormat("fp8_block", E4M3, (1, 128), "fp32"),
        BlockFormat("bf16", None, None, "none"),
    )
}


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor.

    Args:
      fmt: one of ``BLOCK_FORMATS`` (``nvfp4``, ``mxfp4``, ``mxfp8``, ``fp8_e4m3``,
        ``fp8_e5m2``, ``fp8_block``, ``bf16``).
      block: ``(rows, cols)`` of one scale block; ``None`` takes the format's default
        (``(1, 16)`` NVFP4, ``(1, 32)`` MX, ``(1, 128)`` fp8_block). ``(16, 16)`` gives the
        2D tiles NVIDIA uses for weights. Per-tensor formats take no block.
      rounding: ``"rn"`` (nearest, ties to even) or ``"sr"`` (stochastic).
      rht: size ``d`` of a random Hadamard transform applied along the last dim before
        quantizing (a power of two, e.g. 16), or ``None``.
      scale_rule: MX formats only — ``"floor"`` (OCP: ``2^(floor(log2 amax) - emax)``, may clip
        the block maximum) or ``"ceil"`` (``2^ceil(log2(amax / max))``, never clips); default floor.
      seed: seeds the RHT sign vector (a recipe also keys its layers' SR streams with it; a
        ``quantize`` call without a generator draws SR bits from torch's default generator).
      sr_bits: random bits per element for SR (hardware uses 8; default 16).
      pad: zero-pad to whole blocks instead of raising (the padding is cropped on dequantize).
    """

    fmt: str = "nvfp4"
    block: tuple[int, int] | None = None
    rounding: str = "rn"
    rht: int | None = None
    scale_rule: str | None = None
    seed: int = 0
    sr_bits: int = 16
    pad: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in BLOCK_FORMATS:
            raise ValueError(f"unknown fmt {self.fmt!r}; valid: {sorted(BLOCK_FORMATS)}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; valid: {list(ROUNDINGS)}")
        bf = BLOCK_FORMATS[self.fmt]
        block = self.block
        if block is not None:
            block = tuple(block)  # Hydra hands lists
            if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
                raise ValueError(f"block must be two positive ints (rows, cols), got {self.block!r}")
            if bf.default_block is None:
                raise ValueError(
                    f"fmt {self.fmt!r} is scaled per tensor and takes no block (got {self.block!r}); "
                    f"blocked formats: {[n for n, f in BLOCK_FORMATS.items() if f.default_block]}"
                )
        object.__setattr__(self, "block", block)
        if self.scale_rule is not None:
            if bf.scale != "e8m0":
                raise ValueError(
                    f"scale_rule applies to MX formats (mxfp4, mxfp8) only; fmt {self.fmt!r} got "
                    f"scale_rule={self.scale_rule!r}"
                )
            if self.scale_rule not in SCALE_RULES:
                raise ValueError(f"unknown scale_rule {self.scale_rule!r}; valid: {list(SCALE_RULES)}")
        if self.rht is not None and (
            not isinstance(self.rht, int) or self.rht < 2 or self.rht & (self.rht - 1)
        ):
            raise ValueError(f"rht must be a power of two >= 2 (e.g. 16) or None, got {self.rht!r}")
        if not 8 <= self.sr_bits <= 24:
            raise ValueError(f"sr_bits must be in [8, 24], got {self.sr_bits}")

    @property
    def format(self) -> BlockFormat:
        return BLOCK_FORMATS[self.fmt]

    @property
    def block_shape(self) -> tuple[int, int] | None:
        """The block in force (``None``: one scale for the whole tensor, or no scaling)."""
        return self.block or self.format.default_block

    @property
    def mx_rule(self) -> str:
        return self.scale_rule or "floor"

    @property
    def is_identity(self) -> bool:
        return self.format.scale == "none"
