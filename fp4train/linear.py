"""``QuantLinear``: an ``nn.Linear`` whose three GEMMs run on quantized operands.

Fprop ``y = x Wᵀ``, Dgrad ``dx = dy W`` and Wgrad ``dW = dyᵀ x`` each quantize both inputs
along that GEMM's reduction dimension with the recipe's spec for that operand (see
``fp4train.recipes``), then multiply with ``fp4train.gemm.quantized_matmul`` (exact products,
FP32 accumulation). What backward needs is saved quantized and packed: the Wgrad copy of ``x``
(quantized along tokens in forward), and ``W`` itself (a parameter: saving it costs nothing).
Where Dgrad's copy of ``W`` is Fprop's transposed (square weight blocks or one scale per tensor,
round to nearest: ``quant.transposes_exactly``), Fprop's packed copy is saved too and backward
transposes it (``quant.transpose``) instead of quantizing ``Wᵀ`` again.

Stochastic rounding draws its bits from one ``SRStream`` per operand: key ``stream_seed(recipe
seed, layer id, operand[, rank if > 0])``, counter the layer's step counter ``sr_step``, a 0-dim
int64 tensor beside the weight that each training forward increments in place. On the GPU
the kernels read the counter when they run, so the layer can be captured in a CUDA graph
(``torch.cuda.make_graphed_callables``) and each replay draws the next step's bits, the same
bits as the eager run. The counter is part of the module's state dict, so a resumed run
continues the same streams.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fp4train.gemm import quantized_matmul
from fp4train.quant import (
    QuantizedTensor,
    QuantSpec,
    SRStream,
    dequantize,
    quantize,
    quantize_pair,
    stream_seed,
    transpose,
    transposes_exactly,
)
from fp4train.recipes import BF16, GEMMS, OPERANDS, Recipe, build_recipe

__all__ = ["QuantLinear"]


class _QuantLinearFunction(torch.autograd.Function):
    """Autograd over the three quantized GEMMs of one linear layer (2-D ``x``: tokens × in)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: "QuantLinear"):
        q = layer._quantize_operand
        if layer.recipe.double_quant:  # TetraJet: Wgrad's x is the Fprop copy, quantized again
            qx = q("x_fprop", x)
            qxt = q("x_wgrad", dequantize(qx).T)
        else:
            qx, qxt = layer._quantize_pair("x_fprop", "x_wgrad", x)
        w_spec = layer.operand_spec("w_fprop")
        qw = layer.quantize_weight(weight.to(x.dtype) if w_spec.is_identity else weight, w_spec)
        mx_fp8 = layer.recipe.mx_fp8_gemm
        if bias is None:  # the GEMM rounds its FP32 result to the activation dtype once
            y = quantized_matmul(qx, qw, out_dtype=x.dtype, mx_fp8=mx_fp8)
        else:  # as addmm under autocast: bias in the activation dtype, added in FP32, one rounding
            y = (quantized_matmul(qx, qw, out_dtype=torch.float32, mx_fp8=mx_fp8) + bias.to(x.dtype).float()).to(x.dtype)
        ctx.layer, ctx.qxt, ctx.has_bias = layer, qxt, bias is not None
        ctx.transpose_qw = layer._fprop_weight_serves_dgrad(qw)
        ctx.qw = qw if layer.recipe.double_quant or ctx.transpose_qw else None
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(weight)
        layer.saved_bytes = qxt.nbytes + (qw.nbytes if ctx.qw is not None else 0)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (weight,) = ctx.saved_tensors
        layer: QuantLinear = ctx.layer
        q = layer._quantize_operand
        with torch.autocast(device_type=dy.device.type, enabled=False):
            if ctx.transpose_qw:
                qwt = transpose(ctx.qw)  # = quantize(Wᵀ, w_dgrad), without a second pass over W
            else:
                w_src = dequantize(ctx.qw, dtype=torch.float32) if ctx.qw is not None else weight
                if layer.operand_spec("w_dgrad").is_identity:  # an unquantized GEMM runs in the activation dtype
                    w_src = w_src.to(dy.dtype)
                qwt = q("w_dgrad", w_src.T)
            qdy, qdyt = layer._quantize_pair("dy_dgrad", "dy_wgrad", dy)
            mx_fp8 = layer.recipe.mx_fp8_gemm
            dx = quantized_matmul(qdy, qwt, out_dtype=ctx.x_dtype, mx_fp8=mx_fp8)
            dw = quantized_matmul(qdyt, ctx.qxt, out_dtype=weight.dtype, mx_fp8=mx_fp8)
            db = dy.sum(0).to(weight.dtype) if ctx.has_bias else None
        ctx.qxt = ctx.qw = None
        return dx, dw, db, None


class QuantLinear(nn.Linear):
    """Drop-in ``nn.Linear`` with quantized Fprop, Dgrad and Wgrad.

    ``recipe``: a ``Recipe`` or recipe name. ``layer_id`` separates this layer's SR streams from
    other layers'. ``high_precision``: GEMMs (``"fprop"``, ``"dgrad"``, ``"wgrad"``) to run
    unquantized, set by precision schedules. With every GEMM unquantized the layer *is*
    ``F.linear`` (bit-identical to ``nn.Linear``, autocast included).

    Under ``torch.autocast`` the activation is cast to the autocast dtype as ``nn.Linear`` would,
    while the FP32 master weight is quantized directly and its gradient returned in FP32.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        recipe: Recipe | str = "nvfp4",
        layer_id: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = build_recipe(recipe) if isinstance(recipe, str) else recipe
        self.layer_id = layer_id
        self.high_precision: frozenset[str] = frozenset()
        # forward passes run in training mode: the SR streams' counter (saved through extra state)
        self.register_buffer("sr_step", torch.zeros((), dtype=torch.int64, device=self.weight.device), persistent=False)
        self.saved_bytes = 0  # bytes the last forward saved for backward (quantized copies; W itself not counted)

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation, and the SR step counter back to 0 (after ``to_empty``)."""
        super().reset_parameters()
        if hasattr(self, "sr_step"):  # not yet while nn.Linear.__init__ runs
            self.sr_step.zero_()

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe, layer_id: int = 0) -> "QuantLinear":
        """A ``QuantLinear`` sharing ``linear``'s weight and bias parameters."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, recipe, layer_id, device="meta")
        q.weight = linear.weight
        q.bias = linear.bias
        q.sr_step = torch.zeros((), dtype=torch.int64, device=linear.weight.device)
        return q

    def operand_spec(self, operand: str) -> QuantSpec:
        """The spec in force for ``operand`` (BF16 when its GEMM runs in high precision)."""
        gemm = next(g for g, ops in GEMMS.items() if operand in ops)
        return BF16 if gemm in self.high_precision else self.recipe.spec(operand)

    @property
    def is_unquantized(self) -> bool:
        return all(self.operand_spec(o).is_identity for o in OPERANDS)

    def _stream(self, operand: str) -> SRStream | None:
        """The SR stream of ``operand`` (``None`` when it rounds to nearest). In a data-parallel
        run each process but rank 0 mixes its rank into the key: the ranks round their different
        data with independent bits."""
        spec = self.operand_spec(operand)
        if spec.rounding != "sr":
            return None
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        parts = (spec.seed, self.layer_id, OPERANDS.index(operand)) + ((rank,) if rank else ())
        return SRStream(stream_seed(*parts), self.sr_step)

    def _quantize_operand(self, operand: str, t: torch.Tensor) -> QuantizedTensor:
        return quantize(t, self.operand_spec(operand), generator=self._stream(operand))

    def _quantize_pair(self, row_operand: str, col_operand: str, t: torch.Tensor) -> tuple[QuantizedTensor, QuantizedTensor]:
        """``t`` for ``row_operand`` and ``t.T`` for ``col_operand`` (one read on the GPU)."""
        return quantize_pair(
            t,
            self.operand_spec(row_operand),
            self.operand_spec(col_operand),
            row_generator=self._stream(row_operand),
            col_generator=self._stream(col_operand),
        )

    def quantize_weight(self, weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
        """Fprop weight quantizer; a subclass may change how W is rounded (e.g. TetraJet's Q-EMA)
        and then says so in ``rounds_weight_plainly``."""
        return quantize(weight, spec)

    def rounds_weight_plainly(self) -> bool:
        """Whether ``quantize_weight(W, spec)`` is ``quantize(W, spec)``: False for a subclass that
        overrides ``quantize_weight``, unless it overrides this too (Q-EMA: until the EMA rounds)."""
        return type(self).quantize_weight is QuantLinear.quantize_weight

    def _fprop_weight_serves_dgrad(self, qw: QuantizedTensor) -> bool:
        """Whether Dgrad's ``quantize(Wᵀ, w_dgrad)`` is Fprop's copy ``qw`` transposed
        (``quant.transpose``): ``qw`` is plain ``quantize(W)`` with the Dgrad spec, and that spec
        transposes exactly (NVFP4's 16×16 weight blocks, per-tensor FP8; round to nearest). Not
        under TetraJet's double quantization, whose Dgrad copy is quantized from the Fprop copy."""
        spec = self.operand_spec("w_dgrad")
        plain = self.rounds_weight_plainly() and not self.recipe.double_quant
        return plain and qw.spec == spec and transposes_exactly(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_unquantized:
            return F.linear(x, self.weight, self.bias)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.__class__.__name__} expects last dim {self.in_features}, got shape {tuple(x.shape)}")
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            x = x.to(torch.get_autocast_dtype(device_type))
        if self.training and torch.is_grad_enabled():
            self.sr_step.add_(1)
        with torch.autocast(device_type=device_type, enabled=False):
            y = _QuantLinearFunction.apply(x.reshape(-1, self.in_features), self.weight, self.bias, self)
        return y.reshape(*x.shape[:-1], self.out_features)

    def graph_key(self) -> tuple:
        """What a CUDA graph of this layer depends on beyond tensor values (``fp4train.graphs``)."""
        return (tuple(sorted(self.high_precision)),)

    def get_extra_state(self) -> dict:
        # a plain int in checkpoints (a sync on the GPU: at save time only); a meta layer has none yet
        return {"sr_step": 0 if self.sr_step.is_meta else int(self.sr_step)}

    def set_extra_state(self, state: dict) -> None:
        self.sr_step.fill_(int(state["sr_step"]))

    def extra_repr(self) -> str:
        hp = f", high_precision={sorted(self.high_precision)}" if self.high_precision else ""
        return f"{super().extra_repr()}, recipe={self.recipe.name}, layer_id={self.layer_id}{hp}"
