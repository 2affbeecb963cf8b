"""The GEMM of two quantized operands, emulated exactly in plain torch: ``C = A Bᵀ`` with both
quantized along their last (reduction) dimension. The reference the GPU GEMMs
(``fp4train.kernels.gemm``) equal up to FP32 summation order.

Block formats decode as ``element · block_scale · tensor_scale``. Hardware (Blackwell block
MMA) multiplies ``element · block_scale`` products exactly, accumulates in FP32 and applies the
per-tensor scales to the output; we do the same: ``C = (A' B'ᵀ) · (t_a · t_b)`` with
``A' = element · block_scale``. ``A'`` has at most 6 significant bits for NVFP4/MXFP4/MXFP8 and
per-tensor FP8, so ``A'`` is exact in bf16 and the products are exact in FP32; the accumulation is
FP32 (float32 matmul on CPU). A bf16 operand (the identity format) is multiplied as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .tensor import QuantizedTensor

__all__ = ["scaled_operand", "check_operands", "quantized_matmul"]


def scaled_operand(qt: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(A', t)``: the padded float32 matrix ``element · block_scale`` (RHT kept) and the FP32
    per-tensor factor (``None`` if there is none). Per-tensor FP8 returns its elements with
    the tensor's scale as ``t``."""
    if qt.spec.is_identity:  # unquantized (possibly RHT-transformed) values
        return qt.padded_values(), None
    if qt.spec.block_shape is None:  # per-tensor FP32 scale: keep it out of the products
        return qt.element_values(), qt.scales.reshape(())
    return qt.padded_values(with_tensor_scale=False), qt.tensor_scale


def _match_width(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the narrower operand along K: padded columns contribute exact zeros."""
    k = max(a.shape[1], b.shape[1])
    return F.pad(a, (0, k - a.shape[1])), F.pad(b, (0, k - b.shape[1]))


def check_operands(a: QuantizedTensor, b: QuantizedTensor) -> None:
    """Raise ``ValueError`` unless ``A Bᵀ`` is defined: the same reduction dim, and the same RHT
    (or none) on both operands — the transform cancels only then."""
    if (a.spec.rht, a.spec.seed if a.spec.rht else None) != (b.spec.rht, b.spec.seed if b.spec.rht else None):
        raise ValueError(
            f"quantized_matmul operands carry different Hadamard transforms "
            f"(rht={a.spec.rht}, seed={a.spec.seed} vs rht={b.spec.rht}, seed={b.spec.seed}); "
            "the transform cancels only when both operands use the same one"
        )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"reduction dims differ: A {tuple(a.shape)} vs B {tuple(b.shape)}")


def quantized_matmul(a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``A Bᵀ`` for ``A`` (M, K) and ``B`` (N, K), cropped to the unpadded (M, N), in ``out_dtype``:
    ``(A' B'ᵀ) · t_a · t_b`` in float32 (``scaled_operand``)."""
    check_operands(a, b)
    va, ta = scaled_operand(a)
    vb, tb = scaled_operand(b)
    va, vb = _match_width(va.float(), vb.float())
    out = va @ vb.T
    for t in (ta, tb):
        if t is not None:
            out = out * t
    m = a.shape[:-1].numel()
    n = b.shape[:-1].numel()
    return out[:m, :n].to(out_dtype)
