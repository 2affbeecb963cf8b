"""The quantizer compiles (for sm_90, on the CPU: Triton's bundled LLVM and ptxas) to PTX without
flush-to-zero, approximate division or fused multiply-adds — the properties bit-exactness rests on."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from fp4train.kernels.quantize import _ONE_SIXTH, _quantize_kernel

sig = {"x_ptr": "*bf16", "M": "i32", "K": "i32", "stride": "i32", "amax_ptr": "*i32", "ts_ptr": "*fp32",
       "h_ptr": "*fp32", "row_codes": "*u8", "row_scales": "*u8", "row_rand": "*i32", "row_seed": "i32", "row_counter": "*i64",
       "col_codes": "*u8", "col_scales": "*u8", "col_rand": "*i32", "col_seed": "i32", "col_counter": "*i64"}
const = dict(BM=32, BK=256, VEC=2, SPLIT=SPLIT, ROW_BM=16, ROW_VEC=8, REVERSE=True, BR=1, BC=16, MX=False, MX_CEIL=False, ROW=True, COL=True, ROW_RHT=0, COL_RHT=16,
             ROW_SR=16, COL_SR=0, PHILOX=True, ONE_SIXTH=_ONE_SIXTH)
sig.update({k: "constexpr" for k in const})
src = triton.compiler.ASTSource(fn=_quantize_kernel, signature=sig, constexprs=const)
print(triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}).asm["ptx"])
"""


@pytest.mark.parametrize("split", [False, True])
def test_quantizer_ptx_has_no_ftz_approximate_division_or_fma(split):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = SCRIPT.replace("SPLIT=SPLIT", f"SPLIT={split}")
    ptx = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    ops = [line.split()[1] if line.split()[0].startswith("@") else line.split()[0] for line in ptx.splitlines() if line.strip()]
    float_ops = [op for op in ops if ".f32" in op]
    assert "div.rn.f32" in float_ops  # the tensor and block scale divisions are there, correctly rounded
    bad = sorted({op for op in float_ops if ".ftz" in op or "approx" in op or "div.full" in op or op.startswith("fma")})
    assert not bad, f"PTX float ops that break bit-exactness: {bad}"
