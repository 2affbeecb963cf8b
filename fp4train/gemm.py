"""The GEMM of two quantized operands, emulated exactly: ``C = A Bᵀ`` with both quantized
along their last (reduction) dimension.

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

from fp4train.quant import QuantizedTensor

__all__ = ["scaled_operand", "quantized_matmul"]


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


def quantized_matmul(
    a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.float32, mx_fp8: bool = False
) -> torch.Tensor:
    """``A Bᵀ`` for ``A`` (M, K) and ``B`` (N, K), cropped to the unpadded (M, N), in ``out_dtype``.

    Both operands must carry the same RHT (or none) — the transform cancels only then.
    ``mx_fp8``: on a GPU, multiply two MXFP4 operands on the FP8 tensor cores where that is exact
    for the operands (``fp4train.kernels.gemm.mx_fp8_matmul``; FP8 MMA accumulation); no effect
    on the CPU.
    """
    if (a.spec.rht, a.spec.seed if a.spec.rht else None) != (b.spec.rht, b.spec.seed if b.spec.rht else None):
        raise ValueError(
            f"quantized_matmul operands carry different Hadamard transforms "
            f"(rht={a.spec.rht}, seed={a.spec.seed} vs rht={b.spec.rht}, seed={b.spec.seed}); "
            "the transform cancels only when both operands use the same one"
        )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"reduction dims differ: A {tuple(a.shape)} vs B {tuple(b.shape)}")
    if a.data.is_cuda:  # --- GPU dispatch (fp4train.kernels): Triton FP4 GEMM / FP8 _scaled_mm ---
        from fp4train.kernels.dispatch import matmul_on_gpu

        out = matmul_on_gpu(a, b, out_dtype, mx_fp8)
        if out is not None:
            return out  # --- end of GPU dispatch ---
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
