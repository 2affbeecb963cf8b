"""Host (CPU) cost per call of fp4train's GPU entry points, at a launch-bound size:

    python -m experiments.bench.host_cost --out DIR

Small layers (the ViT) are launch-bound, so what a training step costs there is the Python and
launch time of each call, not its kernels. Each op runs on a 256×512 bf16 input; the time per
call is the wall time of 200 back-to-back calls (the GPU finishes each long before the next is
issued), in two passes in opposite orders so that a warm-up effect shows as a difference between
them. Baselines: an empty ``torch.empty``, one bf16 ``torch.mm`` of the same size and the launch
of a one-argument Triton kernel. Whole layers too: a ``QuantLinear`` per recipe and the
mixed-precision ``nn.Linear`` it replaces, forward and backward as ``run.py`` times them. Writes
``host_cost.json`` and ``host_cost.md``; with ``--profile`` also ``host_profile.txt``, where the
Python time of a few ops (the NVFP4 layer among them) goes (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from fp4train.kernels.fp8 import quantize_fp8
from fp4train.kernels.gemm import fp4_matmul, mx_fp8_matmul
from fp4train.kernels.mx_fp8 import mx_to_e4m3
from fp4train.kernels.quantize import quantize_fp4_pair
from fp4train.quant import QuantSpec, quantize

from .run import fwd_bwd

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


@triton.jit
def _noop_kernel(x_ptr):
    """Stores nothing: the host cost of a Triton launch with one argument (baseline)."""
    tl.load(x_ptr)


PROFILED = ("QuantLinear nvfp4 fwd+bwd", "quantize_fp4_pair nvfp4 row + col sr rht16",
            "fp4_matmul nvfp4 (dequantize ×2 + Triton GEMM, forced)", "mx_fp8_matmul")


def profile(table: dict, names: tuple[str, ...], top: int = 25) -> str:
    """cProfile of ``CALLS`` calls of each op in ``names``: the functions with the most own time,
    and with the most time including their callees."""
    out = io.StringIO()
    for name in names:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(CALLS):
            table[name]()
        torch.cuda.synchronize()
        prof.disable()
        out.write(f"\n### {name}: {CALLS} calls, by own time\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
        out.write(f"\n### {name}: by cumulative time\n")
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def ops() -> dict:
    from fp4train.linear import QuantLinear

    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    nv, mx = QuantSpec("nvfp4"), QuantSpec("mxfp4")
    nv_sr_rht = QuantSpec("nvfp4", rounding="sr", rht=16)
    qx_nv, qw_nv = quantize(x, nv), quantize(w, QuantSpec("nvfp4", block=(16, 16)))
    qx_mx, qw_mx = quantize(x, mx), quantize(w, mx)
    xg, dy = x.clone().requires_grad_(), torch.randn_like(x)
    return {
        "torch.empty (baseline)": lambda: torch.empty(256, 512, device="cuda"),
        "bf16 torch.mm 256×512×512 (baseline)": lambda: x @ w.T,
        "Triton launch of a one-argument kernel (baseline)": lambda: _noop_kernel[(1,)](x),
        "quantize_fp4_pair nvfp4 row": lambda: quantize_fp4_pair(x, nv, None),
        "quantize_fp4_pair nvfp4 row + col sr rht16": lambda: quantize_fp4_pair(x, nv_sr_rht, nv_sr_rht),
        "quantize_fp4_pair mxfp4 row": lambda: quantize_fp4_pair(x, mx, None),
        "quantize_fp4_pair mxfp4 row + col": lambda: quantize_fp4_pair(x, mx, mx),
        "quantize_fp8 e4m3 row + col": lambda: quantize_fp8(x, QuantSpec("fp8_e4m3"), QuantSpec("fp8_e4m3")),
        "quantize() dispatch, nvfp4": lambda: quantize(x, nv),
        # cublas=False: this output has fewer tiles than SMs, which the default sends to cuBLAS
        "fp4_matmul nvfp4 (dequantize ×2 + Triton GEMM, forced)": lambda: fp4_matmul(qx_nv, qw_nv, torch.bfloat16, cublas=False),
        "fp4_matmul mxfp4 (dequantize ×2 + cuBLAS)": lambda: fp4_matmul(qx_mx, qw_mx, torch.bfloat16),
        "mx_to_e4m3": lambda: mx_to_e4m3(qx_mx),
        "mx_fp8_matmul": lambda: mx_fp8_matmul(qx_mx, qw_mx, torch.bfloat16),
        # a whole layer's step as run.py times it (x of 256 tokens requiring grad, gradients
        # accumulating): what a small model pays per linear
        "nn.Linear fwd+bwd, FP32 weights, bf16 autocast (baseline)": fwd_bwd(torch.nn.Linear(512, 512, device="cuda"), xg, dy, True),
        **{f"QuantLinear {r} fwd+bwd": fwd_bwd(QuantLinear(512, 512, recipe=r, device="cuda"), xg, dy, False)
           for r in ("nvfp4", "mxfp4", "fp8")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", action="store_true", help=f"also write host_profile.txt: cProfile of {PROFILED}")
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
    if args.profile:
        (args.out / "host_profile.txt").write_text(profile(table, PROFILED))


if __name__ == "__main__":
    main()
