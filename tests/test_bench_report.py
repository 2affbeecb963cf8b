"""The benchmarks' CPU parts: the kernel benchmark's report (``experiments/bench/run.py``'s Markdown,
``plot.py``'s figure) from a result dict — every part present, parts skipped, torchao missing — and
the training-step benchmark's FLOP counts (against PyTorch's counter), plans and table."""

import json
from dataclasses import asdict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench import train_step
from experiments.bench.flops import linear_params, train_flops
from experiments.bench.plot import _panels, plot_bench
from experiments.bench.run import markdown
from fp4train.models import build_model

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


# --- the training-step benchmark (experiments/bench/train_step.py, flops.py) ---------------------


def _counted(model, x) -> int:
    """PyTorch's count of a forward + backward (math SDPA: its QKᵀ and PV are counted bmms)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x).float().square().mean().backward()
    return counter.get_total_flops()


def test_lm_linear_flops_are_six_n_per_token_as_pytorch_counts_them():
    model = build_model("hybrid_lm", "micro", pattern="-")
    ours = train_flops(model, batch=2, seq=24)
    assert ours["attention"] == ours["ssd"] == 0
    assert ours["linear"] == 6 * linear_params(model) * 2 * 24 == _counted(model, torch.randint(0, 256, (2, 24)))


def test_lm_attention_flops_are_pytorchs_full_count_over_the_causal_pairs():
    model = build_model("hybrid_lm", "micro", pattern="*")
    b, l = 2, 24
    ours = train_flops(model, batch=b, seq=l)
    full = _counted(model, torch.randint(0, 256, (b, l))) - ours["linear"]  # the counter computes all l² pairs
    assert full == 12 * b * l * l * model.config.n_heads * model.config.head_dim
    assert ours["attention"] == full * (l * (l + 1) / 2) / (l * l)


def test_vit_flops_equal_pytorchs_count():
    model = build_model("vit", "micro")
    images = torch.randn(3, 1, 8, 8, requires_grad=True)  # so that the patch embedding's input gradient is counted too
    assert train_flops(model, batch=3)["total"] == _counted(model, images)


def test_ssd_flops_per_token_and_layer():
    # micro: H 32, P 8, G 2, N 32, Q 64 — chunk states 2·H·P·N and read-out 2·H·P·N (32768), C Bᵀ over
    # the causal pairs N·G·(Q+1) (4160), its product with x P·H·(Q+1) (16640): 53568 per token, 4 M layers
    model = build_model("hybrid_lm", "micro")
    assert train_flops(model, batch=2, seq=128)["ssd"] == 3 * 2 * 128 * 4 * 53568
    with pytest.raises(ValueError, match="needs seq"):
        train_flops(model, batch=2)


def test_default_plan_is_the_issues_set_at_32k_tokens_per_lm_step():
    cases = train_step.plan_cases("default")
    assert len({c.label for c in cases}) == len(cases)
    small = [c for c in cases if c.model == "hybrid_lm" and c.size == "small" and c.ssd_impl == "triton" and c.fused_gated_norm]
    assert {(c.recipe, c.cuda_graph) for c in small} == {(r, g) for r in ("bf16", "fp8", "mxfp4", "nvfp4") for g in (False, True)}
    before = [c for c in cases if c.ssd_impl == "torch"]
    assert [(c.size, c.recipe, c.batch) for c in before] == [("small", "bf16", 8)]
    assert all(c.batch * c.seq >= 32 * 1024 for c in cases if c.is_lm and c not in before)
    assert {(c.size, c.recipe) for c in cases if c.size == "base"} == {("base", "bf16"), ("base", "nvfp4")}
    assert any(c.model == "vit" and c.recipe == "bf16" and c.cuda_graph for c in cases)
    assert [c.label for c in train_step.select(cases, ["vit"])] == [c.label for c in cases if c.model == "vit"]
    with pytest.raises(ValueError, match=r"unknown plan 'fast'; valid: \['default', 'sizes', 'compile'\]"):
        train_step.plan_cases("fast")


def _row(case, step_ms, peak_gib, **extra):
    items = case.batch * (case.seq if case.is_lm else 1)
    return {**asdict(case), "label": case.label, "step_ms": step_ms, "items_per_s": items / step_ms * 1e3,
            "item": "tokens" if case.is_lm else "images", "mfu": 0.25, "peak_tflops": 989.4, "peak_gib": peak_gib,
            "loss": 5.5, "quantized_linears": 3, **extra}


def test_train_step_table_ratios_errors_and_comparisons():
    Case = train_step.Case
    bf16, nvfp4 = Case("hybrid_lm", "small", "bf16", 32), Case("hybrid_lm", "small", "nvfp4", 32)
    before, norm = Case("hybrid_lm", "small", "bf16", 8, ssd_impl="torch"), Case("hybrid_lm", "small", "bf16", 32, fused_gated_norm=False)
    conv = Case("hybrid_lm", "small", "bf16", 32, fused_causal_conv=False)
    oom = Case("hybrid_lm", "base", "bf16", 32)
    older = {k: v for k, v in _row(Case("hybrid_lm", "base", "nvfp4", 32), 300.0, 20.0).items() if k != "fused_causal_conv"}
    rows = [_row(bf16, 100.0, 10.0), _row(nvfp4, 120.0, 8.0), _row(before, 200.0, 32.0), _row(norm, 110.0, 10.0),
            _row(conv, 125.0, 11.0), {**asdict(oom), "label": oom.label, "error": "OutOfMemoryError: CUDA out of memory"},
            older]  # a row from before the fused_causal_conv field: read with its default
    md = train_step.markdown(rows, "GPU")
    line = next(x for x in md.splitlines() if x.startswith("| hybrid_lm small | nvfp4 |"))
    assert "| 32×1024 | triton | no | 120.0 | 273,067 tok/s | 25.0% | 8.00 | 1.20 | 0.80 | 5.5000 |" in line
    assert "| hybrid_lm base | bf16 | 32×1024 | triton | no | failed: OutOfMemoryError: CUDA out of memory |" in md
    assert "| 8×1024 | torch | no | 200.0 | 40,960 tok/s | 25.0% | 32.00 | 1.00 | 1.00 |" in md  # its own baseline
    assert ("- hybrid_lm small bf16 eager: 327,680 tok/s at 32×1024 vs 40,960 tok/s with the torch scan at 8×1024: 8.00×"
            in md.splitlines())
    assert "with our PyTorch gated norm at 32×1024: 1.10×" in md
    assert "| hybrid_lm small | bf16 | 32×1024 | triton, torch conv | no | 125.0 |" in md
    assert "with PyTorch's conv1d at 32×1024: 1.25×" in md
    assert "| hybrid_lm base | nvfp4 | 32×1024 | triton | no | 300.0 |" in md


@pytest.mark.parametrize("case", [
    train_step.Case("hybrid_lm", "micro", "nvfp4", batch=2, seq=64, ssd_impl="torch"),
    train_step.Case("vit", "micro", "mxfp4", batch=4),
])
def test_a_training_step_case_runs_on_cpu(case):
    row = train_step.bench(case, steps=1, peak_tflops=989.4, device="cpu")
    assert row["quantized_linears"] > 0 and row["step_ms"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    assert row["flops_per_step"]["total"] > 0 and 0 < row["mfu"] < 1
    assert row["items_per_s"] == pytest.approx(case.batch * (case.seq if case.is_lm else 1) / row["step_ms"] * 1e3)


def test_scan_loss_runs_are_reproducible_and_tabled_on_cpu():
    from experiments.bench import scan_loss

    run = scan_loss.Run("float32 scan (torch)", "torch")
    args = dict(size="micro", steps=4, batch=2, seq=32, lr=1e-3, val_batches=1, device="cpu")
    first, again = scan_loss.train_run(run, **args), scan_loss.train_run(run, **args)
    assert first["train_loss_by_tenth"] == again["train_loss_by_tenth"] and first["val_loss"] == again["val_loss"]
    assert len(first["train_loss_by_tenth"]) == 4  # 4 steps: a tenth is one step
    md = scan_loss.markdown([first, {**again, "label": "other", "val_loss": first["val_loss"] + 0.01}], "micro")
    assert md.splitlines()[-1].startswith("| other |") and "| +0.0100 |" in md


def test_scan_loss_adds_a_later_calls_run_only_to_rows_of_the_same_setting(tmp_path):
    from experiments.bench import scan_loss

    path = tmp_path / "scan_loss.json"
    assert scan_loss.earlier_rows(path, "small") == {}
    path.write_text(json.dumps({"setting": "small", "rows": [{"label": "float32 scan (torch)", "val_loss": 1.0}]}))
    assert scan_loss.earlier_rows(path, "small") == {"float32 scan (torch)": {"label": "float32 scan (torch)", "val_loss": 1.0}}
    assert scan_loss.earlier_rows(path, "small, other lr") == {}
