"""Number formats and block quantizers (CPU reference; the Triton kernels must equal it)."""

from .api import QuantizedTensor, dequantize, fake_quantize, quantize, quantize_pair, transpose, transposes_exactly
from .formats import E2M1, E4M3, E5M2, decode, encode, pack_fp4, round_to_grid, unpack_fp4
from .hadamard import apply_rht, rht_matrix, rht_signs
from .spec import BLOCK_FORMATS, QuantSpec
from .streams import SRStream, stream_seed

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
