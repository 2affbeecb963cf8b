"""``QuantLinear``: an ``nn.Linear`` whose three GEMMs run on quantized operands.

Fprop ``y = x Wᵀ``, Dgrad ``dx = dy W`` and Wgrad ``dW = dyᵀ x`` each quantize both inputs
along that GEMM's reduction dimension with the recipe's spec for that operand (see
``fp4train.recipes``), then multiply with ``fp4train.dispatch.quantized_matmul`` (exact products,
FP32 accumulation). What backward needs is saved quantized and packed: the Wgrad copy of ``x``
(quantized along tokens in forward), and ``W`` itself (a parameter: saving it costs nothing).
Where Dgrad's copy of ``W`` is Fprop's transposed (square weight blocks or one scale per tensor,
round to nearest: ``quant.transposes_exactly``), Fprop's packed copy is saved too and backward
transposes it (``quant.transpose``) instead of quantizing ``Wᵀ`` again.

Stochastic rounding draws its bits from one ``SRStream`` per operand: key ``stream_seed(recipe
seed, layer id, operand[, rank if > 0])``, counter the layer's step counter ``sr_step``, a 0-dim
int64 tensor beside the weight that each training forward increments in place. Each call
keeps a device copy of the counter for its backward, so a layer called twice before backward
(shared weights, several micro-batches) rounds each call's gradient with that call's bits.
On the GPU the kernels read the counter when they run, so the layer can be captured in a CUDA
graph (``torch.cuda.make_graphed_callables``) and each replay draws the next step's bits, the
same bits as the eager run. The counter is part of the module's state dict, so a resumed run
continues the same streams.

Backward reads nothing of the layer: the specs in force, the stream keys, the quantizers and the
counter copy are fixed by the forward call (``_CallPlan``), and the gradients autograd does not ask
for (``ctx.needs_input_grad``: an input or weight that needs none) are neither quantized nor computed.

A quantization method (``fp4train.methods``) changes how an operand is quantized in a subclass:
``operand_quantizer`` replaces ``quantize`` for any operand, ``quantize_weight`` rounds the Fprop
weight from layer state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from fp4train.dispatch import quantized_matmul
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

__all__ = ["QuantLinear", "Quantizer"]

# A replacement of ``fp4train.quant.quantize`` for one operand: ``quantizer(t, spec, generator=None)``
# returns the ``QuantizedTensor`` the GEMM multiplies (``QuantLinear.operand_quantizer``).
Quantizer = Callable[..., QuantizedTensor]


@dataclass(frozen=True)
class _CallPlan:
    """What one call of a layer quantizes with, fixed when its forward runs: backward reads
    nothing of the layer, which a precision schedule (``high_precision``) or a later call (the
    step counter) may change before backward runs.

    ``specs``/``keys``/``quantizers``: per operand (``OPERANDS`` order) the spec in force, its SR
    stream's key (``None``: round to nearest) and its quantizer (``None``: ``quantize``). ``grad``:
    autograd records the call (else forward keeps nothing for backward)."""

    specs: tuple[QuantSpec, ...]
    keys: tuple[int | None, ...]
    quantizers: tuple[Quantizer | None, ...]
    mx_fp8: bool
    double_quant: bool
    grad: bool

    def spec(self, operand: str) -> QuantSpec:
        return self.specs[OPERANDS.index(operand)]

    @property
    def uses_sr(self) -> bool:
        return any(k is not None for k in self.keys)

    def stream(self, operand: str, counter: torch.Tensor | None) -> SRStream | None:
        key = self.keys[OPERANDS.index(operand)]
        return None if key is None else SRStream(key, counter)

    def quantize(self, operand: str, t: torch.Tensor, counter: torch.Tensor | None) -> QuantizedTensor:
        quantizer = self.quantizers[OPERANDS.index(operand)] or quantize
        return quantizer(t, self.spec(operand), generator=self.stream(operand, counter))

    def quantize_pair(
        self, row_operand: str, col_operand: str, t: torch.Tensor, counter: torch.Tensor | None
    ) -> tuple[QuantizedTensor, QuantizedTensor]:
        """``t`` for ``row_operand`` and ``t.T`` for ``col_operand`` (one read on the GPU, unless
        either has a quantizer of its own)."""
        if self.quantizers[OPERANDS.index(row_operand)] or self.quantizers[OPERANDS.index(col_operand)]:
            return self.quantize(row_operand, t, counter), self.quantize(col_operand, t.T, counter)
        return quantize_pair(
            t,
            self.spec(row_operand),
            self.spec(col_operand),
            row_generator=self.stream(row_operand, counter),
            col_generator=self.stream(col_operand, counter),
        )


def _tensors_of(qt: QuantizedTensor | None) -> tuple[torch.Tensor | None, ...]:
    """``qt``'s tensors (three ``None`` for no ``qt``), for ``ctx.save_for_backward``."""
    return (None, None, None) if qt is None else (qt.data, qt.scales, qt.tensor_scale)


def _shell(qt: QuantizedTensor | None) -> QuantizedTensor | None:
    """``qt`` without its tensors: what ``ctx`` keeps beside the saved tensors."""
    return None if qt is None else replace(qt, data=None, scales=None, tensor_scale=None)


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same elements of the same memory, laid out alike."""
    return (a.shape, a.stride(), a.storage_offset(), a.dtype) == (b.shape, b.stride(), b.storage_offset(), b.dtype) and (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


def _rebuilt(shell: QuantizedTensor | None, tensors: tuple[torch.Tensor | None, ...]) -> QuantizedTensor | None:
    """Inverse of (``_shell``, ``_tensors_of``)."""
    if shell is None:
        return None
    data, scales, tensor_scale = tensors
    return replace(shell, data=data, scales=scales, tensor_scale=tensor_scale)


class _QuantLinearFunction(torch.autograd.Function):
    """Autograd over the three quantized GEMMs of one linear layer (2-D ``x``: tokens × in).

    Every tensor backward reads goes through ``ctx.save_for_backward`` (a ``QuantizedTensor`` as
    its codes, scales and tensor scale): autograd's version check then catches an in-place
    change of an operand kept as is (the identity format keeps a view of ``x``), and
    ``saved_tensors_hooks`` (offloading, activation checkpointing) see every saved copy. Only the
    gradients autograd asks for (``ctx.needs_input_grad``) are computed, and only what they need
    is kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: "QuantLinear", plan: _CallPlan):
        need_dx = plan.grad and ctx.needs_input_grad[0]
        need_dw = plan.grad and ctx.needs_input_grad[1]
        # this call's SR step: a later call advances the layer's counter before this backward runs
        counter = layer.sr_step.clone() if plan.uses_sr else None
        qxt = None
        if plan.double_quant:  # double quantization: Wgrad's x is the Fprop copy, quantized again
            qx = plan.quantize("x_fprop", x, counter)
            if need_dw:
                qxt = plan.quantize("x_wgrad", dequantize(qx).T, counter)
        elif need_dw:
            qx, qxt = plan.quantize_pair("x_fprop", "x_wgrad", x, counter)
        else:
            qx = plan.quantize("x_fprop", x, counter)
        w_spec = plan.spec("w_fprop")
        qw = layer.quantize_weight(weight.to(x.dtype) if w_spec.is_identity else weight, w_spec)
        if bias is None:  # the GEMM rounds its FP32 result to the activation dtype once
            y = quantized_matmul(qx, qw, out_dtype=x.dtype, mx_fp8=plan.mx_fp8)
        else:  # as addmm under autocast: bias in the activation dtype, added in FP32, one rounding
            y = (quantized_matmul(qx, qw, out_dtype=torch.float32, mx_fp8=plan.mx_fp8) + bias.to(x.dtype).float()).to(x.dtype)
        ctx.transpose_qw = need_dx and layer._fprop_weight_serves_dgrad(qw, plan.spec("w_dgrad"))
        kept_qw = qw if need_dx and (plan.double_quant or ctx.transpose_qw) else None
        kept_w = weight if need_dx and kept_qw is None else None  # Dgrad quantizes Wᵀ itself
        ctx.plan, ctx.dtypes = plan, (x.dtype, weight.dtype)
        ctx.qxt, ctx.qw = _shell(qxt), _shell(kept_qw)
        qxt_tensors = _tensors_of(qxt)
        # Wgrad's x in the identity format is xᵀ, a view made here (no-grad mode): save the input
        # itself, whose version autograd checks as for F.linear's saved input
        ctx.qxt_is_xt = qxt is not None and _same_view(qxt.data, x.T)
        if ctx.qxt_is_xt:
            qxt_tensors = (x, *qxt_tensors[1:])
        ctx.save_for_backward(kept_w, counter, *qxt_tensors, *_tensors_of(kept_qw))
        layer.saved_bytes = sum(q.nbytes for q in (qxt, kept_qw) if q is not None)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        plan: _CallPlan = ctx.plan
        weight, counter, *quantized = ctx.saved_tensors
        if ctx.qxt_is_xt:
            quantized[0] = quantized[0].T
        qxt, qw = _rebuilt(ctx.qxt, quantized[:3]), _rebuilt(ctx.qw, quantized[3:])
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        x_dtype, w_dtype = ctx.dtypes
        dx = dw = db = None
        with torch.autocast(device_type=dy.device.type, enabled=False):
            if need_dx and need_dw:
                qdy, qdyt = plan.quantize_pair("dy_dgrad", "dy_wgrad", dy, counter)
            elif need_dx:
                qdy = plan.quantize("dy_dgrad", dy, counter)
            elif need_dw:
                qdyt = plan.quantize("dy_wgrad", dy.T, counter)
            if need_dx:
                if ctx.transpose_qw:
                    qwt = transpose(qw)  # = quantize(Wᵀ, w_dgrad), without a second pass over W
                else:
                    w_src = dequantize(qw, dtype=torch.float32) if qw is not None else weight
                    if plan.spec("w_dgrad").is_identity:  # an unquantized GEMM runs in the activation dtype
                        w_src = w_src.to(dy.dtype)
                    qwt = plan.quantize("w_dgrad", w_src.T, counter)
                dx = quantized_matmul(qdy, qwt, out_dtype=x_dtype, mx_fp8=plan.mx_fp8)
            if need_dw:
                dw = quantized_matmul(qdyt, qxt, out_dtype=w_dtype, mx_fp8=plan.mx_fp8)
            if need_db:
                db = dy.sum(0).to(w_dtype)
        return dx, dw, db, None, None


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

    def _stream_key(self, operand: str, spec: QuantSpec, rank: int) -> int | None:
        """The key of ``operand``'s SR stream (``None`` when it rounds to nearest):
        ``stream_seed(recipe seed, layer id, operand)``. In a data-parallel run each process but
        rank 0 mixes its rank in: the ranks round their different data with independent bits."""
        if spec.rounding != "sr":
            return None
        return stream_seed(spec.seed, self.layer_id, OPERANDS.index(operand), *((rank,) if rank else ()))

    @staticmethod
    def process_rank() -> int:
        """This process's rank in the default process group (0 without one): the SR streams of
        ranks but 0 mix it in (``_stream_key``)."""
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def _plan(self, grad: bool) -> _CallPlan:
        """This call's specs, SR stream keys and quantizers (``_CallPlan``)."""
        rank = self.process_rank()
        specs = tuple(self.operand_spec(o) for o in OPERANDS)
        keys = tuple(self._stream_key(o, s, rank) for o, s in zip(OPERANDS, specs))
        quantizers = tuple(None if s.is_identity else self.operand_quantizer(o) for o, s in zip(OPERANDS, specs))
        return _CallPlan(specs, keys, quantizers, self.recipe.mx_fp8_gemm, self.recipe.double_quant, grad)

    def operand_quantizer(self, operand: str) -> Quantizer | None:
        """A subclass's replacement of ``quantize`` for ``operand`` (one of ``OPERANDS``), called as
        ``quantizer(t, spec, generator=stream)`` (``generator``: the operand's SR stream, ``None``
        for round to nearest) on the tensor in the layout the GEMM reduces (blocks along the last
        dimension); ``None``: ``quantize``. Asked once per forward call for each operand whose GEMM
        is quantized (not for BF16 operands: a precision schedule's high-precision GEMMs): what it
        returns quantizes that operand in this call, in forward or backward, so it must not read
        layer state that may change in between (bind the values it needs)."""
        return None

    def quantize_weight(self, weight: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
        """Fprop weight quantizer: ``operand_quantizer("w_fprop")``, else ``quantize``. A subclass
        that rounds W from layer state (an EMA of W, say) overrides this and says when it rounds
        plainly in ``rounds_weight_plainly``."""
        quantizer = None if spec.is_identity else self.operand_quantizer("w_fprop")
        return (quantizer or quantize)(weight, spec)

    def rounds_weight_plainly(self) -> bool:
        """Whether ``quantize_weight(W, spec)`` is ``quantize(W, spec)``: False for a subclass that
        overrides ``quantize_weight`` (unless it overrides this too, to say on which calls it rounds
        plainly) or replaces the ``w_fprop`` quantizer."""
        return type(self).quantize_weight is QuantLinear.quantize_weight and self.operand_quantizer("w_fprop") is None

    def _fprop_weight_serves_dgrad(self, qw: QuantizedTensor, dgrad_spec: QuantSpec) -> bool:
        """Whether Dgrad's ``quantize(Wᵀ, dgrad_spec)`` is Fprop's copy ``qw`` transposed
        (``quant.transpose``): ``qw`` is plain ``quantize(W)`` with the Dgrad spec, Dgrad's W has no
        quantizer of its own, and that spec transposes exactly (NVFP4's 16×16 weight blocks,
        per-tensor FP8; round to nearest). Not under double quantization (TetraJet §3), whose Dgrad
        copy is quantized from the Fprop copy."""
        plain = self.rounds_weight_plainly() and self.operand_quantizer("w_dgrad") is None
        return plain and not self.recipe.double_quant and qw.spec == dgrad_spec and transposes_exactly(dgrad_spec)

    def gemm_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the GEMMs quantize it: cast to the autocast dtype where autocast is on (as
        ``nn.Linear`` would cast it)."""
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            return x.to(torch.get_autocast_dtype(device_type))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_unquantized:
            return F.linear(x, self.weight, self.bias)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.__class__.__name__} expects last dim {self.in_features}, got shape {tuple(x.shape)}")
        x = self.gemm_input(x)
        grad = torch.is_grad_enabled()
        if self.training and grad:
            self.sr_step.add_(1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.quantized_gemms(x.reshape(-1, self.in_features), grad)
        return y.reshape(*x.shape[:-1], self.out_features)

    def quantized_gemms(self, x: torch.Tensor, grad: bool) -> torch.Tensor:
        """``x Wᵀ + b`` for a 2-D ``x`` (tokens × in, already cast as the GEMMs take it), with the
        layer's quantized Fprop and the Dgrad and Wgrad it sets up; autocast is off, ``sr_step`` is
        this call's. A method whose backward is not three separately quantized GEMMs (one that
        reuses the forward's quantized operands and masks, say) overrides this."""
        return _QuantLinearFunction.apply(x, self.weight, self.bias, self, self._plan(grad))

    def graph_key(self) -> tuple:
        """What a CUDA graph of this layer depends on beyond tensor values (``fp4train.cuda_graphs``)."""
        return (tuple(sorted(self.high_precision)),)

    def get_extra_state(self) -> dict:
        # a plain int in checkpoints (a sync on the GPU: at save time only); a meta layer has none yet
        return {"sr_step": 0 if self.sr_step.is_meta else int(self.sr_step)}

    def set_extra_state(self, state: dict) -> None:
        self.sr_step.fill_(int(state["sr_step"]))

    def extra_repr(self) -> str:
        hp = f", high_precision={sorted(self.high_precision)}" if self.high_precision else ""
        return f"{super().extra_repr()}, recipe={self.recipe.name}, layer_id={self.layer_id}{hp}"
