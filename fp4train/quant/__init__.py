"""Number formats, block quantizers and the quantized-tensor type: the bottom layer of fp4train.

The modules of this package are plain torch (the reference numerics, on any device) and import
nothing of fp4train above them: ``formats``, ``blocks``, ``hadamard``, ``spec``, ``streams``,
``tensor`` (``QuantizedTensor``), ``reference`` (the quantizers), ``matmul`` (the exact GEMM).
The Triton kernels (``fp4train.kernels``) sit above them and equal them; ``fp4train.dispatch``,
above both, picks the kernel for a CUDA tensor it handles and the reference otherwise.

This package is also the public API (``from fp4train.quant import quantize``). The four
dispatched ops — ``quantize``, ``quantize_pair``, ``transpose``, ``fake_quantize`` — live in
``fp4train.dispatch`` and are handed out from there on first access, by a lazy import in
``__getattr__`` (PEP 562). Chosen over importing them here at module level, which would be an
import circle (``fp4train.dispatch`` imports this package's modules, and importing any of them
runs this file first), and over a second public module above both, which would break user
code: import time stays one-way, and ``fp4train.quant.quantize is fp4train.dispatch.quantize``
(one function, no wrapper). ``tests/test_layering.py`` holds the rules.
"""

from .formats import E2M1, E4M3, E5M2, decode, encode, pack_fp4, round_to_grid, unpack_fp4
from .hadamard import apply_rht, rht_matrix, rht_signs
from .reference import dequantize, transposes_exactly
from .spec import BLOCK_FORMATS, QuantSpec
from .streams import SRStream, stream_seed
from .tensor import QuantizedTensor

__all__ = [
    "QuantSpec",
    "SRStream",
    "stream_seed",
    "QuantizedTensor",
    "quantize",
    "quantize_pair",
    "transposes_exactly",
    "transpose",
    "dequantize",
    "fake_quantize",
    "BLOCK_FORMATS",
    "E2M1",
    "E4M3",
    "E5M2",
    "round_to_grid",
    "encode",
    "decode",
    "pack_fp4",
    "unpack_fp4",
    "apply_rht",
    "rht_matrix",
    "rht_signs",
]

_DISPATCHED = ("quantize", "quantize_pair", "transpose", "fake_quantize")


def __getattr__(name: str):
    """``quantize``, ``quantize_pair``, ``transpose``, ``fake_quantize`` from ``fp4train.dispatch``
    (module doc), bound here on first access."""
    if name not in _DISPATCHED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fp4train import dispatch

    value = globals()[name] = getattr(dispatch, name)
    return value
