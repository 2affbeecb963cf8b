"""Quartet's quantizers, emulated: QuEST-clipped MXFP4 forward, stochastic-rounding MXFP4 backward.

Quartet (Castro et al., "Quartet: Native FP4 Training Can Be Optimal for Large Language Models",
arXiv 2505.14669, NeurIPS 2025; Algorithm 1 "Quartet MXFP4 Forward-Backward Algorithm", App. A.1)
runs all three GEMMs of a linear layer in MXFP4 (E2M1 elements, one E8M0 power-of-two scale per
32 elements along the reduction dimension). The facts below are read from the authors' public
code; "Quartet code" is IST-DASLab/Quartet at commit 00ccd38 (the pseudo-quantization code the
paper's runs use), "qutlass" is IST-DASLab/qutlass at e74319e (the Blackwell kernels and their
float64 test reference), "FP-Quant" is IST-DASLab/FP-Quant at d2e3092 (the kernel-backed linear
layer). The facts, their sources and our choices are also listed in ``README.md`` beside this file.

Forward quantizer — QuEST (Panferov et al., arXiv 2502.05003: "Hadamard normalization and
MSE-optimal fitting", and the "trust" gradient estimator), MXFP4 version:

1. Hadamard transform per group of ``g = 32`` along the reduction dim, ``v = x H`` with ``H`` the
   Sylvester Hadamard matrix scaled by ``1/sqrt(32)``, **not randomized** (Quartet code
   ``quantizers/mxfp4.py`` l.150 ``QuestMXFP4Quantizer(hadamard_dim=32, rerotate=None)``, used with
   no kwargs by ``main_setup.sh`` l.78-84; FP-Quant ``module/linear.py`` l.24-30 ``hadamard(32) *
   32**-0.5``). The Hadamard group equals the MX block (Triton kernel ``group_size=32``,
   ``quantizers/mxfp4_triton.py`` l.213).
2. Scale statistic: the **standard deviation** (mean subtracted, population: ``correction=0``)
   of the 32 transformed values of the block (``mxfp4_triton.py`` l.52-54; qutlass
   ``epilogue_quant.h`` l.520-535 and ``tests/quartet_test.py`` ``std(dim=-1, correction=0)``).
   QuEST's scalar quantizers use the RMS ``sqrt(mean(x²))`` (Quartet code ``quantizers/quest.py``
   ``STEQuantizer``); both are offered here (``scale_stat``), ``"std"`` by default.
3. ``s = α·σ + ε`` with ``α = 2.92247856 / 6`` and ``ε = 1e-8`` (``quantizers/mxfp4.py`` l.136;
   ``mxfp4_triton.py`` l.55; qutlass ``epilogue_quant.h`` l.534). 2.92247856 is the MSE-optimal
   clipping point of the E2M1 grid shape for a unit Gaussian (``quantizers/quest.py`` l.446-463,
   ``FP4_LEVELS`` = the E2M1 grid times 2.92247856/6), so ``α·σ`` is the size of the grid unit that
   would make ±6 units the optimal clip.
4. The shared E8M0 scale is ``X = 2^floor(log2 s)`` (``mxfp4_triton.py`` l.56; qutlass keeps the
   float's exponent bits, ``& 0x7f800000``). The clip range ``6·X`` is therefore in
   ``(3ασ, 6ασ] = (1.46σ, 2.92σ]``.
5. Elements ``q = RN(v / X)`` onto E2M1, saturating at ±6; round to nearest, ties to even
   (qutlass ``cvt.rn.satfinite.e2m1x2.f32`` and its reference ``_rtne_fp4``; the Triton
   pseudo-quantizer breaks ties toward zero, ``mxfp4_triton.py`` l.130-159 — a measure-zero
   difference). Value ``q·X``, kept in the Hadamard domain: the GEMM multiplies transformed
   operands (the forward GEMM's two operands carry the same ``H``, which cancels).
6. Trust mask ``M = |v / X| < 6``: the entries that were **not** clipped (``mxfp4_triton.py``
   l.160-165; qutlass ``clip_mask_unpacked_ref = xh_scaled_ref64.abs() < 6.0``). An element
   exactly at ``6·X`` counts as clipped. The gradient is ``dL/dx = (dL/dv ⊙ M) Hᵀ``
   (``quantizers/mxfp4.py`` l.145: ``(grad_output * mask) @ hadamard_matrix.T``).

Backward quantizer — Tseng et al. ("Training LLMs with MXFP4", arXiv 2502.20586) as Quartet
uses it (``AlbertTsengQuantizer(stochastic=True, rerotate="signs")``, ``main_setup.sh`` l.86-88):

1. Hadamard transform per group of 32 with random signs, drawn afresh for every backward call
   (``quantizers/mxfp4.py`` l.52-58 ``re_randomize``, called once per backward in
   ``backward.py`` l.69; FP-Quant ``linear_fns.py`` draws ``torch.randint`` signs in each backward).
   One matrix serves both operands of both backward GEMMs of that call, so it cancels in each.
2. Scale: the OCP "floor" rule on the block's absmax, ``X = 2^(floor(log2 amax) - 2)``, with the
   input scaled by 3/4 first: ``q = SR(¾·v / X)``, value ``q·X·4/3`` (``mxfp4_triton.py`` l.58-61
   ``exp2(floor(log2 amax) - 2) / (3/4)``; qutlass computes the same as ``3·v / 2^floor(log2 amax)``
   with E8M0 scale ``2^floor(log2 amax)`` and a GEMM factor ``alpha = 1/9``). ``|¾·v/X| < 6``
   always, so nothing clips and SR is unbiased on every element.
3. Stochastic rounding to one of the two neighbouring E2M1 points, up with probability
   ``(t - lo)/(hi - lo)`` (``mxfp4_triton.py`` l.70-129, ``tl.rand`` per element; Blackwell hardware
   draws 8 bits per element; qutlass's prototype backward kernels round to nearest instead).

Choices of ours (the sources are silent or differ; each is a ``QuartetConfig`` field or stated):

* Backward signs go on the **input** side, ``R̃ = diag(s)·H/√32``, so ``v = (x ⊙ s) H/√32``. The
  Quartet code multiplies ``H @ diag(s)`` (signs on the outputs of the transform), which cannot
  change what a sign-symmetric quantizer does: its backward transform is in effect the fixed
  ``H``. Quartet-II's copy of the same quantizer moves the signs to the input side
  (IST-DASLab/Quartet-II ``quantizers/mxfp4.py`` l.52-60, runs labelled "signfix" in
  ``scripts/quartet_node.sh``). ``backward_rht="fixed"`` reproduces the published behaviour.
* The scale statistic is computed in float64 from the float32 transformed values, two-pass
  (no ``E[x²] - E[x]²`` cancellation, no overflow of the squares); qutlass's test reference is
  float64 too. Its kernels use float32 one-pass sums.
* The Hadamard transforms are computed in float64 (±1 products and sums, exact for all but extreme
  dynamic ranges, then one multiplication by ``1/√d``) and rounded to float32 once, so that they
  are reproducible bit for bit on any device and BLAS. qutlass multiplies bf16 by bf16 with FP32
  accumulation.
* An all-zero block (absmax 0) gets the smallest E8M0 scale ``2^-127`` and zeros (the OCP rule is
  undefined there; the Triton pseudo-quantizer divides 0 by 0).
* A block holding NaN or ±Inf gets the NaN scale (E8M0 code 0xFF) and NaN values; its trust mask
  is True (nothing was clipped), so the gradient reaching it is passed on, never zeroed.
* SR uses ``sr_bits`` random bits per element (``fp4train.quant.formats.round_to_grid``: add
  random bits below the kept mantissa, then truncate), 16 by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import scipy.linalg
import torch

from fp4train.quant import rht_signs
from fp4train.quant.blocks import block_amax, expand_blocks, mx_scale_exponent
from fp4train.quant.formats import E2M1, e8m0_decode, e8m0_encode_exponent, random_bits, round_to_grid

__all__ = [
    "QUEST_ALPHA",
    "QuartetConfig",
    "QuestQuantized",
    "SRQuantized",
    "hadamard_transform",
    "backward_signs",
    "quest_scale_exponent",
    "quest_quantize",
    "sr_quantize",
]

QUEST_ALPHA = 2.92247856 / 6.0
"""QuEST's scale multiplier for E2M1: the MSE-optimal clip of a unit Gaussian over 6 grid units."""

SCALE_STATS = ("std", "rms")
BACKWARD_RHTS = ("random", "fixed")


@dataclass(frozen=True)
class QuartetConfig:
    """Quartet's numerics in one place (module docstring: sources and which fields are ours).

    Args:
      group: Hadamard size = MX block size along every GEMM's reduction dimension (32).
      alpha: QuEST multiplier ``α`` of the scale statistic (``2.92247856 / 6``).
      eps: added to ``α·σ`` before the floor-log2 (``1e-8``); 0 makes a zero block's scale ``2^-127``.
      scale_stat: ``"std"`` (Quartet code and kernels: mean subtracted) or ``"rms"`` (QuEST's
        scalar quantizers). With the Sylvester ``H`` the mean of a transformed block is
        ``x_0/sqrt(32)`` (its first input element), so ``"std"`` ignores that element.
      backward_scale: the factor applied before the backward quantizer's floor scale (3/4:
        no element can reach 6, so SR never clips).
      backward_rht: ``"random"`` (fresh input-side signs per backward call; ours) or ``"fixed"``
        (the plain Hadamard, which is what the published code computes in effect).
      sr_bits: random bits per element for stochastic rounding (hardware: 8).
      quantize: ``False`` keeps every Hadamard transform but skips all rounding and masking (an
        ablation, and the test that the transforms cancel in each GEMM).
    """

    group: int = 32
    alpha: float = QUEST_ALPHA
    eps: float = 1e-8
    scale_stat: str = "std"
    backward_scale: float = 0.75
    backward_rht: str = "random"
    sr_bits: int = 16
    quantize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.group, int) or self.group < 2 or self.group & (self.group - 1):
            raise ValueError(f"group must be a power of two >= 2 (Quartet: 32), got {self.group!r}")
        if self.scale_stat not in SCALE_STATS:
            raise ValueError(f"unknown scale_stat {self.scale_stat!r}; valid: {list(SCALE_STATS)}")
        if self.backward_rht not in BACKWARD_RHTS:
            raise ValueError(f"unknown backward_rht {self.backward_rht!r}; valid: {list(BACKWARD_RHTS)}")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a positive finite number, got {self.alpha!r}")
        if not self.eps >= 0 or not math.isfinite(self.eps):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if not 0 < self.backward_scale <= 0.75:
            raise ValueError(
                f"backward_scale must be in (0, 0.75] so that SR never clips (Quartet: 0.75), got {self.backward_scale!r}"
            )
        if not 8 <= self.sr_bits <= 24:
            raise ValueError(f"sr_bits must be in [8, 24], got {self.sr_bits!r}")


# ----------------------------------------------------------------------------------------------
# Hadamard transforms


@lru_cache(maxsize=None)
def _sylvester_on(d: int, device: torch.device) -> torch.Tensor:
    """The ±1 Sylvester Hadamard matrix of size ``d`` (float64, symmetric), one copy per device."""
    return torch.from_numpy(scipy.linalg.hadamard(d)).to(torch.float64).to(device)


def hadamard_transform(
    x: torch.Tensor, d: int, signs: torch.Tensor | None = None, inverse: bool = False
) -> torch.Tensor:
    """``x R`` (or ``x Rᵀ`` with ``inverse``) for each group of ``d`` along the last dim, float32.

    ``R = diag(s) · H_d / sqrt(d)`` with ``H_d`` the ±1 Sylvester matrix and ``s`` = ``signs``
    (``None``: all +1, the plain Hadamard). ``R`` is orthogonal, so ``(A R)(B R)ᵀ = A Bᵀ``.
    Computed in float64 (``(x ⊙ s) H_d`` are ±1 sums, exact unless the group's dynamic range
    exceeds ~2^24) times ``1/sqrt(d)``, then rounded to float32 once.
    """
    k = x.shape[-1]
    if k % d:
        raise ValueError(f"a Hadamard transform of size {d} needs the last dim to be a multiple of {d}; got shape {tuple(x.shape)}")
    h = _sylvester_on(d, x.device)
    groups = x.to(torch.float32).to(torch.float64).reshape(*x.shape[:-1], k // d, d)
    s = None if signs is None else signs.to(device=x.device, dtype=torch.float64)
    if s is not None and not inverse:
        groups = groups * s
    out = (groups @ h) * (1.0 / math.sqrt(d))  # H_d is symmetric: the inverse multiplies by H_d too
    if s is not None and inverse:
        out = out * s
    return out.to(torch.float32).reshape(x.shape)


def backward_signs(cfg: QuartetConfig, seed: int | None, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The sign vector of one backward call's transform ``R̃`` (``None`` for ``backward_rht="fixed"``).

    ``seed``: ``fp4train.quant.rht_signs(group, seed)`` — the signs of ``quant.rht_matrix(group,
    seed)``; ``None``: drawn from torch's default CPU generator (a fresh vector every call).
    """
    if cfg.backward_rht == "fixed":
        return None
    if seed is None:
        s = torch.randint(0, 2, (cfg.group,)).to(torch.float32) * 2 - 1
    else:
        s = rht_signs(cfg.group, seed)
    return s.to(device)


# ----------------------------------------------------------------------------------------------
# Forward: QuEST-clipped MXFP4, round to nearest


@dataclass
class QuestQuantized:
    """The forward quantizer's output for a matrix ``(M, K)``, in the Hadamard domain.

    ``values``: float32 ``q·X`` (E2M1 element times the block's E8M0 scale, exactly; NaN for a
    non-finite block). ``scale_codes``: uint8 E8M0 codes ``(M, K/g)``, 0xFF = NaN. ``mask``: bool
    trust mask, True where the element was not clipped (``|v/X| < 6``) and the gradient passes.
    """

    values: torch.Tensor
    scale_codes: torch.Tensor
    mask: torch.Tensor

    @property
    def scales(self) -> torch.Tensor:
        """float32 block scales ``X`` (NaN for code 0xFF)."""
        return e8m0_decode(self.scale_codes)


def _as_matrix(x: torch.Tensor, g: int, what: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{what} must be a matrix (rows, reduction dim), got shape {tuple(x.shape)}")
    if x.shape[1] % g:
        raise ValueError(
            f"{what} of shape {tuple(x.shape)}: the reduction dim must be a multiple of the group {g} "
            "(MX block and Hadamard size)"
        )
    return x.to(torch.float32)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact float32 ``2^k`` for integer ``k`` in [-127, 127]."""
    return torch.ldexp(torch.ones_like(k, dtype=torch.float32), k)


def quest_scale_exponent(v: torch.Tensor, cfg: QuartetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, finite)`` per block of ``cfg.group`` along the last dim of the float32 matrix ``v``.

    ``k = floor(log2(α·σ + ε))`` clamped to E8M0's [-127, 127] (int32; -127 when ``α·σ + ε = 0``),
    ``σ`` the block's standard deviation (``scale_stat="std"``, population) or RMS, in float64.
    ``finite``: the statistic is finite (False for a block holding NaN or ±Inf).
    """
    m, kdim = v.shape
    g = v.to(torch.float64).reshape(m, kdim // cfg.group, cfg.group)
    if cfg.scale_stat == "std":
        g = g - g.mean(dim=-1, keepdim=True)
    stat = (g * g).mean(dim=-1).sqrt()
    s = stat * cfg.alpha + cfg.eps
    finite = torch.isfinite(s)
    positive = finite & (s > 0)
    k = torch.frexp(torch.where(positive, s, torch.ones_like(s)))[1] - 1  # exact floor(log2 s)
    k = torch.where(positive, k, torch.full_like(k, -127)).clamp(-127, 127)
    return k.to(torch.int32), finite


def quest_quantize(x: torch.Tensor, cfg: QuartetConfig, transform: bool = True) -> QuestQuantized:
    """Quartet's forward quantizer of a matrix ``x (M, K)``, blocks of ``cfg.group`` along ``K``.

    ``v = x H`` per group (``transform=False``: ``v = x``, to test the scale rule directly),
    ``X = 2^floor(log2(α·σ(v_block) + ε))``, ``q = RN_sat(v / X)`` on E2M1, value ``q·X``,
    trust mask ``|v / X| < 6``. With ``cfg.quantize=False`` the values are ``v`` itself, the mask
    all True and the scale codes those the quantizer would use.
    """
    gsize = cfg.group
    v = _as_matrix(x, gsize, "the forward quantizer's input")
    if transform:
        v = hadamard_transform(v, gsize)
    k, finite = quest_scale_exponent(v, cfg)
    codes = torch.where(finite, e8m0_encode_exponent(k), torch.full_like(k, 0xFF, dtype=torch.uint8))
    if not cfg.quantize:
        return QuestQuantized(v, codes.to(torch.uint8), torch.ones_like(v, dtype=torch.bool))
    shape = tuple(v.shape)
    block = (1, gsize)
    multiplier = torch.where(finite, _pow2(-k), torch.full_like(k, torch.nan, dtype=torch.float32))
    scaled = v * expand_blocks(multiplier, block, shape)  # exact: a power of two
    q = round_to_grid(scaled, E2M1, "rn")  # saturates at ±6, NaN stays NaN
    values = q * expand_blocks(_pow2(k), block, shape)  # exact
    mask = ~(scaled.abs() >= E2M1.max)  # NaN: not clipped
    return QuestQuantized(values, codes.to(torch.uint8), mask)


# ----------------------------------------------------------------------------------------------
# Backward: Hadamard + 3/4-scaled MXFP4 with stochastic rounding


@dataclass
class SRQuantized:
    """The backward quantizer's output for a matrix ``(M, K)``, in the (random) Hadamard domain.

    ``values``: float32 ``q·X``, exactly MXFP4 (NaN for a non-finite block); the quantized
    number is ``values · factor`` with ``factor = 1 / backward_scale`` (4/3), which a GEMM applies
    once to its output (qutlass: ``alpha``). ``scale_codes``: uint8 E8M0 codes, 0xFF = NaN.
    """

    values: torch.Tensor
    scale_codes: torch.Tensor
    factor: float

    @property
    def scales(self) -> torch.Tensor:
        """float32 block scales ``X`` (NaN for code 0xFF)."""
        return e8m0_decode(self.scale_codes)

    @property
    def dequantized(self) -> torch.Tensor:
        """``values · factor``: the quantized numbers (float32, one rounding)."""
        return self.values * self.factor


def sr_quantize(
    x: torch.Tensor,
    cfg: QuartetConfig,
    signs: torch.Tensor | None = None,
    *,
    transform: bool = True,
    generator: torch.Generator | None = None,
    rand_bits: torch.Tensor | None = None,
) -> SRQuantized:
    """Quartet's backward quantizer of a matrix ``x (M, K)``, blocks of ``cfg.group`` along ``K``.

    ``v = x R̃`` per group, ``R̃ = diag(signs)·H/√g`` (``signs=None``: plain ``H``;
    ``transform=False``: ``v = x``); ``X = 2^(floor(log2 amax(v_block)) - 2)`` (OCP floor rule,
    ``2^-127`` for a zero block); ``q = SR(backward_scale · v / X)`` on E2M1 with ``cfg.sr_bits``
    random bits per element from ``generator`` (``None``: torch's default generator of ``x``'s
    device) unless ``rand_bits`` (int, shape ``(M, K)``) gives them. The number is
    ``q·X / backward_scale``, unbiased: ``E = v``. With ``cfg.quantize=False``: ``v`` and factor 1.
    """
    gsize = cfg.group
    v = _as_matrix(x, gsize, "the backward quantizer's input")
    if transform:
        v = hadamard_transform(v, gsize, signs)
    block = (1, gsize)
    amax = block_amax(v, block)
    finite = torch.isfinite(amax)
    k = mx_scale_exponent(amax, E2M1, "floor")  # floor(log2 amax) - 2; -127 for amax = 0
    codes = torch.where(finite, e8m0_encode_exponent(k), torch.full_like(k, 0xFF, dtype=torch.uint8))
    if not cfg.quantize:
        return SRQuantized(v, codes.to(torch.uint8), 1.0)
    shape = tuple(v.shape)
    multiplier = torch.where(finite, _pow2(-k), torch.full_like(k, torch.nan, dtype=torch.float32))
    scaled = (v * expand_blocks(multiplier, block, shape)) * cfg.backward_scale  # |scaled| < 6
    if rand_bits is None:
        rand_bits = random_bits(shape, cfg.sr_bits, generator, v.device)
    q = round_to_grid(scaled, E2M1, "sr", rand_bits, cfg.sr_bits)
    values = q * expand_blocks(_pow2(k), block, shape)
    return SRQuantized(values, codes.to(torch.uint8), 1.0 / cfg.backward_scale)
