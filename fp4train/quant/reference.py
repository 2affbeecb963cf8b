"""The reference quantizers, in plain torch: ``quantize``, ``transpose``, ``dequantize``.

They run on any device and define the numerics: the Triton kernels (``fp4train.kernels``) must
equal them bit for bit, and ``fp4train.dispatch`` picks a kernel for a CUDA tensor it handles and
these otherwise. A change to how a format rounds is made once, in ``formats.py``/``blocks.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blocks import (
    block_amax,
    check_tiles,
    expand_blocks,
    fp32_scale,
    mx_scale_codes,
    nvfp4_block_scale,
    nvfp4_tensor_scales,
)
from .formats import E4M3, encode, pack_fp4, random_bits, round_to_grid, unpack_fp4
from .hadamard import apply_rht
from .spec import QuantSpec
from .streams import SRStream
from .tensor import QuantizedTensor, matrix_shape

__all__ = [
    "check_quantize_input",
    "quantize",
    "transposes_exactly",
    "transpose",
    "transposed_with_codes",
    "dequantize",
]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_quantize_input(x: torch.Tensor, spec: QuantSpec) -> None:
    """Raise ``TypeError``/``ValueError`` naming what is wrong unless ``quantize(x, spec)`` can run:
    a ``QuantSpec`` and a floating-point tensor of at least one dimension."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"quantize expects a floating-point tensor ({_FLOAT_DTYPES}), got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("quantize needs at least one dimension (blocks run along the last one)")


def quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    generator: torch.Generator | SRStream | None = None,
    rand_bits: torch.Tensor | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` with blocks along its last dimension (leading dims are flattened to rows).

    Stochastic rounding draws ``spec.sr_bits``-bit integers from ``generator`` unless
    ``rand_bits`` (int tensor of the padded ``(M, K)`` shape) supplies them. ``generator``: a
    ``torch.Generator``; an ``SRStream`` (its step's generator); or ``None``, torch's default
    generator of ``x``'s device, so that successive calls draw fresh bits
    (``torch.manual_seed`` makes them reproducible), as ``torch.rand`` does.
    """
    check_quantize_input(x, spec)
    shape, dtype = x.shape, x.dtype
    if spec.is_identity and spec.rht is None:
        return QuantizedTensor(spec, shape, dtype, x, None, None, matrix_shape(shape))

    fmt = spec.format
    block = spec.block_shape
    m = x.reshape(matrix_shape(shape)).to(torch.float32)
    if spec.pad and (block or spec.rht):
        br, bc = block or (1, 1)
        bc = math.lcm(bc, spec.rht or 1)  # whole blocks and whole Hadamard groups
        m = F.pad(m, (0, -m.shape[1] % bc, 0, -m.shape[0] % br))
    check_tiles(tuple(m.shape), block, what=f"{spec.fmt} input of shape {tuple(shape)}")
    if spec.rht is not None:
        m = apply_rht(m, spec.rht, spec.seed)
    rows, cols = m.shape
    if spec.is_identity:  # an unquantized operand that still carries the RHT (ablations)
        return QuantizedTensor(spec, shape, dtype, m, None, None, (rows, cols))

    amax = block_amax(m, block)
    tensor_scale = None
    if fmt.scale == "e8m0":
        scale_codes, enc = mx_scale_codes(amax, fmt.element, spec.mx_rule)
    elif fmt.scale == "e4m3":
        amax_t = m.abs().amax()
        s_enc, tensor_scale = nvfp4_tensor_scales(amax_t)
        sb, enc = nvfp4_block_scale(amax, s_enc)
        scale_codes = encode(sb, E4M3)
    else:  # fp32
        scale_codes, enc = fp32_scale(amax, fmt.element)

    scaled = m * expand_blocks(enc, block, (rows, cols))
    if spec.rounding == "sr" and rand_bits is None:
        if isinstance(generator, SRStream):
            generator = generator.generator(m.device)
        rand_bits = random_bits((rows, cols), spec.sr_bits, generator, m.device)
    q = round_to_grid(scaled, fmt.element, spec.rounding, rand_bits, spec.sr_bits)
    codes = encode(q, fmt.element)
    if fmt.is_fp4:
        codes = pack_fp4(codes)
    # row-major, as the kernels index them (a transposed input view would otherwise give strided codes)
    return QuantizedTensor(spec, shape, dtype, codes.contiguous(), scale_codes.contiguous(), tensor_scale, (rows, cols))


def transposes_exactly(spec: QuantSpec) -> bool:
    """Whether ``quantize(x_mat.T, spec)`` is ``quantize(x, spec)`` transposed, for every ``x``:
    square blocks or one scale per tensor (a block of ``x_mat.T`` is a block of ``x_mat``
    transposed, with the same amax and scale), round to nearest (SR draws its bits in the
    other order) and no RHT (it mixes along the other dimension)."""
    if spec.is_identity or spec.rht is not None or spec.rounding != "rn":
        return False
    block = spec.block_shape
    return block is None or block[0] == block[1]


def transposed_with_codes(qt: QuantizedTensor, codes: torch.Tensor) -> QuantizedTensor:
    """``qt``'s transpose (see ``transpose``) given its element codes ``codes``, already transposed
    (packed along the new last dim for FP4): the block scales transposed, the tensor scale shared."""
    rows, cols = matrix_shape(qt.shape)
    scales = qt.scales if qt.spec.block_shape is None else qt.scales.T.contiguous()
    padded = (qt.padded[1], qt.padded[0])
    return QuantizedTensor(qt.spec, torch.Size((cols, rows)), qt.dtype, codes, scales, qt.tensor_scale, padded)


def transpose(qt: QuantizedTensor) -> QuantizedTensor:
    """``quantize(x_mat.T, qt.spec)`` from ``qt = quantize(x, qt.spec)`` without ``x``, bit for bit
    (``x_mat``: ``x`` with its leading dims flattened): the codes and block scales transposed,
    the tensor scale shared. Needs ``transposes_exactly(qt.spec)``, e.g. NVFP4's 16×16 weight
    blocks, whose Dgrad copy is then the Fprop copy transposed."""
    if not transposes_exactly(qt.spec):
        raise ValueError(
            f"transpose needs square blocks (or one scale per tensor), rounding 'rn' and no RHT; got {qt.spec}: "
            "quantize the transposed tensor instead"
        )
    codes = pack_fp4(unpack_fp4(qt.data).T) if qt.spec.format.is_fp4 else qt.data.T
    return transposed_with_codes(qt, codes.contiguous())


def dequantize(qt: QuantizedTensor, *, keep_rht: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Values of ``qt`` in ``dtype`` (default: the original dtype) and the original shape.

    Computed in float32 as ``element · block_scale`` (``· tensor_scale`` for NVFP4), then cast.
    If the spec had an RHT, the inverse transform is applied unless ``keep_rht`` — a GEMM whose
    two operands carry the same RHT along its reduction dim multiplies the transformed values.
    """
    dtype = dtype or qt.dtype
    spec = qt.spec
    if spec.is_identity and spec.rht is None:
        return qt.data.to(dtype)
    vals = qt.padded_values()
    if spec.rht is not None and not keep_rht:
        vals = apply_rht(vals, spec.rht, spec.seed, inverse=True)
    rows, cols = matrix_shape(qt.shape)
    vals = vals[:rows, :cols]
    return vals.to(dtype).reshape(qt.shape)
