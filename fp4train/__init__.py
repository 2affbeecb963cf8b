"""fp4train: bit-faithful NVFP4 / MXFP4 / FP8 training research on any hardware."""

from .dispatch import fake_quantize, quantize
from .quant import QuantizedTensor, QuantSpec, apply_rht, dequantize

__version__ = "0.1.0"
__all__ = ["QuantSpec", "QuantizedTensor", "quantize", "dequantize", "fake_quantize", "apply_rht"]
