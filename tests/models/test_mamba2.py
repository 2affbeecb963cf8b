"""Mamba-2 mixer: the chunked SSD scan against the step-by-step recurrence, grouping, init, norm."""

import pytest
import torch
import torch.nn.functional as F

from fp4train.models.mamba2 import Mamba2Mixer, RMSNorm, ssd_chunked, ssd_naive


def _scan_inputs(b=2, l=37, h=8, p=4, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=gen)
    x = torch.randn(b, l, h, p, **f64)
    dt = F.softplus(torch.randn(b, l, h, **f64) - 1)
    A = -torch.rand(h, **f64) * 4 - 0.1
    B, C = torch.randn(b, l, g, n, **f64), torch.randn(b, l, g, n, **f64)
    D = torch.randn(h, **f64)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 16, 37, 64])
def test_chunked_scan_equals_naive_recurrence_in_float64(chunk_size):
    args = _scan_inputs()  # l = 37: not a multiple of 5, 8, 16 or 64; G = 2 groups of 4 heads
    torch.testing.assert_close(ssd_chunked(*args, chunk_size), ssd_naive(*args), rtol=1e-10, atol=1e-10)


def test_groups_read_contiguous_heads():
    x, dt, A, B, C, D = _scan_inputs(h=6, g=3)
    y = ssd_chunked(x, dt, A, B, C, D, 8)
    for g in range(3):  # group g drives heads 2g, 2g+1 alone: a G = 1 scan of those heads
        heads = slice(2 * g, 2 * g + 2)
        y_g = ssd_chunked(x[:, :, heads], dt[:, :, heads], A[heads], B[:, :, g : g + 1], C[:, :, g : g + 1], D[heads], 8)
        torch.testing.assert_close(y[:, :, heads], y_g, rtol=1e-10, atol=1e-10)


def test_mixer_output_does_not_depend_on_chunk_size():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, n_heads=16, head_dim=8, n_groups=4, d_state=16, chunk_size=4).double()
    u = torch.randn(2, 23, 64, dtype=torch.float64)
    y4 = mixer(u)
    mixer.chunk_size = 64
    torch.testing.assert_close(mixer(u), y4, rtol=1e-10, atol=1e-10)


def test_gated_norm_gates_before_normalising_per_group():
    norm = RMSNorm(8, eps=1e-5, group_size=4)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    y, z = torch.randn(3, 8), torch.randn(3, 8)
    g = (y * F.silu(z)).view(3, 2, 4)
    expected = (g / (g.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).view(3, 8) * norm.weight
    torch.testing.assert_close(norm(y, gate=z), expected)


def test_init_ranges_and_no_weight_decay_marks():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, n_heads=64, head_dim=2, n_groups=1, d_state=16)
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    A = mixer.A_log.exp()
    assert A.min() >= 1 and A.max() <= 16
    assert torch.equal(mixer.D, torch.ones(64))
    marked = {name for name, p in mixer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert marked == {"A_log", "D", "dt_bias"}


def test_in_proj_splits_into_z_xbc_dt_widths():
    mixer = Mamba2Mixer(64, n_heads=16, head_dim=8, n_groups=2, d_state=16)
    d_inner = 16 * 8
    assert mixer.in_proj.out_features == 2 * d_inner + 2 * 2 * 16 + 16
    assert mixer.out_proj.in_features == d_inner
    assert mixer.conv1d.groups == mixer.conv1d.in_channels == d_inner + 2 * 2 * 16


def test_scan_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, n_heads=16, head_dim=8, n_groups=2, d_state=16, chunk_size=8)
    u = torch.randn(2, 20, 64)
    seen = []
    mixer.norm.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(u)
    assert seen == [torch.float32] and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), mixer(u), rtol=0.1, atol=0.05)
