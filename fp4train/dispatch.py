"""The quantized ops, each running a GPU kernel or the plain-torch reference: ``quantize``,
``quantize_pair``, ``transpose``, ``fake_quantize`` and ``quantized_matmul``.

The layers, bottom up (torchao's ``mx_formats`` is the model):

* ``fp4train.quant``: the ``QuantizedTensor`` type and the reference math (``quant.reference``:
  the quantizers; ``quant.matmul``: the exact GEMM), in torch on any device. It imports nothing
  of the layers above.
* ``fp4train.kernels``: the Triton kernels, each equal to a reference function; they import
  ``quant`` and each other's public names only.
* this module, the one place that chooses: a CUDA tensor whose spec a kernel handles goes to the
  kernel (``*_on_gpu``, which return ``None`` otherwise), everything else — CPU tensors, specs or
  shapes without a kernel — to the reference. The kernels are imported on the first CUDA call,
  so a CPU-only install without Triton imports fp4train.

Results are the reference's: bit for bit for the quantizers (with explicit random bits; SR
without them draws in-kernel Philox bits, the same rule and distribution from another random
stream), up to FP32 summation order for the GEMMs (``fp4train.kernels.gemm``).
``fp4train.quant`` hands out ``quantize``, ``quantize_pair``, ``transpose`` and ``fake_quantize``
from here, so user code imports them from there.
"""

from __future__ import annotations

import torch

from fp4train.quant import matmul, reference
from fp4train.quant.spec import QuantSpec
from fp4train.quant.streams import SRStream
from fp4train.quant.tensor import QuantizedTensor

__all__ = [
    "quantize",
    "quantize_pair",
    "transpose",
    "fake_quantize",
    "quantized_matmul",
    "quantize_on_gpu",
    "quantize_pair_on_gpu",
    "matmul_on_gpu",
    "philox_seed",
]

_GOLDEN = 0x9E3779B97F4A7C15


# ----------------------------------------------------------------------------- the ops


def quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    generator: torch.Generator | SRStream | None = None,
    rand_bits: torch.Tensor | None = None,
) -> QuantizedTensor:
    """``reference.quantize(x, spec, generator=..., rand_bits=...)``: blocks along the last dim of
    ``x`` (leading dims flattened to rows); SR bits from ``rand_bits``, else from ``generator``
    (a ``torch.Generator``, an ``SRStream``, or ``None``: torch's default generator of ``x``'s
    device). A CUDA ``x`` whose spec the fused kernels handle is quantized by them
    (``quantize_on_gpu``); on the GPU an ``SRStream`` is drawn from in the kernel."""
    reference.check_quantize_input(x, spec)
    if x.is_cuda:
        qt = quantize_on_gpu(x, spec, generator, rand_bits)
        if qt is not None:
            return qt
    return reference.quantize(x, spec, generator=generator, rand_bits=rand_bits)


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
    if x.is_cuda:
        pair = quantize_pair_on_gpu(x, row_spec, col_spec, row_generator, col_generator)
        if pair is not None:
            return pair
    x_mat = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x
    return quantize(x, row_spec, generator=row_generator), quantize(x_mat.T, col_spec, generator=col_generator)


def transpose(qt: QuantizedTensor) -> QuantizedTensor:
    """``reference.transpose(qt)``: ``quantize(x_mat.T, qt.spec)`` from ``qt = quantize(x,
    qt.spec)``, bit for bit, where ``reference.transposes_exactly(qt.spec)``. On the GPU, FP4
    codes are transposed by one kernel (``fp4train.kernels.transpose``)."""
    if qt.data.is_cuda and reference.transposes_exactly(qt.spec) and qt.spec.format.is_fp4:
        from fp4train.kernels.transpose import transpose_fp4_codes

        return reference.transposed_with_codes(qt, transpose_fp4_codes(qt.data))
    return reference.transpose(qt)


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
    return reference.dequantize(qt, keep_rht=keep_rht)


def quantized_matmul(
    a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.float32, mx_fp8: bool = False
) -> torch.Tensor:
    """``matmul.quantized_matmul(a, b, out_dtype)``: ``A Bᵀ`` for ``A`` (M, K) and ``B`` (N, K),
    cropped to the unpadded (M, N), exact products and FP32 accumulation; on CUDA operands by
    the GPU GEMMs (``matmul_on_gpu``). ``mx_fp8``: on a GPU, multiply two MXFP4 operands on the
    FP8 tensor cores where that is exact for the operands (``fp4train.kernels.gemm.mx_fp8_matmul``;
    FP8 MMA accumulation); no effect on the CPU."""
    matmul.check_operands(a, b)
    if a.data.is_cuda:
        out = matmul_on_gpu(a, b, out_dtype, mx_fp8)
        if out is not None:
            return out
    return matmul.quantized_matmul(a, b, out_dtype)


# ----------------------------------------------------------------------------- GPU routing


def philox_seed(
    spec: QuantSpec, generator: torch.Generator | SRStream | None, device: torch.device
) -> tuple[int, torch.Tensor | None]:
    """The in-kernel Philox key and counter word for SR without explicit bits: an ``SRStream``'s
    key and device counter; else a key derived from the generator's state (``None``: torch's
    default generator of ``device``, as in the reference), which then advances, so later calls
    draw other bits. A CUDA generator is read through its seed and Philox offset, without a
    device synchronisation, but on the host: inside a CUDA graph capture that read (of any
    generator) would replay one draw forever, so it is refused there. The counter is ``None`` (0) but for an
    ``SRStream``."""
    if isinstance(generator, SRStream):
        return generator.key, generator.counter
    if generator is None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        generator = torch.cuda.default_generators[index]
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"stochastic rounding ({spec.fmt}) from a torch.Generator inside a CUDA graph capture: the "
            "graph would replay the captured draw at every step; pass an SRStream (a device counter "
            "the kernel reads when it runs, fp4train.quant.streams) as the generator"
        )
    if generator.device.type == "cpu":
        return int(torch.randint(0, 2**62, (1,), generator=generator)), None
    offset = generator.get_offset()
    generator.set_offset(offset + 4)
    return (generator.initial_seed() + offset * _GOLDEN) % 2**62, None


def quantize_on_gpu(
    x: torch.Tensor,
    spec: QuantSpec,
    generator: torch.Generator | SRStream | None = None,
    rand_bits: torch.Tensor | None = None,
) -> QuantizedTensor | None:
    """``quantize(x, spec, ...)`` by the fused kernels for a CUDA ``x`` and a supported spec (FP4
    blocks: ``quantize_fp4``; per-tensor FP8: ``quantize_fp8``): bit for bit the reference with
    ``rand_bits``; with SR and no bits, in-kernel Philox bits (the same rule and distribution as
    the reference, another random stream). A transposed view ``y.T`` of a contiguous ``y`` is
    quantized as ``y``'s column-wise orientation, without a transposed copy. ``None`` when no
    kernel handles the call."""
    if not x.is_cuda:
        return None
    from fp4train.kernels.fp8 import fp8_quantize_supported, quantize_fp8
    from fp4train.kernels.quantize import quantize_fp4, quantize_fp4_pair, supports

    transposed = x.dim() == 2 and x.stride(0) == 1 and x.stride(1) != 1  # x = y.T of a contiguous y
    if rand_bits is None and fp8_quantize_supported(x, spec):  # column-wise of y is row-wise of x
        return quantize_fp8(x.T, None, spec)[1] if transposed else quantize_fp8(x, spec, None)[0]
    if not supports(x, spec):
        return None
    if rand_bits is not None:
        m, k = x.shape[:-1].numel(), x.shape[-1]
        if tuple(rand_bits.shape) != (m, k):
            return None  # the reference raises the error that names the expected shape
        rand_bits = rand_bits.to(device=x.device, dtype=torch.int32)
    seed, counter = philox_seed(spec, generator, x.device) if spec.rounding == "sr" and rand_bits is None else (None, None)
    if transposed:
        return quantize_fp4_pair(x.T, None, spec, col_rand=rand_bits, col_seed=seed, col_counter=counter)[1]
    return quantize_fp4(x, spec, rand_bits=rand_bits, seed=seed, counter=counter)


def quantize_pair_on_gpu(
    x: torch.Tensor,
    row_spec: QuantSpec,
    col_spec: QuantSpec,
    row_generator: torch.Generator | SRStream | None,
    col_generator: torch.Generator | SRStream | None,
) -> tuple[QuantizedTensor, QuantizedTensor] | None:
    """``quantize_pair`` by the fused kernel (``quantize_fp4_pair``: one amax pass, then one launch
    writing both orientations, or one per orientation for NVFP4's SR + RHT pair), when it handles
    both specs; each SR orientation draws in-kernel Philox bits from its own generator
    (``philox_seed``); per-tensor FP8 by ``quantize_fp8``. ``None`` otherwise: the caller then
    quantizes twice."""
    if not x.is_cuda:
        return None
    from fp4train.kernels.fp8 import fp8_quantize_supported, quantize_fp8
    from fp4train.kernels.quantize import pairable, quantize_fp4_pair, supports

    if fp8_quantize_supported(x, row_spec) and fp8_quantize_supported(x, col_spec):
        return quantize_fp8(x, row_spec, col_spec)
    if not (supports(x, row_spec) and supports(x, col_spec, colwise=True) and pairable(row_spec, col_spec)):
        return None
    row_seed, row_counter = philox_seed(row_spec, row_generator, x.device) if row_spec.rounding == "sr" else (None, None)
    col_seed, col_counter = philox_seed(col_spec, col_generator, x.device) if col_spec.rounding == "sr" else (None, None)
    return quantize_fp4_pair(
        x, row_spec, col_spec, seed=row_seed, col_seed=col_seed, counter=row_counter, col_counter=col_counter
    )


def matmul_on_gpu(
    a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype, mx_fp8: bool = False
) -> torch.Tensor | None:
    """``quantized_matmul(a, b, out_dtype)`` on CUDA operands: FP4 × FP4 by the emulated Triton
    GEMM (MXFP4 × MXFP4 on the FP8 tensor cores first when ``mx_fp8`` and exact there), per-tensor
    FP8 by ``torch._scaled_mm``; ``None`` for anything else."""
    if not (a.data.is_cuda and b.data.is_cuda):
        return None
    from fp4train.kernels.gemm import fp4_matmul, fp4_supported, fp8_matmul, fp8_supported, mx_fp8_matmul, mx_fp8_supported

    if mx_fp8 and mx_fp8_supported(a, b):
        out = mx_fp8_matmul(a, b, out_dtype)
        if out is not None:
            return out
    if fp4_supported(a, b):
        return fp4_matmul(a, b, out_dtype)
    if fp8_supported(a, b):
        return fp8_matmul(a, b, out_dtype)
    return None
