"""The public quantization entry points: ``quantize``, ``quantize_pair``, ``dequantize``, ``fake_quantize``.

Every part of fp4train (the linear layer, the kernels' tests, the metrics) goes through
these, so a change to how a format rounds is made once, in ``formats.py``/``blocks.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
from .formats import (
    E4M3,
    decode,
    e8m0_decode,
    encode,
    pack_fp4,
    random_bits,
    round_to_grid,
    unpack_fp4,
)
from .hadamard import apply_rht
from .spec import QuantSpec
from .streams import SRStream

__all__ = ["QuantizedTensor", "quantize", "quantize_pair", "transposes_exactly", "transpose", "dequantize", "fake_quantize"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


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


def _matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """(rows, last dim) of the matrix view that blocks tile: leading dims flattened."""
    return (shape[:-1].numel(), shape[-1])


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
    ``torch.Generator``; an ``SRStream`` (its step's generator, or on the GPU its in-kernel
    stream); or ``None``, torch's default generator of ``x``'s device, so that successive calls
    draw fresh bits (``torch.manual_seed`` makes them reproducible), as ``torch.rand`` does.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"quantize expects a floating-point tensor ({_FLOAT_DTYPES}), got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0:
        raise ValueError("quantize needs at least one dimension (blocks run along the last one)")
    if x.is_cuda:  # --- GPU dispatch (fp4train.kernels): the fused kernel, same result ---
        from fp4train.kernels.dispatch import quantize_on_gpu

        qt = quantize_on_gpu(x, spec, generator, rand_bits)
        if qt is not None:
            return qt  # --- end of GPU dispatch ---
    shape, dtype = x.shape, x.dtype
    if spec.is_identity and spec.rht is None:
        return QuantizedTensor(spec, shape, dtype, x, None, None, _matrix_shape(shape))

    fmt = spec.format
    block = spec.block_shape
    m = x.reshape(_matrix_shape(shape)).to(torch.float32)
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


def quantize_pair(
    x: torch.Tensor,
    row_spec: QuantSpec,
    col_spec: QuantSpec,
    *,
    row_generator: torch.Generator | SRStream | None = None,
    col_generator: torch.Generator | SRStream | None = None,
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """``(quantize(x, row_spec), quantize(x_mat.T, col_spec))`` with ``x_mat`` = ``x`` with its
    leading dims flattened: the two copies of one operand that a linear layer's GEMMs take
    (``x``: Fprop and Wgrad; ``dy``: Dgrad and Wgrad), each with its own SR generator.

    Always equal to the two calls. On the GPU, when the fused kernel handles both specs, one
    amax pass serves both and one launch writes both (two for NVFP4's SR + RHT pair:
    ``fp4train.kernels.quantize.quantize_fp4_pair``).
    """
    if x.is_cuda:  # --- GPU dispatch (fp4train.kernels): both orientations from one read ---
        from fp4train.kernels.dispatch import quantize_pair_on_gpu

        pair = quantize_pair_on_gpu(x, row_spec, col_spec, row_generator, col_generator)
        if pair is not None:
            return pair  # --- end of GPU dispatch ---
    x_mat = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x
    return quantize(x, row_spec, generator=row_generator), quantize(x_mat.T, col_spec, generator=col_generator)


def transposes_exactly(spec: QuantSpec) -> bool:
    """Whether ``quantize(x_mat.T, spec)`` is ``quantize(x, spec)`` transposed, for every ``x``:
    square blocks or one scale per tensor (a block of ``x_mat.T`` is a block of ``x_mat``
    transposed, with the same amax and scale), round to nearest (SR draws its bits in the
    other order) and no RHT (it mixes along the other dimension)."""
    if spec.is_identity or spec.rht is not None or spec.rounding != "rn":
        return False
    block = spec.block_shape
    return block is None or block[0] == block[1]


def transpose(qt: QuantizedTensor) -> QuantizedTensor:
    """``quantize(x_mat.T, qt.spec)`` from ``qt = quantize(x, qt.spec)`` without ``x``, bit for bit
    (``x_mat``: ``x`` with its leading dims flattened): the codes and block scales transposed,
    the tensor scale shared. Needs ``transposes_exactly(qt.spec)``, e.g. NVFP4's 16×16 weight
    blocks, whose Dgrad copy is then the Fprop copy transposed. On the GPU, FP4 codes are
    transposed by one kernel (``fp4train.kernels.transpose``)."""
    if not transposes_exactly(qt.spec):
        raise ValueError(
            f"transpose needs square blocks (or one scale per tensor), rounding 'rn' and no RHT; got {qt.spec}: "
            "quantize the transposed tensor instead"
        )
    rows, cols = _matrix_shape(qt.shape)
    shape = torch.Size((cols, rows))
    scales = qt.scales if qt.spec.block_shape is None else qt.scales.T.contiguous()
    padded = (qt.padded[1], qt.padded[0])
    if not qt.spec.format.is_fp4:
        codes = qt.data.T.contiguous()
    elif qt.data.is_cuda:  # --- GPU dispatch (fp4train.kernels): one pass over the packed codes ---
        from fp4train.kernels.transpose import transpose_fp4_codes

        codes = transpose_fp4_codes(qt.data)  # --- end of GPU dispatch ---
    else:
        codes = pack_fp4(unpack_fp4(qt.data).T).contiguous()
    return QuantizedTensor(qt.spec, shape, qt.dtype, codes, scales, qt.tensor_scale, padded)


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
    rows, cols = _matrix_shape(qt.shape)
    vals = vals[:rows, :cols]
    return vals.to(dtype).reshape(qt.shape)


def fake_quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    generator: torch.Generator | SRStream | None = None,
    rand_bits: torch.Tensor | None = None,
    keep_rht: bool = False,
) -> torch.Tensor:
    """``dequantize(quantize(x, spec))``: ``x`` rounded onto the format, same shape and dtype."""
    qt = quantize(x, spec, generator=generator, rand_bits=rand_bits)
    return dequantize(qt, keep_rht=keep_rht)
