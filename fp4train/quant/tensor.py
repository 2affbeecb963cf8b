"""``QuantizedTensor``: a tensor in a block format, as codes, block scales and a tensor scale.

The type every quantizer returns — the reference ones (``fp4train.quant.reference``) and the
Triton kernels (``fp4train.kernels``) — and every GEMM takes; it decodes itself in plain torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import expand_blocks
from .formats import E4M3, decode, e8m0_decode, unpack_fp4
from .spec import QuantSpec

__all__ = ["QuantizedTensor", "matrix_shape"]


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """(rows, last dim) of the matrix view that blocks tile: leading dims flattened."""
    return (shape[:-1].numel(), shape[-1])


@dataclass
class QuantizedTensor:
    """A tensor in a block format.

    ``data``: uint8 element codes of the padded ``(M, K)`` matrix view — FP4 packed two per
    byte ``(M, K/2)``, FP8 one per byte ``(M, K)``; for ``bf16`` the tensor itself.
    ``scales``: per-block scales ``(M/br, K/bc)`` — uint8 E8M0/E4M3 codes, or float32 decode
    scales (``fp8_*``); ``None`` for ``bf16``. ``tensor_scale``: NVFP4's FP32 decode scale
    ``s_dec`` (0-dim), else ``None``. ``shape``/``dtype``: of the original tensor.
    """

    spec: QuantSpec
    shape: torch.Size
    dtype: torch.dtype
    data: torch.Tensor
    scales: torch.Tensor | None
    tensor_scale: torch.Tensor | None
    padded: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes held (codes + scales + tensor scale)."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, self.tensor_scale) if t is not None)

    def element_values(self) -> torch.Tensor:
        """float32 element values before scaling, shape ``padded`` (e.g. E2M1 values in [-6, 6])."""
        fmt = self.spec.format
        codes = unpack_fp4(self.data) if fmt.is_fp4 else self.data
        return decode(codes, fmt.element)

    def scale_values(self) -> torch.Tensor:
        """float32 per-block decode scales (NVFP4: ``sb`` only, without the tensor scale)."""
        kind = self.spec.format.scale
        if kind == "e8m0":
            return e8m0_decode(self.scales)
        if kind == "e4m3":
            return decode(self.scales, E4M3)
        return self.scales

    def padded_values(self, with_tensor_scale: bool = True) -> torch.Tensor:
        """float32 decoded values of the padded ``(M, K)`` matrix, in the RHT domain if any
        (``element · block_scale``, times NVFP4's tensor scale unless ``with_tensor_scale=False``)."""
        if self.spec.is_identity:
            return self.data.reshape(self.padded).to(torch.float32)
        vals = self.element_values() * expand_blocks(self.scale_values(), self.spec.block_shape, self.padded)
        if with_tensor_scale and self.tensor_scale is not None:
            vals = vals * self.tensor_scale
        return vals
