"""GPU check and benchmark of fp4train's kernels, in one command (a few minutes on one GPU):

    PYTHONUNBUFFERED=1 python -m experiments.bench.run --out results/

1. warms Triton's and Inductor's caches in parallel worker processes (compiles dominate);
2. checks on the GPU, against the CPU reference: the quantizers bit for bit (codes, scales,
   tensor scale; RHT on exactly summable inputs), the FP4/FP8 GEMMs by relative error; and
   training steps replayed from CUDA graphs against eager ones, bit for bit;
3. times (median of ``triton.testing.do_bench``) the device copy bandwidth, each quantizer
   variant (and the reference ``quantize`` eager and under ``torch.compile``), the GEMMs at
   M×N×K = 8192×4096×4096 against bf16, a ``QuantLinear`` fwd+bwd against ``nn.Linear``, and
   torchao's NVFP4/MXFP4 casts beside ours (``peers.py``) where torchao is installed;
4. writes ``bench.json``, ``bench.md`` (Markdown tables) and ``bench.png`` (``plot.py``) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

import fp4train.dispatch as dispatch
from fp4train.kernels.gemm import DEFAULT_CONFIG, FUSED_CONFIG, TMA_CONFIG, _rowwise_out_dtypes, dequantize_fp4, fp4_matmul, fp8_matmul, mx_fp8_matmul
from fp4train.kernels.mx_fp8 import mx_to_e4m3, mx_to_e4m3_reference
from fp4train.kernels.fp8 import quantize_fp8
from fp4train.kernels.quantize import quantize_fp4_pair
from fp4train.quant import QuantizedTensor, QuantSpec, quantize, transpose
from fp4train.quant.matmul import quantized_matmul
from fp4train.recipes import RecipeConfig, build_recipe

from .peers import agreement, torchao_quantizers
from .plot import plot_bench

T0 = time.time()
M, K, N = 8192, 4096, 4096  # tokens, in features, out features
NV = QuantSpec("nvfp4")
NV_SR = QuantSpec("nvfp4", rounding="sr")
NV_2D = QuantSpec("nvfp4", block=(16, 16))
NV_RHT = QuantSpec("nvfp4", rht=16)
NV_SR_RHT = QuantSpec("nvfp4", rht=16, rounding="sr")
MX = QuantSpec("mxfp4")
MX_CEIL_SR = QuantSpec("mxfp4", scale_rule="ceil", rounding="sr")
E4, E5 = QuantSpec("fp8_e4m3"), QuantSpec("fp8_e5m2")
QUANT_VARIANTS = {  # name: (row spec, column spec)
    "nvfp4 row rn (x fprop)": (NV, None),
    "nvfp4 row sr (dy dgrad)": (NV_SR, None),
    "nvfp4 16x16 row rn (W)": (NV_2D, None),
    "nvfp4 col rn rht16 (x wgrad)": (None, NV_RHT),
    "nvfp4 row rn + col rn rht16 (x both)": (NV, NV_RHT),
    "nvfp4 row sr + col sr rht16 (dy both)": (NV_SR, NV_SR_RHT),
    "nvfp4 16x16 row + col (W both)": (NV_2D, NV_2D),
    "mxfp4 floor row rn": (MX, None),
    "mxfp4 ceil row sr": (MX_CEIL_SR, None),
    "mxfp4 floor col rn": (None, MX),
    "mxfp4 floor row rn + col rn (x, dy both)": (MX, MX),
    "mxfp4 ceil row sr + col sr (TetraJet dy)": (MX_CEIL_SR, MX_CEIL_SR),
    "fp8_e4m3 row (W fprop)": (E4, None),
    "fp8_e4m3 row + col (x both)": (E4, E4),
    "fp8_e5m2 row + col (dy both)": (E5, E5),
}
GEMM_CONFIGS = [DEFAULT_CONFIG, (128, 256, 64, 8, 8, 3), (256, 128, 64, 8, 8, 4)]
TMA_CONFIGS = [TMA_CONFIG, (256, 128, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4), (128, 256, 64, 4, 8, 3)]  # (128, 256, 64, 8, 8, 4) ran out of shared memory before output halves
COMPILED_REFERENCES = {"nvfp4 row rn (x fprop)": NV}  # mxfp4 compiled: ~0.7 ms on an H100 (2026-11-23, NOTES.md), 100 s to compile


def quantize_variant(x: torch.Tensor, row: QuantSpec | None, col: QuantSpec | None, **kw):
    """The fused quantizer of a variant: ``quantize_fp8`` (per-tensor FP8) or ``quantize_fp4_pair``."""
    if (row or col).fmt in ("fp8_e4m3", "fp8_e5m2"):
        return quantize_fp8(x, row, col, **kw)
    return quantize_fp4_pair(x, row, col, **kw)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def ms(fn) -> float:
    """Median eager wall time per call (ms), launch overheads included."""
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def gpu_ms(fn) -> float:
    """Median GPU time per call (ms): CUDA-graph replays, no Python or launch overhead."""
    fn()
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


@contextlib.contextmanager
def reference_mode():
    """Switch the GPU dispatch of ``fp4train.quant.quantize`` off: the torch reference on the GPU."""
    saved = dispatch.quantize_on_gpu
    dispatch.quantize_on_gpu = lambda *a, **k: None
    try:
        yield
    finally:
        dispatch.quantize_on_gpu = saved


# ----------------------------------------------------------------------------- inputs


def heavy_tailed(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Heavy-tailed values with E2M1 ties, subnormal E4M3 scales and float32-subnormal rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.randn(rows, cols, generator=g).mul(2).exp()
    x[0] = 0
    x[1, :64] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 8)  # E2M1 ties
    x[2, :32] = 6 * 2.0**-8 * torch.linspace(-1, 1, 32)  # subnormal E4M3 scales
    x[5, :32] = torch.randn(32, generator=g) * 1e-38
    x[6, :32] = torch.randn(32, generator=g) * 1e-42  # float32 subnormals
    return x


def extremes(rows: int, cols: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    x[3, :32], x[4, :32] = 1e-30, 1e30
    return x


def tiny(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A whole tensor near the bottom of float32: NVFP4's s_dec and sb·s_dec are subnormal."""
    return heavy_tailed(rows, cols, seed) * 1e-37


def nonfinite(rows: int, cols: int, seed: int) -> torch.Tensor:
    x = heavy_tailed(rows, cols, seed)
    x[7, 3], x[8, 40], x[9, 0] = float("nan"), float("inf"), -float("inf")
    return x


def exactly_summable(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Multiples of 1/8 below 16: RHT sums are exact in any order."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (rows, cols), generator=g).float() / 8


def exactly_summable_tiny(rows: int, cols: int, seed: int) -> torch.Tensor:
    return exactly_summable(rows, cols, seed) * 2.0**-130  # float32 subnormals: fixed point, exact


INPUTS = {"heavy": heavy_tailed, "extremes": extremes, "tiny": tiny, "nonfinite": nonfinite}
RHT_INPUTS = {"exact": exactly_summable, "exact_subnormal": exactly_summable_tiny}


# ----------------------------------------------------------------------------- 1. warm-up


def _warm(job: tuple[str, str]) -> str:
    kind, name = job
    t = time.time()
    torch.manual_seed(0)
    if kind == "quant":
        row, col = QUANT_VARIANTS[name]
        x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
        quantize_variant(x, row, col)
        if row is not None and row.rounding == "sr" or col is not None and col.rounding == "sr":
            quantize_fp4_pair(
                x, row, col,
                row_rand=torch.zeros(256, 512, dtype=torch.int32, device="cuda") if row is not None and row.rounding == "sr" else None,
                col_rand=torch.zeros(512, 256, dtype=torch.int32, device="cuda") if col is not None and col.rounding == "sr" else None,
            )
        quantize_variant(x.float(), row, col)
    elif kind in ("gemm", "tma"):  # cublas=False: this small output would go to cuBLAS
        cfg = (GEMM_CONFIGS if kind == "gemm" else TMA_CONFIGS)[int(name)]
        for sa, sb in ((NV, NV_2D), (MX, MX)):
            a = quantize(torch.randn(256, 512, device="cuda"), sa)
            b = quantize(torch.randn(256, 512, device="cuda"), sb)
            fp4_matmul(a, b, torch.bfloat16, config=cfg, cublas=False, tma=kind == "tma")
            if kind == "gemm" and name == "0":
                fp4_matmul(a, b, torch.bfloat16, fused=True)
    elif kind == "linear":
        from fp4train.linear import QuantLinear

        layer = QuantLinear(512, 256, bias=False, recipe=name, device="cuda")
        x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        layer(x).backward(torch.randn(256, 256, device="cuda", dtype=torch.bfloat16))
    elif kind == "compile":
        spec = COMPILED_REFERENCES[name]
        with reference_mode():
            torch.compile(lambda v: quantize(v, spec))(torch.randn(M, K, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()
    return f"{kind} {name}: {time.time() - t:.1f}s"


def warm_caches(workers: int) -> None:
    jobs = [("quant", n) for n in QUANT_VARIANTS] + [("gemm", str(i)) for i in range(len(GEMM_CONFIGS))]
    jobs += [("tma", str(i)) for i in range(len(TMA_CONFIGS))]
    jobs += [("linear", "nvfp4"), ("linear", "mxfp4"), ("linear", "fp8")] + [("compile", n) for n in COMPILED_REFERENCES]
    with mp.get_context("spawn").Pool(workers) as pool:
        for msg in pool.imap_unordered(_warm, jobs):
            log(f"warm {msg}")


# ----------------------------------------------------------------------------- 2. checks


def same(k, r) -> bool:
    """Equal codes and scales; NaN scales match NaN scales, and per-tensor FP8 compares the codes
    of finite values only (a NaN's code may carry either sign)."""
    def equal_or_nan(a, b):
        return torch.equal(a, b) or bool(a.isnan().all() and b.isnan().all())

    ts = (k.tensor_scale is None and r.tensor_scale is None) or equal_or_nan(k.tensor_scale.cpu(), r.tensor_scale)
    if r.spec.fmt in ("fp8_e4m3", "fp8_e5m2"):
        finite = r.element_values().isfinite()
        return torch.equal(k.data.cpu()[finite], r.data[finite]) and equal_or_nan(k.scales.cpu(), r.scales)
    return torch.equal(k.data.cpu(), r.data) and torch.equal(k.scales.cpu(), r.scales) and ts


def check_quantizers() -> dict:
    results = {}
    for name, (row, col) in QUANT_VARIANTS.items():
        rht = (row.rht if row else None) or (col.rht if col else None)
        for data, make in (RHT_INPUTS if rht else INPUTS).items():
            for dtype in (torch.bfloat16, torch.float32):
                x = make(512, 1024, seed=1).to(dtype)
                g = torch.Generator().manual_seed(2)
                rb = torch.randint(0, 2**16, (512, 1024), generator=g, dtype=torch.int32) if row and row.rounding == "sr" else None
                cb = torch.randint(0, 2**16, (1024, 512), generator=g, dtype=torch.int32) if col and col.rounding == "sr" else None
                rand = {name: bits.cuda() for name, bits in (("row_rand", rb), ("col_rand", cb)) if bits is not None}
                kr, kc = quantize_variant(x.cuda(), row, col, **rand)
                ok = True
                if row is not None:
                    ok &= same(kr, quantize(x, row, rand_bits=rb))
                if col is not None:
                    ok &= same(kc, quantize(x.T.contiguous(), col, rand_bits=cb))
                results[f"{name} {data} {str(dtype)[6:]}"] = ok
    # RHT on arbitrary floats: the summation order may move a code by one step
    x = heavy_tailed(512, 1024, seed=3)
    x = torch.where(x.isfinite(), x, 0)
    k, _ = quantize_fp4_pair(x.cuda(), NV_RHT, None)
    results["rht16 on arbitrary float32: fraction of codes differing"] = (k.data.cpu() != quantize(x, NV_RHT).data).float().mean().item()
    # the public entry point dispatches CUDA tensors to the kernels, transposed views included
    x = heavy_tailed(256, 512, seed=4)
    results["quantize() dispatch, contiguous"] = same(quantize(x.cuda(), NV), quantize(x, NV))
    results["quantize() dispatch, transposed view"] = same(quantize(x.cuda().T, MX), quantize(x.T.contiguous(), MX))
    results["quantize() dispatch, fp8 transposed view"] = same(quantize(x.cuda().T, E4), quantize(x.T.contiguous(), E4))
    # Dgrad's weight copy: Fprop's transposed (the packed-code transpose kernel for FP4)
    for data, make in INPUTS.items():
        w = make(512, 1024, seed=5)
        for spec in (NV_2D, E4):
            results[f"transpose() of {spec.fmt} {spec.block_shape} {data}"] = same(transpose(quantize(w.cuda(), spec)), quantize(w.T.contiguous(), spec))
    return results


def on_gpu(qt: QuantizedTensor) -> QuantizedTensor:
    """``qt`` with its codes and scales copied to the GPU."""
    ts = None if qt.tensor_scale is None else qt.tensor_scale.cuda()
    return dataclasses.replace(qt, data=qt.data.cuda(), scales=qt.scales.cuda(), tensor_scale=ts)


def _mx_fp8_or_nan(qa, qb) -> torch.Tensor:
    out = mx_fp8_matmul(qa, qb, torch.float32)
    return torch.full((qa.padded[0], qb.padded[0]), float("nan"), device="cuda") if out is None else out.float()


def check_gemms() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1024, 2048, generator=g) * torch.randn(1024, 2048, generator=g).exp()
    b = torch.randn(768, 2048, generator=g)
    out = {}
    # fp4_matmul's default sends this small output (fewer tiles than SMs) to cuBLAS: each Triton
    # path is forced here, with both output dtypes (the TMA kernel stores FP32 tiles in halves)
    tma, grid = dict(cublas=False, tma=True), dict(cublas=False, tma=False)
    for name, (sa, sb, fn) in {
        "nvfp4 x nvfp4-16x16 (default path)": (NV, NV_2D, fp4_matmul),
        "nvfp4 x nvfp4-16x16 (Triton TMA)": (NV, NV_2D, lambda qa, qb: fp4_matmul(qa, qb, **tma)),
        "nvfp4 x nvfp4-16x16 (Triton TMA, bf16 out)": (NV, NV_2D, lambda qa, qb: fp4_matmul(qa, qb, torch.bfloat16, **tma).float()),
        "nvfp4 x nvfp4-16x16 (Triton grid)": (NV, NV_2D, lambda qa, qb: fp4_matmul(qa, qb, **grid)),
        "mxfp4 x mxfp4 (default path)": (MX, MX, fp4_matmul),
        "mxfp4 x mxfp4 (Triton TMA)": (MX, MX, lambda qa, qb: fp4_matmul(qa, qb, **tma)),
        "nvfp4 x nvfp4-16x16 (Triton fused)": (NV, NV_2D, lambda qa, qb: fp4_matmul(qa, qb, fused=True)),
        "nvfp4 rht16 sr x rht16 (Triton TMA)": (NV_SR_RHT, NV_RHT, lambda qa, qb: fp4_matmul(qa, qb, **tma)),
        "fp8_e4m3 x fp8_e4m3 (_scaled_mm)": (QuantSpec("fp8_e4m3"), QuantSpec("fp8_e4m3"), fp8_matmul),
        "fp8_e5m2 x fp8_e4m3 (_scaled_mm)": (QuantSpec("fp8_e5m2"), QuantSpec("fp8_e4m3"), fp8_matmul),
        "mxfp4 x mxfp4 (FP8 tensor cores, fp32 out; NaN: not supported)": (MX, MX, _mx_fp8_or_nan),
    }.items():
        qa, qb = quantize(a, sa), quantize(b, sb)
        ref = quantized_matmul(qa, qb)  # CPU reference
        qa_gpu, qb_gpu = on_gpu(qa), on_gpu(qb)
        res = fn(qa_gpu, qb_gpu).cpu()
        if "bf16 out" in name:  # against the reference rounded once to bf16, as the kernel's epilogue does
            ref = ref.bfloat16().float()
        out[name] = ((res - ref).norm() / ref.norm()).item()
        if sa.fmt in ("nvfp4", "mxfp4"):
            exact = torch.equal(dequantize_fp4(qa_gpu).float().cpu(), qa.padded_values(with_tensor_scale=False))
            out[f"dequantize_fp4 exact ({sa.fmt}): 0 = yes"] = float(not exact)
        if sa.fmt == "mxfp4" and sb.fmt == "mxfp4":  # both MXFP4 paths against float64 products and sums
            exact64 = (qa.padded_values().double() @ qb.padded_values().double().T)
            for path, res in (("bf16 tensor cores", fp4_matmul(qa_gpu, qb_gpu)),
                              ("FP8 tensor cores", mx_fp8_matmul(qa_gpu, qb_gpu, torch.float32)),
                              ("FP8 tensor cores, bf16 out", mx_fp8_matmul(qa_gpu, qb_gpu, torch.bfloat16)),
                              ("bf16 tensor cores, bf16 out", fp4_matmul(qa_gpu, qb_gpu, torch.bfloat16))):
                if res is not None:
                    err = (res.double().cpu() - exact64).abs()
                    out[f"mxfp4 x mxfp4 {path} vs float64: max abs err / max |C|"] = (err.max() / exact64.abs().max()).item()
            ours, ref = mx_to_e4m3(qa_gpu), mx_to_e4m3_reference(qa)
            out["mx_to_e4m3 GPU == CPU reference: 0 = yes"] = float(not all(torch.equal(o.cpu(), r) for o, r in zip(ours, ref)))
    for name, rows_wide in (("all rows", slice(None)), ("one row", slice(5, 6))):
        x = torch.randn(256, 1024, generator=g)
        x[rows_wide, 512:] *= 2.0**-20  # rows whose blocks span 20 binades: recomputed by the fixup launch
        qw = quantize(x, MX)
        qw_gpu = on_gpu(qw)
        ref = quantized_matmul(qw, qw)
        res = mx_fp8_matmul(qw_gpu, qw_gpu, torch.float32).cpu()
        out[f"mx_fp8_matmul, 20-binade rows ({name}), fp32 out: rel. error"] = ((res - ref).norm() / ref.norm()).item()
    out["row-wise _scaled_mm writes float32: 1 = yes"] = float(torch.float32 in _rowwise_out_dtypes(torch.device("cuda")))
    # Dgrad's Wᵀ quantized by the reference code on the GPU (32×32 MX blocks have no kernel) from
    # a transposed view: the GEMM reads its codes in their real layout (a bug fixed 2026-11-30, NOTES.md)
    from fp4train.linear import QuantLinear

    recipe = build_recipe(RecipeConfig(name="mxfp4", weight_2d=True, double_quant=True))
    x, dy = torch.randn(256, 512, generator=g), torch.randn(256, 384, generator=g)
    grads = []
    for dev in ("cpu", "cuda"):
        layer = QuantLinear(512, 384, bias=False, recipe=recipe, device=dev)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(384, 512, generator=torch.Generator().manual_seed(7)))
        xd = x.detach().to(dev).requires_grad_(True)
        layer(xd).backward(dy.to(dev))
        grads.append(xd.grad.cpu())
    out["QuantLinear mxfp4 32x32 W, double quant: dx GPU vs CPU rel. error"] = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
    return out


# ----------------------------------------------------------------------------- 3. timings


def check_cuda_graphs() -> dict:
    """Training steps replayed from CUDA graphs (``fp4train.cuda_graphs``) equal eager steps bit for
    bit: two ``QuantLinear`` layers per recipe, three AdamW steps from the same weights under
    bf16 autocast; the losses, the final weights and the SR step counters are compared."""
    from experiments.bench.graph_steps import train_steps
    from fp4train.linear import QuantLinear

    x = torch.randn(512, 1024, device="cuda")
    out = {}
    for recipe in ("nvfp4", "mxfp4", "fp8"):
        runs = []
        for graphed in (False, True):
            torch.manual_seed(0)
            model = torch.nn.Sequential(QuantLinear(1024, 2048, recipe=recipe), torch.nn.GELU(),
                                        QuantLinear(2048, 1024, recipe=recipe)).cuda()
            losses, params = train_steps(model, x, graphed)
            runs.append((losses, params, int(model[0].sr_step)))
        (l0, p0, c0), (l1, p1, c1) = runs
        same = l0 == l1 and c0 == c1 == 3 and all(torch.equal(a, b) for a, b in zip(p0, p1))
        out[f"CUDA graph == eager: {recipe} QuantLinear ×2, 3 AdamW steps (losses, weights, SR counters)"] = same
        log(f"cuda graph {recipe}: eager losses {l0}, graphed {l1}, counters {c0} {c1}")
    return out


def copy_bandwidth() -> float:
    x = torch.empty(2**28, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / ms(lambda: y.copy_(x)) / 1e6  # GB/s (1e9 B/s): read + write


def useful_bytes(row: QuantSpec | None, col: QuantSpec | None) -> int:
    """One read of the bf16 (M, K) input plus the codes (FP4: 1/2 byte, FP8: 1 byte per element)
    and block scales of each orientation."""
    def written(s: QuantSpec) -> int:
        return (M * K // 2 if s.format.is_fp4 else M * K) + (M * K // s.block_shape[1] if s.block_shape else 4)
    return M * K * 2 + sum(written(s) for s in (row, col) if s is not None)


def time_quantizers(copy_gbs: float) -> list[dict]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    small = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)  # launch-bound: the CPU cost of a call
    rows = []
    for name, (row, col) in QUANT_VARIANTS.items():
        spec = row or col
        useful = useful_bytes(row, col)
        t = gpu_ms(lambda: quantize_variant(x, row, col))
        entry = {"variant": name, "gpu_ms": t, "eager_ms": ms(lambda: quantize_variant(x, row, col)),
                 "eager_ms_256x512": ms(lambda: quantize_variant(small, row, col)),
                 "frac_copy_bw": useful / t / 1e6 / copy_gbs}
        if spec.fmt != "mxfp4":  # two passes: the tensor amax reads x once more
            entry["frac_copy_bw_actual_bytes"] = (useful + M * K * 2) / t / 1e6 / copy_gbs
        if spec.fmt == "nvfp4":
            amax = torch.full((2,), 4.0, device="cuda")
            t1 = gpu_ms(lambda: quantize_fp4_pair(x, row, col, amax=amax))
            entry.update({"gpu_ms_amax_given": t1, "frac_copy_bw_amax_given": useful / t1 / 1e6 / copy_gbs})
        if name in COMPILED_REFERENCES:
            with reference_mode():
                entry["ms_reference_eager"] = ms(lambda: quantize(x, spec))
                try:
                    compiled = torch.compile(lambda v: quantize(v, spec))
                    compiled(x)
                    entry["ms_reference_compiled"] = ms(lambda: compiled(x))
                except Exception as e:  # record why, keep the rest
                    entry["reference_compiled_error"] = repr(e)[:300]
        rows.append(entry)
        log(f"quantize {name}: GPU {t * 1e3:.1f} us ({entry['frac_copy_bw']:.0%} of copy bandwidth), eager {entry['eager_ms'] * 1e3:.1f} us")
    return rows


TILE_SWEEP = {  # variant: (BM, BK, VEC, num_warps, split) tiles to time; the first is the default
    # (`_tile`'s choice; None: no tile given, i.e. NVFP4 dy's two launches)
    "nvfp4 col rn rht16 (x wgrad)": [(32, 256, 2, 4), (16, 512, 4, 4), (64, 256, 2, 4), (32, 128, 2, 2)],
    "nvfp4 row rn + col rn rht16 (x both)": [(32, 256, 2, 4, True), (16, 512, 4, 4), (32, 128, 2, 2, True)],
    "nvfp4 row sr + col sr rht16 (dy both)": [None, (16, 256, 2, 4), (32, 256, 2, 4, True), (16, 512, 4, 4)],
    "nvfp4 16x16 row + col (W both)": [(16, 512, 4, 4), (16, 256, 2, 4), (32, 256, 2, 4, True)],
    "mxfp4 floor col rn": [(64, 256, 2, 4), (32, 256, 2, 4), (64, 128, 2, 2)],
    "mxfp4 floor row rn + col rn (x, dy both)": [(32, 256, 2, 4, True), (32, 256, 2, 4), (64, 256, 2, 4, True), (32, 128, 2, 2, True)],
    "mxfp4 ceil row sr + col sr (TetraJet dy)": [(32, 256, 2, 4, True), (32, 256, 2, 4), (64, 256, 2, 4, True), (32, 128, 2, 2, True)],
    "fp8_e4m3 row + col (x both)": [(32, 256, 8, 4), (64, 128, 2, 4), (32, 128, 4, 4), (16, 512, 8, 4), (32, 256, 8, 8)],
}


def time_tiles(copy_gbs: float) -> list[dict]:
    """The quantize pass alone (NVFP4 amax given; FP8 with its amax pass) per tile shape, for
    choosing ``_tile``'s and ``fp8._TILE``'s defaults."""
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    amax = torch.full((2,), 4.0, device="cuda")
    rows = []
    for name, tiles in TILE_SWEEP.items():
        row, col = QUANT_VARIANTS[name]
        for tile in tiles:
            kw = {"amax": amax} if (row or col).fmt == "nvfp4" else {}
            t = gpu_ms(lambda: quantize_variant(x, row, col, tile=tile, **kw))
            rows.append({"variant": name, "tile": list(tile) if tile else "two launches", "gpu_ms": t,
                         "frac_copy_bw": useful_bytes(row, col) / t / 1e6 / copy_gbs})
            log(f"tile {name} {tile}: {t * 1e3:.1f} us")
    return rows


def time_gemms() -> list[dict]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    flop = 2 * M * N * K
    t_bf16 = gpu_ms(lambda: x @ w.T)
    rows = [{"gemm": "bf16 torch.matmul", "ms": t_bf16, "TFLOP/s": flop / t_bf16 / 1e9, "vs_bf16": 1.0}]

    def timed(label: str, fn, gemm: bool = True) -> None:
        """A row for ``fn``'s GPU time; ``gemm=False``: a part of a GEMM (no TFLOP/s)."""
        t = gpu_ms(fn)
        rows.append({"gemm": label, "ms": t, "TFLOP/s": flop / t / 1e9 if gemm else 0.0, "vs_bf16": t_bf16 / t})
        log(f"gemm {label}: {t:.3f} ms")

    for name, (sa, sb) in {"nvfp4 x nvfp4-16x16": (NV, NV_2D), "mxfp4 x mxfp4": (MX, MX)}.items():
        qa, qb = quantize(x, sa), quantize(w, sb)
        variants = {f"{name} default path (fp4_matmul)": {}, f"{name} dequant + cuBLAS (FP32 out, scales, cast)": dict(cublas=True)}
        if name.startswith("nvfp4"):
            variants.update({f"{name} dequant + Triton GEMM {cfg}": dict(config=cfg, tma=False) for cfg in GEMM_CONFIGS})
            variants.update({f"{name} dequant + persistent TMA Triton GEMM {cfg}": dict(config=cfg, tma=True) for cfg in TMA_CONFIGS})
        # FP32 outputs (Wgrad, Fprop with a bias): the TMA kernel stores its output tile in halves
        variants.update({f"{name} FP32 output, default path": dict(out_dtype=torch.float32),
                         f"{name} FP32 output, dequant + cuBLAS": dict(out_dtype=torch.float32, cublas=True),
                         f"{name} FP32 output, dequant + persistent TMA Triton GEMM": dict(out_dtype=torch.float32, cublas=False, tma=True),
                         f"{name} FP32 output, dequant + Triton GEMM": dict(out_dtype=torch.float32, cublas=False, tma=False)})
        for label, kw in variants.items():
            kw = {"out_dtype": torch.bfloat16, **kw}
            timed(label, lambda: fp4_matmul(qa, qb, **kw))
        timed(f"{name} fused Triton GEMM {FUSED_CONFIG}", lambda: fp4_matmul(qa, qb, torch.bfloat16, fused=True))
        timed(f"{name}: the two dequantize_fp4 alone", lambda: (dequantize_fp4(qa), dequantize_fp4(qb)), gemm=False)
    qa, qb = quantize(x, MX), quantize(w, MX)
    timed("mxfp4 x mxfp4 on FP8 tensor cores (mx_to_e4m3 ×2 + row-wise _scaled_mm + fixup launch)",
          lambda: mx_fp8_matmul(qa, qb, torch.bfloat16))
    (ya, sa, _), (yb, sb, _) = mx_to_e4m3(qa), mx_to_e4m3(qb)
    e4m3 = torch.float8_e4m3fn
    timed("mxfp4 x mxfp4: the row-wise _scaled_mm alone",
          lambda: torch._scaled_mm(ya.view(e4m3), yb.view(e4m3).t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16))
    timed("mxfp4 x mxfp4: the two mx_to_e4m3 alone", lambda: (mx_to_e4m3(qa), mx_to_e4m3(qb)), gemm=False)
    qa, qb = quantize(x, QuantSpec("fp8_e4m3")), quantize(w, QuantSpec("fp8_e4m3"))
    timed("fp8_e4m3 _scaled_mm", lambda: fp8_matmul(qa, qb, torch.bfloat16))
    return rows


def _step_gpu_ms(step) -> float:
    """GPU time of one call (ms): the sum of its kernels' device time in a profiler trace."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages()) / 1e3


LINEAR_SHAPES = [(4096, 4096), (4096, 14336)]  # (in, out) features; M tokens


AUTOCAST_BASELINE = "nn.Linear, FP32 weights, bf16 autocast"


def fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, autocast: bool) -> Callable[[], None]:
    """A step of ``layer``: forward on ``x`` (under bf16 autocast on the GPU if ``autocast``) and
    backward of ``dy``. Gradients accumulate into ``x.grad`` and the parameters' ``.grad`` from
    call to call (no ``zero_grad``), for every layer alike."""
    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.backward(dy)
    return step


def time_linears() -> list[dict]:
    """Each layer's fwd + bwd against two baselines: a bf16 ``nn.Linear`` (bf16 weights and
    gradients), and the mixed-precision one the training recipes run, an ``nn.Linear`` with FP32
    master weights under bf16 autocast (a bf16 copy of W per forward, an FP32 weight gradient),
    which is what a ``QuantLinear`` with FP32 weights replaces. ``QuantLinear`` rows have FP32
    weights unless they say bf16."""
    from fp4train.linear import QuantLinear

    rows = []
    for k, n in LINEAR_SHAPES:
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(M, n, device="cuda", dtype=torch.bfloat16)
        layers = {"bf16 nn.Linear": torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16),
                  AUTOCAST_BASELINE: torch.nn.Linear(k, n, bias=False, device="cuda")}
        for recipe in ("nvfp4", "mxfp4", "fp8"):
            layers[f"QuantLinear {recipe}"] = QuantLinear(k, n, bias=False, recipe=recipe, device="cuda")
        mx_fp8 = build_recipe(RecipeConfig(name="mxfp4", mx_fp8_gemm=True))
        layers["QuantLinear mxfp4 mx_fp8_gemm"] = QuantLinear(k, n, bias=False, recipe=mx_fp8, device="cuda")
        layers["QuantLinear nvfp4, bf16 weights"] = QuantLinear(k, n, bias=False, recipe="nvfp4", device="cuda",
                                                                dtype=torch.bfloat16)
        first = len(rows)
        for name, layer in layers.items():
            step = fwd_bwd(layer, x, dy, autocast=name == AUTOCAST_BASELINE)
            for _ in range(3):
                step()
            rows.append({"linear": f"{name} {M}×{k}→{n} fwd+bwd", "eager_ms": ms(step), "gpu_ms": _step_gpu_ms(step)})
            log(f"linear {rows[-1]}")
            if name in ("QuantLinear nvfp4", "QuantLinear fp8", "QuantLinear mxfp4 mx_fp8_gemm", AUTOCAST_BASELINE) and k == n:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                log(f"kernels of one {name} step:\n" + prof.key_averages().table(sort_by="self_device_time_total", row_limit=14))
        for r in rows[first:]:
            r["vs_bf16_eager"] = rows[first]["eager_ms"] / r["eager_ms"]
            r["vs_bf16_gpu"] = rows[first]["gpu_ms"] / r["gpu_ms"]
            r["vs_autocast_gpu"] = rows[first + 1]["gpu_ms"] / r["gpu_ms"]
    return rows


# ----------------------------------------------------------------------------- 4. report


def time_peers() -> list[dict]:
    """torchao's NVFP4 and MXFP4 casts (``peers.py``) beside our kernel for the same spec, on
    x (8192×4096 bf16, Gaussian): eager wall time, and GPU time where the cast can be captured in
    a CUDA graph, of the cast and of its ``torch.compile``d version; and the fractions of its code and
    scale bytes equal to ours, on x and on x with row scales 2^-20..2^20 (blocks far below the
    tensor's amax, where the NVFP4 rules part). Without torchao: one row saying why."""
    peers = torchao_quantizers()
    if isinstance(peers, str):
        log(peers)
        return [{"unavailable": peers}]
    g = torch.Generator("cuda").manual_seed(0)  # the agreement depends on the sample (ties)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    wide = x * torch.exp2(torch.randint(-20, 21, (M, 1), device="cuda", generator=g).float()).to(x.dtype)
    rows = []
    for peer in peers:
        def ours():
            return quantize_fp4_pair(x, peer.spec, None)
        entry = {"peer": peer.name, "spec": str(peer.spec), "ours_gpu_ms": gpu_ms(ours), "ours_eager_ms": ms(ours),
                 "eager_ms": ms(lambda: peer.cast(x))}
        for label, inp in (("gaussian", x), ("wide", wide)):
            entry.update({f"{k}_{label}": v for k, v in agreement(peer, inp).items()})
        try:
            entry["gpu_ms"] = gpu_ms(lambda: peer.cast(x))
        except Exception as e:  # e.g. a host sync inside the cast: not capturable
            entry["gpu_error"] = repr(e)[:300]
            torch.cuda.synchronize()
        start = time.time()
        try:
            compiled = torch.compile(peer.cast)
            compiled(x)
            entry["compiled_ms"] = ms(lambda: compiled(x))
            entry["compiled_gpu_ms"] = gpu_ms(lambda: compiled(x))
        except Exception as e:  # record why, keep the rest
            entry["compiled_error"] = repr(e)[:300]
        entry["compile_s"] = time.time() - start
        rows.append(entry)
        log(f"peer {entry}")
    return rows


def environment() -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return {"gpu": torch.cuda.get_device_name(), "nvidia_smi": smi, "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton.__version__}


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"# fp4train kernel benchmark\n\n{env['gpu']} ({env['nvidia_smi']}), torch {env['torch']}, "
             f"CUDA {env['cuda']}, Triton {env['triton']}. Copy bandwidth (read + write): "
             f"{res['copy_GBs']:.0f} GB/s. Command: `python -m experiments.bench.run`.\n",
             "## Quantize, bf16 input 8192×4096\n",
             "GPU time = CUDA-graph replay; eager = one Python call (launches included). Fraction of copy "
             "bandwidth on bytes = 1 read of x + the codes and scales written; NVFP4 and FP8 also read x in "
             "their amax pass (second column), skipped when the amax is given (NVFP4).\n",
             "| variant | GPU µs | of copy BW | of BW, bytes incl. amax pass | NVFP4 amax given: GPU µs / of BW | eager µs | eager µs at 256×512 (CPU cost of a call) | ref eager µs | ref torch.compile µs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["quantize"]:
        def f(key, scale=1e3, fmt="{:.0f}"):
            return fmt.format(r[key] * scale) if key in r else ""
        lines.append(f"| {r['variant']} | {f('gpu_ms')} | {r['frac_copy_bw']:.0%} | "
                     f"{f('frac_copy_bw_actual_bytes', 100, '{:.0f}%')} | "
                     f"{f('gpu_ms_amax_given')} {f('frac_copy_bw_amax_given', 100, '/ {:.0f}%')} | {f('eager_ms')} | {f('eager_ms_256x512')} | "
                     f"{f('ms_reference_eager')} | {f('ms_reference_compiled')} |")
    lines += ["\n## Quantize pass alone (NVFP4 amax given) per tile (BM, BK, VEC, num_warps[, split]); first = default\n",
              "| variant | tile | GPU µs | of copy BW |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['tile'] if isinstance(r['tile'], str) else tuple(r['tile'])} | {r['gpu_ms'] * 1e3:.0f} | "
              f"{r['frac_copy_bw']:.0%} |" for r in res["tiles"]]
    lines += ["\n## GEMM 8192×4096×4096 (M×N×K), bf16 output unless stated, GPU time (CUDA graph)\n", "| GEMM | ms | TFLOP/s | speed vs bf16 |", "|---|---|---|---|"]
    lines += [f"| {r['gemm']} | {r['ms']:.3f} | {r['TFLOP/s']:.0f} | {r['vs_bf16']:.2f} |" for r in res["gemm"]]
    lines += ["\n## Linear fwd + bwd (eager wall time; GPU = sum of kernel times); time vs bf16 nn.Linear of the same shape "
              f"and vs the mixed-precision baseline ({AUTOCAST_BASELINE}); QuantLinear weights FP32 unless stated\n",
              "| layer | eager ms | GPU ms | time vs bf16 (eager) | time vs bf16 (GPU) | time vs autocast (GPU) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['linear']} | {r['eager_ms']:.3f} | {r['gpu_ms']:.3f} | {1 / r['vs_bf16_eager']:.2f}× | "
              f"{1 / r['vs_bf16_gpu']:.2f}× | {1 / r['vs_autocast_gpu']:.2f}× |" for r in res["linear"]]
    peers = res["peers"]
    lines += ["\n## Peers: torchao's casts beside ours (bf16 8192×4096, one orientation)\n",
              "Eager = one Python call; GPU = CUDA-graph replay; compiled: the `torch.compile`d cast, GPU / eager. "
              "Equal bytes: the fraction of the peer's code / scale bytes equal to ours, on Gaussian x and on x with "
              "row scales 2^-20..2^20 (`experiments/bench/peers.py` says why NVFP4's differ).\n"]
    if "peers_error" in res:
        lines.append(f"Failed: {res['peers_error']}")
    elif not peers:
        lines.append("Not run (skipped).")
    elif "unavailable" in peers[0]:
        lines.append(f"Not run: {peers[0]['unavailable']}.")
    else:
        lines += ["| peer | eager µs | GPU µs | compiled: GPU µs / eager µs | ours: GPU µs / eager µs | GPU time / ours (eager / compiled) | "
                  "codes equal (Gaussian / wide) | scales equal (Gaussian / wide) |", "|---|---|---|---|---|---|---|---|"]
        for r in peers:
            gpu = f"{r['gpu_ms'] * 1e3:.0f}" if "gpu_ms" in r else "not capturable"
            comp = (f"failed: {r['compiled_error'][:80]}" if "compiled_error" in r else
                    " / ".join(f"{r[k] * 1e3:.0f}" if k in r else "–" for k in ("compiled_gpu_ms", "compiled_ms")))
            ratio = " / ".join(f"{r[k] / r['ours_gpu_ms']:.1f}×" if k in r else "–" for k in ("gpu_ms", "compiled_gpu_ms"))
            lines.append(f"| {r['peer']} | {r['eager_ms'] * 1e3:.0f} | {gpu} | {comp} | {r['ours_gpu_ms'] * 1e3:.0f} / "
                         f"{r['ours_eager_ms'] * 1e3:.0f} | {ratio} | {r['codes_equal_gaussian']:.2%} / {r['codes_equal_wide']:.2%} | "
                         f"{r['scales_equal_gaussian']:.2%} / {r['scales_equal_wide']:.2%} |")
    lines += ["\n## GPU checks against the CPU reference\n", "| check | result |", "|---|---|"]
    gemm_errors = {f'GEMM rel. error {k}': f'{v:.1e}' for k, v in res['check_gemm'].items()}
    lines += [f"| {k} | {v} |" for k, v in {**res["check_quantize"], **gemm_errors, **res.get("check_graph", {})}.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("experiments/bench/results"))
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--skip", nargs="*", default=[], choices=["warm", "check", "quantize", "tiles", "gemm", "linear", "peers"])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"environment": environment()}
    log(str(res["environment"]))
    if "warm" not in args.skip:
        warm_caches(args.workers)
    if "check" not in args.skip:
        res["check_quantize"] = check_quantizers()
        res["check_gemm"] = check_gemms()
        res["check_graph"] = check_cuda_graphs()
        log(f"checks: {res['check_quantize']} {res['check_gemm']} {res['check_graph']}")
    torch.backends.cuda.matmul.allow_tf32 = True
    res["copy_GBs"] = copy_bandwidth()
    log(f"copy bandwidth {res['copy_GBs']:.0f} GB/s")
    parts = (("quantize", lambda: time_quantizers(res["copy_GBs"])), ("tiles", lambda: time_tiles(res["copy_GBs"])),
             ("gemm", time_gemms), ("linear", time_linears), ("peers", time_peers))
    for part, fn in parts:
        if part not in args.skip:
            try:
                res[part] = fn()
            except Exception as e:  # keep the other parts' numbers
                res[part] = []
                res[f"{part}_error"] = repr(e)
                log(f"{part} failed: {e!r}")
            (args.out / "bench.json").write_text(json.dumps(res, indent=1))
    res.setdefault("check_quantize", {}), res.setdefault("check_gemm", {}), res.setdefault("check_graph", {})
    for part, _ in parts:
        res.setdefault(part, [])
    (args.out / "bench.md").write_text(markdown(res))
    plot_bench(res, args.out / "bench.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
