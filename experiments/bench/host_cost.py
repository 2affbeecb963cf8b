"""Host (CPU) cost per call of fp4train's GPU entry points, at a launch-bound size:

    python -m experiments.bench.host_cost --out DIR

Small layers (the ViT) are launch-bound, so what a training step costs there is the Python and
launch time of each call, not its kernels. Each op runs on a 256×512 bf16 input; the time per
call is the wall time of 200 back-to-back calls (the GPU finishes each long before the next is
issued), in two passes in opposite orders so that a warm-up effect shows as a difference between
them. Baselines: an empty ``torch.empty`` and one bf16 ``torch.mm`` of the same size. Writes
``host_cost.json`` and ``host_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fp4train.kernels.fp8 import quantize_fp8
from fp4train.kernels.gemm import fp4_matmul, mx_fp8_matmul
from fp4train.kernels.mx_fp8 import mx_to_e4m3
from fp4train.kernels.quantize import quantize_fp4_pair
from fp4train.quant import QuantSpec, quantize

CALLS = 200


def per_call_us(fn) -> float:
    """Wall µs per call of ``fn`` over ``CALLS`` calls, after a synchronised warm-up call."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / CALLS * 1e6


def ops() -> dict:
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    nv, mx = QuantSpec("nvfp4"), QuantSpec("mxfp4")
    nv_sr_rht = QuantSpec("nvfp4", rounding="sr", rht=16)
    qx_nv, qw_nv = quantize(x, nv), quantize(w, QuantSpec("nvfp4", block=(16, 16)))
    qx_mx, qw_mx = quantize(x, mx), quantize(w, mx)
    return {
        "torch.empty (baseline)": lambda: torch.empty(256, 512, device="cuda"),
        "bf16 torch.mm 256×512×512 (baseline)": lambda: x @ w.T,
        "quantize_fp4_pair nvfp4 row": lambda: quantize_fp4_pair(x, nv, None),
        "quantize_fp4_pair nvfp4 row + col sr rht16": lambda: quantize_fp4_pair(x, nv_sr_rht, nv_sr_rht),
        "quantize_fp4_pair mxfp4 row": lambda: quantize_fp4_pair(x, mx, None),
        "quantize_fp4_pair mxfp4 row + col": lambda: quantize_fp4_pair(x, mx, mx),
        "quantize_fp8 e4m3 row + col": lambda: quantize_fp8(x, QuantSpec("fp8_e4m3"), QuantSpec("fp8_e4m3")),
        "quantize() dispatch, nvfp4": lambda: quantize(x, nv),
        "fp4_matmul nvfp4 (dequantize ×2 + Triton GEMM)": lambda: fp4_matmul(qx_nv, qw_nv, torch.bfloat16),
        "fp4_matmul mxfp4 (dequantize ×2 + cuBLAS)": lambda: fp4_matmul(qx_mx, qw_mx, torch.bfloat16),
        "mx_to_e4m3": lambda: mx_to_e4m3(qx_mx),
        "mx_fp8_matmul": lambda: mx_fp8_matmul(qx_mx, qw_mx, torch.bfloat16),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    table = ops()
    names = list(table)
    forward = {n: per_call_us(table[n]) for n in names}
    backward = {n: per_call_us(table[n]) for n in reversed(names)}
    rows = [{"op": n, "us_first_pass": forward[n], "us_reversed_pass": backward[n]} for n in names]
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host_cost.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))
    lines = [f"Host cost per call at 256×512 (bf16), {device}, torch {torch.__version__}: wall µs per call over "
             f"{CALLS} calls, two passes in opposite orders.", "", "| op | µs, first pass | µs, reversed pass |", "|---|---:|---:|"]
    lines += [f"| {r['op']} | {r['us_first_pass']:.1f} | {r['us_reversed_pass']:.1f} |" for r in rows]
    (args.out / "host_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
