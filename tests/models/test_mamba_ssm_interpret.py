"""mamba_ssm's Triton scan and fused gated norm, run on the CPU through Triton's interpreter
(``experiments/bench/ssd_check.py --interpret``), against our PyTorch scan: the calling convention
of ``ssd(impl="triton")`` and of the mixer's triton path (raw dt with dt_bias and the softplus inside
the kernel, A, D, grouped B/C, the gated norm's groups and gate order) checked without a GPU.

Needs mamba-ssm's source package in .whl/ (``experiments/bench/gpu_wheels.sh``), triton and einops;
skipped, saying which is missing, where they are not (the GPU check runs the same code on CUDA)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SDIST = REPO / ".whl" / "mamba_ssm-2.3.2.post1.tar.gz"


def _missing() -> str:
    reasons = [] if SDIST.is_file() else [f"{SDIST.relative_to(REPO)} absent (experiments/bench/gpu_wheels.sh downloads it)"]
    reasons += [f"{m} not installed" for m in ("triton", "einops") if importlib.util.find_spec(m) is None]
    return "; ".join(reasons)


@pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")
def test_mamba_ssm_kernels_in_the_interpreter_equal_our_scan_and_mixer(tmp_path):
    cmd = [sys.executable, "-m", "experiments.bench.ssd_check", "--interpret", str(SDIST), "--checks", "scan", "mixer",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r for r in json.loads((tmp_path / "ssd_check.json").read_text())["rows"]}
    assert list(rows) == ["scan torch fp32", "scan triton fp32", "mixer triton + fused norm vs torch, fp32"]
    scan = rows["scan triton fp32"]
    assert set(scan["grads"]) == {"x", "dt", "dt_bias", "A", "B", "C", "D"}
    # float32 in the interpreter (no TF32): far inside the GPU thresholds; a wrong convention is O(1)
    assert max(scan["fwd"], *scan["grads"].values()) < 1e-4, scan
    mixer = rows["mixer triton + fused norm vs torch, fp32"]
    assert {"u", "in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"} <= set(mixer["grads"])
    assert max(mixer["fwd"], *mixer["grads"].values()) < 1e-3, mixer
