"""FP4 GEMM backends side by side, and QuantLinear fwd+bwd per recipe vs bf16 nn.Linear (issue 6 b).

    PYTHONUNBUFFERED=1 python -m experiments.bench.gemm_backends --out results/

At M×N×K = 8192×4096×4096: the relative error of each GEMM backend against the CPU reference
``quantized_matmul`` (float32), the GPU time of cuBLAS-FP32-output vs the Triton GEMM, and the
eager time of ``QuantLinear`` fwd+bwd (nvfp4, mxfp4, fp8) against ``nn.Linear`` in bf16. Writes
``gemm_backends.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from triton.testing import do_bench

from fp4train.kernels.gemm import fp4_matmul
from fp4train.linear import QuantLinear
from fp4train.quant import QuantSpec, quantize
from fp4train.quant.matmul import quantized_matmul

M, K, N = 8192, 4096, 4096


def gemm_rows() -> list[dict]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    t_bf16 = do_bench(lambda: x @ w.T)
    rows = [{"what": "gemm bf16 torch.matmul", "ms": t_bf16, "time_vs_bf16": 1.0}]
    for name, (sa, sb) in {"nvfp4": (QuantSpec("nvfp4"), QuantSpec("nvfp4", block=(16, 16))),
                           "mxfp4": (QuantSpec("mxfp4"), QuantSpec("mxfp4"))}.items():
        qa, qb = quantize(x[:1024], sa), quantize(w[:768], sb)
        ref = quantized_matmul(quantize(x[:1024].cpu(), sa), quantize(w[:768].cpu(), sb))
        qa_full, qb_full = quantize(x, sa), quantize(w, sb)
        for backend in (True, False):
            err = ((fp4_matmul(qa, qb, torch.float32, cublas=backend).cpu() - ref).norm() / ref.norm()).item()
            t = do_bench(lambda: fp4_matmul(qa_full, qb_full, torch.bfloat16, cublas=backend))
            label = "cuBLAS fp32-out + epilogue" if backend else "Triton GEMM"
            rows.append({"what": f"gemm {name} {label}", "ms": t, "time_vs_bf16": t / t_bf16, "rel_err_vs_cpu_ref": err})
    return rows


def linear_rows() -> list[dict]:
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    layers = {"bf16 nn.Linear": torch.nn.Linear(K, N, bias=False, device="cuda", dtype=torch.bfloat16)}
    for recipe in ("nvfp4", "mxfp4", "fp8"):
        layers[f"QuantLinear {recipe}"] = QuantLinear(K, N, bias=False, recipe=recipe, device="cuda")
    rows = []
    for name, layer in layers.items():
        t = do_bench(lambda: layer(x).backward(dy))
        rows.append({"what": f"linear fwd+bwd {name}", "ms": t})
    for r in rows:
        r["time_vs_bf16"] = r["ms"] / rows[0]["ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = gemm_rows() + linear_rows()
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gemm_backends.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    lines = [f"{device}, torch {torch.__version__}, M×N×K = {M}×{N}×{K}, `triton.testing.do_bench` (eager, ms).", "",
             "| what | ms | time vs bf16 | rel. error vs CPU reference |", "|---|---:|---:|---:|"]
    lines += [f"| {r['what']} | {r['ms']:.3f} | {r['time_vs_bf16']:.2f} | {r.get('rel_err_vs_cpu_ref', '')} |" for r in rows]
    (args.out / "gemm_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
