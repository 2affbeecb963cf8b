"""The emulated FP4 GEMM equals ``fp4train.quant.matmul.quantized_matmul`` up to FP32 summation order
(its products are exact), run on the CPU by Triton's interpreter (see conftest.py)."""

import pytest
import torch

from fp4train.quant.matmul import quantized_matmul
from fp4train.kernels.gemm import _triton_gemm, dequantize_fp4, fp4_matmul, fp4_supported, fp8_supported, mx_fp8_supported
from fp4train.quant import QuantSpec, quantize

SMALL = (32, 32, 64, 4, 4, 1)  # BM, BN, BK, GROUP_M, warps, stages: several programs and K steps

PAIRS = {  # name: (spec of A, spec of B) — the Fprop operands of each recipe
    "nvfp4": (QuantSpec("nvfp4"), QuantSpec("nvfp4", block=(16, 16))),
    "nvfp4_rht_sr": (QuantSpec("nvfp4", rht=16, rounding="sr"), QuantSpec("nvfp4", rht=16)),
    "mxfp4": (QuantSpec("mxfp4"), QuantSpec("mxfp4", scale_rule="ceil")),
}


def operands(m: int, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g) * torch.randn(m, k, generator=g).exp()
    b = torch.randn(n, k, generator=g) * 3
    return a, b


PATHS = {  # fp4_matmul keywords of each Triton path, and the TMA kernel's output subtiles
    "dequant_then_persistent_tma_gemm": (dict(tma=True), 1),
    "dequant_then_persistent_tma_gemm_output_halves": (dict(tma=True), 2),
    "dequant_then_gemm": (dict(tma=False), None),
    "fused": (dict(fused=True), None),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", PAIRS)
def test_fp4_gemm_matches_reference(monkeypatch, name, out_dtype, path):
    """M, N not multiples of the tile (masked edges / clipped TMA stores); 6 output tiles on the
    4 persistent programs of the interpreter, so some programs take two."""
    import fp4train.kernels.gemm as gemm

    kwargs, subtiles = PATHS[path]
    monkeypatch.setattr(gemm, "_output_subtiles", lambda *args: subtiles)
    a, b = operands(48, 80, 192, seed=0)
    sa, sb = PAIRS[name]
    qa, qb = quantize(a, sa), quantize(b, sb)
    out = fp4_matmul(qa, qb, out_dtype, config=SMALL, **kwargs)
    ref = quantized_matmul(qa, qb, out_dtype=torch.float32)
    assert out.shape == ref.shape and out.dtype == out_dtype
    tol = 1e-6 if out_dtype == torch.float32 else 8e-3
    err = (out.float() - ref).norm() / ref.norm()
    assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("n, out_dtype, tma", [(80, torch.bfloat16, True), (36, torch.bfloat16, False), (36, torch.float32, True)])
def test_persistent_tma_gemm_only_where_output_rows_are_16_byte_aligned(monkeypatch, n, out_dtype, tma):
    """TMA needs 16-byte row strides: a bf16 output of 36 columns (72 bytes) goes to the grid kernel."""
    import fp4train.kernels.gemm as gemm

    used = []
    monkeypatch.setattr(gemm, "_tma_gemm", lambda *args: used.append("tma") or gemm._triton_gemm(*args[:-1], fused=False))
    a, b = operands(32, n, 64, seed=5)
    qa, qb = quantize(a, QuantSpec("nvfp4")), quantize(b, QuantSpec("nvfp4"))
    out = fp4_matmul(qa, qb, out_dtype, config=SMALL)
    assert used == (["tma"] if tma else [])
    assert torch.allclose(out.float(), quantized_matmul(qa, qb).to(out_dtype).float(), rtol=1e-2)


def test_tma_is_refused_where_it_cannot_run():
    """``tma=True`` needs dequantized bf16 operands and 16-byte output rows: with ``fused`` (packed
    codes) or a 36-column bf16 output it raises instead of reading the wrong layout."""
    a, b = operands(32, 36, 64, seed=6)
    qa, qb = quantize(a, QuantSpec("nvfp4")), quantize(b, QuantSpec("nvfp4"))
    with pytest.raises(ValueError, match="tma=True"):
        fp4_matmul(qa, qb, config=SMALL, fused=True, tma=True)
    with pytest.raises(ValueError, match="16-byte output rows"):
        fp4_matmul(qa, qb, torch.bfloat16, config=SMALL, tma=True)


def test_fixup_recomputes_exactly_the_tiles_of_flagged_rows():
    """``mx_fp8_matmul``'s second launch: tiles that touch a row of A or of B flagged inexact are
    recomputed (equal to the reference), every other tile is left as it was."""
    a, b = operands(96, 80, 128, seed=5)
    qa, qb = quantize(a, QuantSpec("mxfp4")), quantize(b, QuantSpec("mxfp4"))
    exact_a, exact_b = torch.ones(96, dtype=torch.bool), torch.ones(80, dtype=torch.bool)
    exact_a[40], exact_b[70] = False, False  # row band 32..63 of A, column band 64..79 of B
    out = torch.full((96, 80), -7.0)
    _triton_gemm(qa, qb, qa.data, qb.data, out, SMALL, fused=True, exact=(exact_a, exact_b))
    ref = quantized_matmul(qa, qb)
    redone = torch.zeros(96, 80, dtype=torch.bool)
    redone[32:64], redone[:, 64:] = True, True
    assert (out[~redone] == -7.0).all()
    assert ((out[redone] - ref[redone]).norm() / ref[redone].norm()) < 1e-6


def test_mx_fp8_supported_needs_two_mxfp4_operands_with_16_aligned_rows():
    qa, qb = quantize(torch.randn(32, 64), QuantSpec("mxfp4")), quantize(torch.randn(48, 64), QuantSpec("mxfp4"))
    assert mx_fp8_supported(qa, qb)
    assert not mx_fp8_supported(quantize(torch.randn(40, 64), QuantSpec("mxfp4")), qb)
    assert not mx_fp8_supported(quantize(torch.randn(32, 64), QuantSpec("nvfp4")), qb)


@pytest.mark.parametrize("name", PAIRS)
def test_dequantize_is_exact_in_bf16(name):
    """``element · block_scale`` in bf16 equals the reference's float32 values bit for bit."""
    a, _ = operands(48, 16, 192, seed=2)
    qa = quantize(a, PAIRS[name][0])
    assert torch.equal(dequantize_fp4(qa).float(), qa.padded_values(with_tensor_scale=False))


def test_fp4_gemm_propagates_nan_scales():
    a, b = operands(32, 32, 64, seed=1)
    a[3, 5] = float("nan")
    qa, qb = quantize(a, QuantSpec("mxfp4")), quantize(b, QuantSpec("mxfp4"))
    out = fp4_matmul(qa, qb, config=SMALL)
    assert torch.equal(out.isnan(), quantized_matmul(qa, qb).isnan()) and out[3].isnan().all()


def test_unsupported_operands_are_refused():
    a = quantize(torch.randn(16, 64), QuantSpec("nvfp4"))
    f8 = quantize(torch.randn(16, 64), QuantSpec("fp8_e5m2"))
    assert not fp4_supported(a, f8) and not fp8_supported(f8, f8)
    with pytest.raises(ValueError, match="fp8_e5m2"):
        fp4_matmul(a, f8)


def test_tma_output_tile_is_stored_in_halves_where_whole_does_not_fit(monkeypatch):
    """On a Hopper GPU (227 KiB of shared memory) ``TMA_CONFIG``'s 3 stages of operand tiles
    leave room for a whole bf16 output tile (64 KiB), not an FP32 one (128 KiB), which is then
    stored in halves; with room for not even the halves the grid kernel runs."""
    import fp4train.kernels.gemm as gemm

    dev = torch.device("cuda", 0)
    monkeypatch.setattr(gemm, "interpreting", lambda: False)
    monkeypatch.setattr(gemm, "device_limits", lambda device: (132, 232448))
    assert gemm._output_subtiles(gemm.TMA_CONFIG, torch.bfloat16, dev) == 1
    assert gemm._output_subtiles(gemm.TMA_CONFIG, torch.float32, dev) == 2
    monkeypatch.setattr(gemm, "device_limits", lambda device: (132, 101376))
    assert gemm._output_subtiles(gemm.TMA_CONFIG, torch.float32, dev) is None


def test_an_operand_quantized_from_a_transposed_view_by_the_reference():
    """Dgrad's ``quantize(Wᵀ)`` of a 32×32-block MX weight runs the reference code (no kernel for
    those blocks) on a transposed view; the GEMM must read its codes in their real layout."""
    a, w = operands(48, 64, 96, seed=4)  # w: (64, 96); B = wᵀ (N = 96, K = 64)
    a = a[:, :64].contiguous()  # A: (48, 64)
    qa, qb = quantize(a, QuantSpec("mxfp4")), quantize(w.T, QuantSpec("mxfp4", block=(32, 32)))
    out = fp4_matmul(qa, qb, torch.float32, config=SMALL, tma=False)
    ref = quantized_matmul(qa, qb, out_dtype=torch.float32)
    assert (out - ref).norm() / ref.norm() < 1e-6
