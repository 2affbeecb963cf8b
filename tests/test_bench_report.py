"""The kernel benchmark's report (``experiments/bench/run.py``'s Markdown, ``plot.py``'s figure)
from a result dict, on the CPU: every part present, parts skipped, and torchao missing."""

from experiments.bench.plot import _panels, plot_bench
from experiments.bench.run import markdown

PEER = {"peer": "torchao 9.9 NVFP4Tensor.to_nvfp4 (per-tensor scale from amax)", "eager_ms": 2.0, "gpu_ms": 1.9,
        "compiled_ms": 0.16, "compiled_gpu_ms": 0.155, "ours_gpu_ms": 0.062, "ours_eager_ms": 0.11,
        "codes_equal_gaussian": 0.9933, "codes_equal_wide": 0.35, "scales_equal_gaussian": 0.988, "scales_equal_wide": 0.34}


def result(**parts) -> dict:
    res = {"environment": {"gpu": "G", "nvidia_smi": "n", "torch": "t", "cuda": "c", "triton": "3"}, "copy_GBs": 4200.0,
           "quantize": [], "tiles": [], "gemm": [], "linear": [], "peers": [],
           "check_quantize": {}, "check_gemm": {}, "check_graph": {}}
    return {**res, **parts}


def test_peer_rows_give_the_ratios_and_agreement():
    md = markdown(result(peers=[PEER]))
    row = next(line for line in md.splitlines() if line.startswith("| torchao 9.9"))
    assert "| 1900 | 155 / 160 | 62 / 110 | 30.6× / 2.5× | 99.33% / 35.00% | 98.80% / 34.00% |" in row


def test_a_failed_compile_and_a_missing_torchao_are_reported():
    failed = {k: v for k, v in PEER.items() if k not in ("compiled_ms", "compiled_gpu_ms")} | {"compiled_error": "RuntimeError('x')"}
    assert "failed: RuntimeError('x')" in markdown(result(peers=[failed]))
    assert "Not run: torchao not available (no module)." in markdown(result(peers=[{"unavailable": "torchao not available (no module)"}]))
    assert "Failed: ValueError('layout')" in markdown(result(peers_error="ValueError('layout')"))
    assert "Not run (skipped)." in markdown(result())


def test_figure_has_the_parts_that_ran(tmp_path):
    quantize = [{"variant": "nvfp4 row rn", "gpu_ms": 0.06, "frac_copy_bw": 0.33, "frac_copy_bw_amax_given": 0.47},
                {"variant": "mxfp4 floor row rn", "gpu_ms": 0.04, "frac_copy_bw": 0.51}]
    linear = [{"linear": "bf16 nn.Linear 8192×4096→4096 fwd+bwd", "vs_bf16_gpu": 1.0},
              {"linear": "QuantLinear nvfp4 8192×4096→4096 fwd+bwd", "vs_bf16_gpu": 1 / 1.37}]
    full = result(quantize=quantize, linear=linear, peers=[PEER])
    assert _panels(full) == ["quantize", "linear", "peers"]
    assert _panels(result(linear=linear, peers=[{"unavailable": "no torchao"}])) == ["linear"]
    path = plot_bench(full, tmp_path / "bench.png")
    assert path.stat().st_size > 10_000
    assert plot_bench(result(peers=[{"unavailable": "no torchao"}]), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
