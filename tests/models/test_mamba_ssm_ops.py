"""ssd_impl: which scan runs where, the errors, and the mixer's triton wiring (dtypes and arguments
handed to mamba_ssm's kernels), here with stand-ins that compute what the kernels document."""

import logging

import pytest
import torch
import torch.nn.functional as F

from fp4train.models import HybridLMConfig, build_model
from fp4train.models import mamba_ssm_ops as ops
from fp4train.models.mamba2 import Mamba2Mixer, RMSNorm, ssd_chunked

CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU
MISSING = "ModuleNotFoundError: No module named 'mamba_ssm'"


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch):
    monkeypatch.setattr(ops, "_logged", set())


def test_torch_is_torch_everywhere_and_auto_is_torch_on_cpu_logged_once(caplog):
    assert ops.resolve_ssd_impl("torch", CUDA) == "torch"
    with caplog.at_level(logging.INFO, logger=ops.__name__):
        assert [ops.resolve_ssd_impl("auto", torch.device("cpu")) for _ in range(3)] == ["torch"] * 3
    assert [r.message for r in caplog.records] == ["Mamba-2 scan: torch (ssd_impl='auto', input on cpu)"]


def test_auto_on_cuda_takes_triton_when_mamba_ssm_imports_else_torch_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(ops, "_import_kernels", lambda: (object(), object()))
    with caplog.at_level(logging.INFO, logger=ops.__name__):
        assert ops.resolve_ssd_impl("auto", CUDA) == "triton"
        monkeypatch.setattr(ops, "_import_kernels", lambda: MISSING)
        assert ops.resolve_ssd_impl("auto", CUDA) == "torch"
    levels = [(r.levelno, r.message.split(" (")[0]) for r in caplog.records]
    assert levels == [(logging.INFO, "Mamba-2 scan: triton"), (logging.WARNING, "Mamba-2 scan: torch, the slow float32 path")]
    assert MISSING in caplog.records[1].message and "MAMBA_FORCE_BUILD=TRUE" in caplog.records[1].message


def test_triton_is_refused_on_cpu_and_without_the_package_saying_what_to_do(monkeypatch):
    with pytest.raises(RuntimeError, match=r"ssd_impl='triton' runs mamba_ssm's Triton kernels on CUDA only, got an input on cpu"):
        ops.resolve_ssd_impl("triton", torch.device("cpu"))
    monkeypatch.setattr(ops, "_import_kernels", lambda: MISSING)
    with pytest.raises(RuntimeError, match=r"do not import \(ModuleNotFoundError.*\); install the `gpu` extra.*MAMBA_FORCE_BUILD=TRUE"):
        ops.resolve_ssd_impl("triton", CUDA)


def test_the_mixer_refuses_triton_on_cpu_and_the_config_unknown_impls():
    mixer = Mamba2Mixer(32, n_heads=4, head_dim=8, n_groups=2, d_state=16, ssd_impl="triton")
    with pytest.raises(RuntimeError, match="CUDA only"):
        mixer(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match=r"unknown ssd_impl 'cuda'; valid: \['auto', 'torch', 'triton'\]"):
        HybridLMConfig(ssd_impl="cuda")
    with pytest.raises(ValueError, match="unknown ssd_impl"):
        Mamba2Mixer(32, n_heads=4, head_dim=8, n_groups=2, d_state=16, ssd_impl="fast")


def test_auto_on_cpu_is_the_float32_torch_path_bit_for_bit():
    torch.manual_seed(0)
    model = build_model("hybrid_lm", "micro", ssd_impl="auto")
    ref = build_model("hybrid_lm", "micro", ssd_impl="torch")
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (2, 70))
    assert torch.equal(model(idx), ref(idx))


def _scan_standin(calls):
    """What ``mamba_chunk_scan_combined(..., dt_bias=, dt_softplus=True)`` computes (its reference,
    ``ssd_chunk_scan_combined_ref``: dt = softplus(dt + dt_bias), float32 inside, y in x's dtype)."""
    def scan(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False):
        calls.append({"x": x.dtype, "B": B.dtype, "C": C.dtype, "dt": dt.dtype, "A": A.dtype, "D": D.dtype,
                      "dt_bias": dt_bias.dtype, "dt_softplus": dt_softplus, "chunk_size": chunk_size})
        f = torch.float32
        y = ssd_chunked(x.to(f), F.softplus(dt.to(f) + dt_bias.to(f)), A.to(f), B.to(f), C.to(f), D.to(f), chunk_size)
        return y.to(x.dtype)
    return scan


def _norm_standin(calls):
    """What ``rmsnorm_fn(x, w, None, z=, eps=, group_size=, norm_before_gate=False)`` computes
    (its reference ``rms_norm_ref``: float32 inside, output in x's dtype)."""
    def rmsnorm_fn(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        calls.append({"y": x.dtype, "z": z.dtype, "eps": eps, "group_size": group_size, "norm_before_gate": norm_before_gate})
        norm = RMSNorm(x.size(-1), eps=eps, group_size=group_size)
        norm.weight = weight
        return norm(x, gate=z)
    return rmsnorm_fn


@pytest.mark.parametrize("fused_gated_norm", [True, False])
def test_triton_path_hands_the_kernels_bf16_xbc_and_float32_dt_a_d_and_matches_torch(monkeypatch, fused_gated_norm):
    scans, norms = [], []
    monkeypatch.setattr(ops, "_import_kernels", lambda: (_scan_standin(scans), _norm_standin(norms)))
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, n_heads=8, head_dim=16, n_groups=2, d_state=16, chunk_size=16,
                        ssd_impl="triton", fused_gated_norm=fused_gated_norm)
    u = torch.randn(2, 37, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixer.ssd_impl = "torch"
        want = mixer(u)
        mixer.ssd_impl = "triton"
        monkeypatch.setattr("fp4train.models.mamba2.resolve_ssd_impl", lambda impl, device: impl)  # CPU stands in for CUDA
        got = mixer(u)
    bf16, f32 = torch.bfloat16, torch.float32
    assert scans == [{"x": bf16, "B": bf16, "C": bf16, "dt": f32, "A": f32, "D": f32, "dt_bias": f32,
                      "dt_softplus": True, "chunk_size": 16}]
    assert norms == ([{"y": bf16, "z": bf16, "eps": 1e-5, "group_size": 64, "norm_before_gate": False}] if fused_gated_norm else [])
    assert got.dtype == want.dtype == bf16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.02)  # bf16 conv and scan inputs
    got.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())


def _conv_standin(calls):
    """What ``causal_conv1d_fn(x, weight, bias, activation="silu")`` computes (its reference,
    ``causal_conv1d_ref``: a depthwise conv padded width − 1 on the left, then SiLU, in the weight's
    dtype, output in x's dtype)."""
    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        calls.append({"x": tuple(x.shape), "channel_last": x.stride(1) == 1, "weight": tuple(weight.shape),
                      "dtype": x.dtype, "activation": activation})
        dim, width = weight.shape
        out = F.conv1d(x.to(weight.dtype), weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., : x.size(-1)]
        return F.silu(out).to(x.dtype)
    return causal_conv1d_fn


def test_triton_path_hands_causal_conv1d_the_channel_last_split_and_equals_the_f_conv1d_path(monkeypatch):
    convs = []
    monkeypatch.setattr(ops, "_import_kernels", lambda: (_scan_standin([]), _norm_standin([])))
    monkeypatch.setattr(ops, "_import_causal_conv1d", lambda: _conv_standin(convs))
    monkeypatch.setattr("fp4train.models.mamba2.resolve_ssd_impl", lambda impl, device: impl)  # CPU stands in for CUDA
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, n_heads=8, head_dim=16, n_groups=2, d_state=16, chunk_size=16, ssd_impl="triton")
    u = torch.randn(2, 37, 64)
    outputs, grads = [], []
    for fused in (True, False):
        mixer.fused_causal_conv = fused
        mixer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixer(u)
        y.float().square().sum().backward()
        outputs.append(y)
        grads.append(mixer.conv1d.weight.grad.clone())
    conv_dim = 8 * 16 + 2 * 2 * 16
    assert convs == [{"x": (2, conv_dim, 37), "channel_last": True, "weight": (conv_dim, 4), "dtype": torch.bfloat16,
                      "activation": "silu"}]  # once: fused_causal_conv=False does not call it
    assert torch.equal(outputs[0], outputs[1])  # the stand-in computes what F.conv1d + SiLU do, in the same dtype
    assert torch.equal(grads[0], grads[1])


def test_causal_conv1d_falls_back_to_f_conv1d_saying_why(monkeypatch, caplog):
    monkeypatch.setattr(ops, "_import_causal_conv1d", lambda: "ModuleNotFoundError: No module named 'causal_conv1d'")
    with caplog.at_level(logging.INFO, logger=ops.__name__):
        assert ops.causal_conv1d_kernel(4) is None
        assert ops.causal_conv1d_kernel(4) is None
        monkeypatch.setattr(ops, "_import_causal_conv1d", lambda: _conv_standin([]))
        assert ops.causal_conv1d_kernel(5) is None
        assert ops.causal_conv1d_kernel(4) is not None
    messages = [r.message for r in caplog.records]
    assert len(messages) == 3 and "No module named 'causal_conv1d'" in messages[0] and "CAUSAL_CONV1D_FORCE_BUILD" in messages[0]
    assert "widths 2-4, got 5" in messages[1] and messages[2] == "Mamba-2 conv1d: causal-conv1d's causal_conv1d_fn"


def test_ssd_checks_conv_rows_pass_with_the_kernel_and_fail_without_it(monkeypatch):
    from experiments.bench import ssd_check

    monkeypatch.setattr(ops, "_import_causal_conv1d", lambda: _conv_standin([]))
    rows = ssd_check.check_causal_conv(ssd_check.TINY, "cpu")
    assert [r["check"] for r in rows] == ["causal conv torch bf16", "causal conv cuda bf16"]
    assert all(r["pass"] and set(r["grads"]) == {"xbc", "weight", "bias"} for r in rows)
    assert 1e-5 < rows[0]["fwd"] < 2e-2  # bf16 against float64: not equal, within the threshold
    monkeypatch.setattr(ops, "_import_causal_conv1d", lambda: "ModuleNotFoundError: No module named 'causal_conv1d'")
    rows = ssd_check.check_causal_conv(ssd_check.TINY, "cpu")
    assert rows[0]["pass"] and not rows[1]["pass"] and "No module named 'causal_conv1d'" in rows[1]["note"]
