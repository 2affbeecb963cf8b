"""``quartet_linear``: ``y = x Wᵀ + b`` with Quartet's quantization of Fprop, Dgrad and Wgrad.

Algorithm 1 of Castro et al. (arXiv 2505.14669, App. A.1), as the authors' code computes it
(IST-DASLab/Quartet ``src/models/quantization/backward.py`` l.56-90, scheme
``Q(E)Q(Wt)t_Q(Et)Q(Xt)t`` selected by ``main_setup.sh`` l.92; FP-Quant
``inference_lib/src/fp_quant/module/linear_fns.py`` ``FPQuant4x4MasterFn``). With ``H`` the fixed
32-point Hadamard transform, ``R̃`` one backward call's random one, ``Q_f`` the QuEST forward
quantizer (RN, trust masks ``M``) and ``Q_b`` the stochastic-rounding backward quantizer
(``numerics``), each transform applied per 32-group along the named dimension:

* Fprop (reduce over in-features):  ``X_q, M_x = Q_f(X H)``,  ``W_q, M_w = Q_f(W H)``,
  ``y = X_q W_qᵀ`` (``H Hᵀ = I`` cancels).
* Dgrad (reduce over out-features): ``G_x = Q_b(dY R̃) · Q_b(W_qᵀ R̃)ᵀ``, then
  ``dX = (G_x ⊙ M_x) Hᵀ``. The weight operand is the *forward-quantized* ``W_q`` (in the ``H``
  domain), transposed and quantized again — a double quantization, as in the source.
* Wgrad (reduce over tokens):       ``G_w = Q_b(dYᵀ R̃) · Q_b(X_qᵀ R̃)ᵀ``, then
  ``dW = (G_w ⊙ M_w) Hᵀ``; the activation operand is the forward-quantized ``X_q``.
* ``db = Σ_tokens dY`` unquantized (FP-Quant ``grad_bias``).

The masks multiply the gradient (``G ⊙ M`` as the source does, so a NaN or Inf gradient stays
non-finite where it is masked). Each GEMM multiplies exact MXFP4 values (``q·X``) in float32 with
float32 accumulation and applies the backward quantizers' 4/3 factors to its output, as a
Blackwell block-scaled MMA with ``alpha`` would. A token count that is not a multiple of 32 is
zero-padded for Wgrad (zeros add nothing to the product); in- and out-features must be multiples
of 32.

Randomness (ours; the source draws an unseeded ``randint``/``tl.rand`` per call): with ``seed``
an ``int``, operand ``i`` of the backward (0 ``dy_dgrad``, 1 ``w_dgrad``, 2 ``dy_wgrad``,
3 ``x_wgrad``) draws its SR bits from ``torch.Generator(device).manual_seed(stream_seed(seed, i))``
(``fp4train.quant.formats.random_bits``) and the transform ``R̃`` has the signs
``quant.rht_signs(32, stream_seed(seed, 4))``. A caller wanting fresh randomness every step
passes a seed that changes with the step (e.g. ``stream_seed(run_seed, layer_id, step)``);
``seed=None`` draws everything from torch's default generators, as ``torch.rand`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fp4train.quant import SRStream, stream_seed

from .numerics import QuartetConfig, backward_signs, hadamard_transform, quest_quantize, sr_quantize
from .randomness import counter_bits, counter_signs

__all__ = ["quartet_linear", "QuartetLinearFunction", "BACKWARD_OPERANDS"]

BACKWARD_OPERANDS = ("dy_dgrad", "w_dgrad", "dy_wgrad", "x_wgrad")
"""The four backward operands, in the order that numbers their SR streams."""
_SIGNS_STREAM = len(BACKWARD_OPERANDS)

_DEFAULT = QuartetConfig()


class _Draws:
    """Where one backward call's randomness comes from: an ``int`` seed (host generators, one
    per operand), an ``SRStream`` (bits computed on the device from its key and step counter:
    ``randomness``; what a CUDA graph can replay), or ``None`` (torch's default generators)."""

    def __init__(self, seed: int | SRStream | None, cfg: QuartetConfig, device: torch.device) -> None:
        self.seed, self.cfg, self.device = seed, cfg, device

    def signs(self) -> torch.Tensor | None:
        if isinstance(self.seed, SRStream) and self.cfg.backward_rht != "fixed":
            return counter_signs(self.seed, _SIGNS_STREAM, self.cfg.group)
        seed = stream_seed(self.seed, _SIGNS_STREAM) if isinstance(self.seed, int) else None
        return backward_signs(self.cfg, seed, self.device)

    def quantize(self, t: torch.Tensor, operand: int, signs: torch.Tensor | None):
        """``Q_b(t R̃)`` with backward operand ``operand``'s bits."""
        if isinstance(self.seed, SRStream):
            return sr_quantize(t, self.cfg, signs, rand_bits=counter_bits(self.seed, operand, tuple(t.shape), self.cfg.sr_bits))
        gen = None if self.seed is None else torch.Generator(device=self.device).manual_seed(stream_seed(self.seed, operand))
        return sr_quantize(t, self.cfg, signs, generator=gen)


def _pad_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dim of ``t`` to a multiple of ``multiple``."""
    return F.pad(t, (0, -t.shape[-1] % multiple))


def _backward_gemm(a, b, draws: _Draws, operands: tuple[int, int], signs) -> torch.Tensor:
    """``Q_b(a R̃) · Q_b(b R̃)ᵀ`` (both reduced along their last dim), float32, factors applied once."""
    qa = draws.quantize(a, operands[0], signs)
    qb = draws.quantize(b, operands[1], signs)
    return (qa.values @ qb.values.T) * (qa.factor * qb.factor)


class QuartetLinearFunction(torch.autograd.Function):
    """Autograd over Quartet's three quantized GEMMs (2-D ``x``: tokens × in). See the module doc."""

    @staticmethod
    def forward(ctx, x, weight, bias, cfg: QuartetConfig, seed: int | SRStream | None):
        qx = quest_quantize(x, cfg)
        qw = quest_quantize(weight, cfg)
        y = qx.values @ qw.values.T  # float32 products of MXFP4 values, float32 accumulation
        if bias is not None:
            y = y + bias.to(torch.float32)
        ctx.cfg, ctx.seed, ctx.dtypes = cfg, seed, (x.dtype, weight.dtype)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(qx.values, qw.values, qx.mask, qw.mask)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x_q, w_q, mask_x, mask_w = ctx.saved_tensors
        cfg: QuartetConfig = ctx.cfg
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        x_dtype, w_dtype = ctx.dtypes
        g = cfg.group
        dx = dw = db = None
        with torch.autocast(device_type=dy.device.type, enabled=False):
            dy = dy.to(torch.float32)
            draws = _Draws(ctx.seed, cfg, dy.device)
            signs = draws.signs()
            if need_dx:  # Dgrad: reduce over out-features
                g_x = _backward_gemm(dy, w_q.T, draws, (0, 1), signs)
                dx = hadamard_transform(g_x * mask_x, g, inverse=True).to(x_dtype)
            if need_dw:  # Wgrad: reduce over tokens (zero-padded to whole groups)
                g_w = _backward_gemm(_pad_rows(dy.T, g), _pad_rows(x_q.T, g), draws, (2, 3), signs)
                dw = hadamard_transform(g_w * mask_w, g, inverse=True).to(w_dtype)
            if need_db and ctx.has_bias:
                db = dy.sum(0).to(w_dtype)
        return dx, dw, db, None, None


def quartet_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: QuartetConfig | None = None,
    seed: int | SRStream | None = None,
) -> torch.Tensor:
    """``y = x Wᵀ + b`` with Quartet's MXFP4 quantization of all three GEMMs (module doc).

    ``x``: ``(..., in)``; ``weight``: ``(out, in)``; ``bias``: ``(out,)`` or ``None``; ``in`` and
    ``out`` multiples of ``config.group`` (32). Returns ``(..., out)`` in ``x``'s dtype; ``dW`` comes
    back in ``weight``'s dtype. ``seed`` fixes the backward's SR bits and random Hadamard signs
    (module doc: the streams); an ``SRStream`` draws them on the device from its key and counter
    (``randomness``: what a training step under CUDA graphs uses); ``None`` draws them from
    torch's default generators.
    """
    cfg = config or _DEFAULT
    if weight.dim() != 2:
        raise ValueError(f"weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"x has last dim {x.shape[-1]}, the weight expects {in_f} (weight shape {tuple(weight.shape)})")
    for name, n in (("in_features", in_f), ("out_features", out_f)):
        if n % cfg.group:
            raise ValueError(
                f"Quartet needs {name} to be a multiple of {cfg.group} (the MX block and Hadamard size); "
                f"got weight shape {tuple(weight.shape)}"
            )
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = QuartetLinearFunction.apply(x.reshape(-1, in_f), weight, bias, cfg, seed)
    return y.reshape(*x.shape[:-1], out_f)
