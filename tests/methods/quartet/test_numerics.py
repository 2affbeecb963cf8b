"""Quartet's numerics against the definitions (fp4train/methods/quartet/README.md: facts and sources).

The oracle below shares no code with ``fp4train.methods.quartet``: NumPy float64 statistics and
transforms (the Sylvester matrix built by Kronecker products), E2M1 rounding by ml_dtypes'
``float4_e2m1fn`` cast (round to nearest even), stochastic rounding by the documented bit rule
("up iff floor(f·2^b) + r >= 2^b") on neighbours found by ``searchsorted`` on the E2M1 grid. The
SR bits and the backward signs are drawn through the streams that ``quartet_linear`` documents.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fp4train.methods.quartet import (
    QUEST_ALPHA,
    QuartetConfig,
    backward_signs,
    hadamard_transform,
    quartet_linear,
    quest_quantize,
    quest_scale_exponent,
    sr_quantize,
)
from fp4train.quant import rht_matrix, rht_signs, stream_seed

G = 32
F32 = np.float32
GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)
CFG = QuartetConfig()


# ---------------------------------------------------------------------------------------------
# the oracle


def sylvester(d: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def o_transform(x: np.ndarray, signs=None, inverse: bool = False) -> np.ndarray:
    """x R per 32-group, R = diag(s) H / sqrt(32); float64 arithmetic, one rounding to float32."""
    m, k = x.shape
    g = x.astype(np.float64).reshape(m, k // G, G)
    if signs is not None and not inverse:
        g = g * signs
    out = (g @ sylvester(G)) * (1.0 / np.sqrt(32.0))
    if signs is not None and inverse:
        out = out * signs
    return out.astype(F32).reshape(m, k)


def e2m1(t: np.ndarray) -> np.ndarray:
    """RN-even, saturating cast onto E2M1 (NaN stays NaN: ml_dtypes maps it to 0, so mask it)."""
    q = np.clip(t, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(F32)
    return np.where(np.isnan(t), np.nan, q).astype(F32)


def o_quest(v: np.ndarray, stat: str = "std", alpha: float = QUEST_ALPHA, eps: float = 1e-8):
    """QuEST forward on already-transformed v: (values, k per block, finite per block, mask)."""
    m, k = v.shape
    blocks = v.astype(np.float64).reshape(m, k // G, G)
    with np.errstate(invalid="ignore", over="ignore"):
        sigma = blocks.std(axis=-1) if stat == "std" else np.sqrt((blocks**2).mean(axis=-1))
    s = alpha * sigma + eps
    finite = np.isfinite(s)
    kexp = np.where(finite & (s > 0), np.frexp(np.where(finite & (s > 0), s, 1.0))[1] - 1, -127)
    kexp = np.clip(kexp, -127, 127)
    x_scale = np.where(finite, np.ldexp(1.0, kexp), np.nan).astype(F32)
    scaled = (blocks / x_scale[..., None]).astype(F32).reshape(m, k)
    with np.errstate(invalid="ignore"):
        mask = ~(np.abs(scaled) >= 6)
    values = (e2m1(scaled).reshape(m, k // G, G) * x_scale[..., None]).astype(F32).reshape(m, k)
    return values, kexp, finite, mask


def o_sr(v: np.ndarray, bits: np.ndarray, sr_bits: int = 16):
    """Backward quantizer on already-transformed v with the given integer bits: (values, factor)."""
    m, k = v.shape
    blocks = v.reshape(m, k // G, G)
    amax = np.abs(blocks).max(axis=-1).astype(np.float64)
    finite = np.isfinite(amax)
    pos = finite & (amax > 0)
    kexp = np.where(pos, np.frexp(np.where(pos, amax, 1.0))[1] - 1 - 2, -127).clip(-127, 127)
    mult = np.where(finite, np.ldexp(1.0, -kexp), np.nan).astype(F32)
    scaled = ((blocks * mult[..., None]).astype(F32) * F32(0.75)).astype(F32).reshape(m, k)
    t = np.abs(scaled).astype(np.float64)
    idx = np.clip(np.searchsorted(GRID, t, side="right") - 1, 0, 7)
    lo, hi = GRID[idx], GRID[np.clip(idx + 1, 0, 7)]
    with np.errstate(invalid="ignore"):
        frac = np.where(hi > lo, (t - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        up = np.floor(frac * 2.0**sr_bits) + bits >= 2.0**sr_bits
    q = np.copysign(np.where(up, hi, lo), scaled)
    q = np.where(np.isnan(scaled), np.nan, q)
    x_scale = np.ldexp(1.0, kexp)
    values = (q.reshape(m, k // G, G) * x_scale[..., None]).astype(F32).reshape(m, k)
    return values, 1 / 0.75


def stream_bits(seed: int, i: int, shape) -> np.ndarray:
    """Operand i's SR bits: the documented stream of quartet_linear."""
    gen = torch.Generator().manual_seed(stream_seed(seed, i))
    return torch.randint(0, 2**16, shape, generator=gen, dtype=torch.int32).numpy()


def pad_cols(a: np.ndarray) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, -a.shape[1] % G)))


def heavy_tailed(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.exp(torch.randn(*shape, generator=g))


# ---------------------------------------------------------------------------------------------
# forward quantizer


@pytest.mark.parametrize("stat", ["std", "rms"])
def test_forward_values_lie_on_the_mxfp4_grid_in_the_hadamard_domain(stat):
    """Values, scales and trust mask equal the oracle bit for bit; every value is an E2M1 number
    times its block's power-of-two scale (the ml_dtypes cast leaves value / scale unchanged)."""
    x = heavy_tailed(64, 128)
    x[3, 5] = 300.0  # an outlier in the input domain
    cfg = QuartetConfig(scale_stat=stat)
    q = quest_quantize(x, cfg)
    v = o_transform(x.numpy())
    assert torch.equal(hadamard_transform(x, G), torch.from_numpy(v))
    values, kexp, finite, mask = o_quest(v, stat)
    assert finite.all()
    np.testing.assert_array_equal(q.values.numpy(), values)
    np.testing.assert_array_equal(q.scale_codes.numpy(), (kexp + 127).astype(np.uint8))
    np.testing.assert_array_equal(q.mask.numpy(), mask)
    x_scale = np.repeat(q.scales.numpy(), G, axis=1)
    assert (np.log2(q.scales.numpy()) % 1 == 0).all()  # E8M0: powers of two
    elements = q.values.numpy() / x_scale
    np.testing.assert_array_equal(elements.astype(ml_dtypes.float4_e2m1fn).astype(F32), elements)
    assert np.abs(elements).max() <= 6


def test_quest_scale_is_alpha_sigma_floored_to_a_power_of_two():
    """X = 2^floor(log2(α·σ + ε)), α = 2.92247856/6, ε = 1e-8, σ the block's population std."""
    assert QUEST_ALPHA == 2.92247856 / 6
    g = torch.Generator().manual_seed(3)
    v = torch.randn(16, 4 * G, generator=g) * torch.logspace(-6, 6, 16)[:, None]
    k, finite = quest_scale_exponent(v, CFG)
    blocks = v.double().reshape(16, 4, G)
    sigma = blocks.std(dim=-1, correction=0)
    expect = torch.floor(torch.log2(QUEST_ALPHA * sigma + 1e-8))
    assert finite.all()
    assert torch.equal(k.double(), expect)


BLOCKS = {  # one block of 32 values in the quantizer's own (transformed) domain
    "zeros": np.zeros(G),
    "one_outlier": np.r_[1e4, np.full(G - 1, 1e-3)],
    "constant": np.full(G, 5.0),  # std 0: the scale is eps's, everything clips
    "tiny": np.linspace(-1, 1, G) * 1e-12,  # eps dominates: X = 2^-27
    "huge": np.linspace(-1, 1, G) * 3e37,  # squares overflow float32
    "subnormal": np.linspace(-1, 1, G) * 1e-40,
    "exact_six": np.r_[6.0, -6.0, np.zeros(G - 2)],
}


EPS_BINADE = {("zeros", "std"), ("zeros", "rms"), ("tiny", "std"), ("tiny", "rms"), ("constant", "std")}


@pytest.mark.parametrize("stat", ["std", "rms"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_quest_scale_on_adversarial_blocks(name, stat):
    """Each adversarial block beside an ordinary one: codes, values and mask equal the oracle,
    and the ordinary block is untouched by its neighbour."""
    g = torch.Generator().manual_seed(4)
    normal = torch.randn(G, generator=g).numpy()
    v = np.stack([np.r_[BLOCKS[name], normal], np.r_[normal, BLOCKS[name]]]).astype(F32)
    cfg = QuartetConfig(scale_stat=stat)
    q = quest_quantize(torch.from_numpy(v), cfg, transform=False)
    values, kexp, finite, mask = o_quest(v, stat)
    assert finite.all()
    np.testing.assert_array_equal(q.values.numpy(), values)
    np.testing.assert_array_equal(q.scale_codes.numpy(), (kexp + 127).astype(np.uint8))
    np.testing.assert_array_equal(q.mask.numpy(), mask)
    if (name, stat) in EPS_BINADE:  # α·σ + ε ≈ 1e-8: X = 2^floor(log2 1e-8) = 2^-27
        assert int(q.scale_codes[0, 0]) - 127 == math.floor(math.log2(1e-8)) == -27
    if (name, stat) == ("constant", "std"):  # σ = 0: every element of the block clips to 6·2^-27
        assert not q.mask[0, :G].any() and (q.values[0, :G] == 6 * 2.0**-27).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_blocks_become_nan_never_finite(bad):
    """A NaN/±Inf anywhere in a block: NaN scale (E8M0 0xFF) and NaN values for that block only;
    the mask stays True there (nothing was clipped: the gradient is passed, not zeroed)."""
    v = torch.randn(2, 3 * G)
    v[1, G + 7] = bad
    for stat in ("std", "rms"):
        q = quest_quantize(v, QuartetConfig(scale_stat=stat), transform=False)
        assert int(q.scale_codes[1, 1]) == 0xFF and torch.isnan(q.scales[1, 1])
        assert torch.isnan(q.values[1, G : 2 * G]).all()
        nan_free = torch.ones_like(q.values, dtype=torch.bool)
        nan_free[1, G : 2 * G] = False
        assert torch.isfinite(q.values[nan_free]).all()
        assert q.mask[1, G : 2 * G].all()
    qb = sr_quantize(v, CFG, transform=False, generator=torch.Generator().manual_seed(0))
    assert int(qb.scale_codes[1, 1]) == 0xFF and torch.isnan(qb.values[1, G : 2 * G]).all()
    assert torch.isfinite(qb.values[0]).all() and torch.isfinite(qb.values[1, :G]).all()


def test_trust_mask_is_exactly_the_clipped_set():
    """In a block with scale X: |v| >= 6X is clipped (to ±6X, mask False; 6X itself included);
    everything else rounds to nearest (error <= X, the half-step of the top binade), mask True."""
    base = np.r_[np.tile([0.9, -0.9], 15), 0.0, 0.0]  # σ ≈ 0.87: α·σ ∈ [0.25, 0.5) → X = 0.25
    v = base.astype(F32)[None].repeat(5, 0)
    v[0, 30], v[1, 30], v[2, 30], v[3, 30] = 1.49, 1.5, 1.51, -1.5
    v[4, 30], v[4, 31] = -1.6, 1.55
    q = quest_quantize(torch.from_numpy(v), CFG, transform=False)
    assert torch.equal(q.scales, torch.full((5, 1), 0.25))  # none of these moves σ out of its binade
    clipped = ~q.mask.numpy()
    np.testing.assert_array_equal(clipped, np.abs(v) >= 6 * 0.25)
    assert clipped.sum() == 5 and not clipped[0].any()
    vals = q.values.numpy()
    np.testing.assert_array_equal(vals[clipped], np.copysign(1.5, v[clipped]))
    assert (np.abs(vals - v)[~clipped] <= 0.25).all()


def test_std_statistic_ignores_the_first_input_element_of_each_group():
    """With the Sylvester H, mean(x H / √32) = x_0 / √32, so σ² = (‖x‖² − x_0²) / 32: a lone
    outlier at a group's first feature is invisible to the std scale and clips; RMS sees it."""
    x = torch.zeros(1, G)
    x[0, 0] = 10.0
    v = hadamard_transform(x, G)
    assert torch.allclose(v, torch.full_like(v, 10.0 / math.sqrt(32)))
    q_std = quest_quantize(x, QuartetConfig(scale_stat="std"))
    assert int(q_std.scale_codes) - 127 == math.floor(math.log2(1e-8))
    assert not q_std.mask.any() and torch.allclose(q_std.values, torch.full_like(v, 6 * 2.0**-27))
    q_rms = quest_quantize(x, QuartetConfig(scale_stat="rms"))
    assert q_rms.mask.all() and (q_rms.values - v).abs().max() <= 0.25 * v.abs().max()
    y = heavy_tailed(4, G, seed=5)
    k, _ = quest_scale_exponent(hadamard_transform(y, G), CFG)
    sigma = (y.double()[:, 1:].pow(2).sum(1) / G).sqrt()
    assert torch.equal(k[:, 0].double(), torch.floor(torch.log2(QUEST_ALPHA * sigma + 1e-8)))


# ---------------------------------------------------------------------------------------------
# backward quantizer


def test_backward_quantizer_matches_the_oracle_and_never_clips():
    v = heavy_tailed(16, 4 * G, seed=6)
    v[0, :G] = 0  # a zero block
    bits = torch.randint(0, 2**16, v.shape, generator=torch.Generator().manual_seed(7), dtype=torch.int32)
    qb = sr_quantize(v, CFG, transform=False, rand_bits=bits)
    values, factor = o_sr(v.numpy(), bits.numpy())
    np.testing.assert_array_equal(qb.values.numpy(), values)
    assert qb.factor == factor == 4 / 3
    assert (qb.values[0, :G] == 0).all() and int(qb.scale_codes[0, 0]) == 0
    amax = v.abs().reshape(16, 4, G).amax(-1)
    assert (0.75 * amax / qb.scales < 6).all()  # ¾ · amax / 2^(⌊log2 amax⌋ - 2) < 6: nothing clips
    assert ((qb.values / qb.scales.repeat_interleave(G, 1)).abs() <= 6).all()


def test_sr_is_unbiased():
    """20k draws of each row: the mean of the dequantized values is v = x R̃, within 5 standard
    errors (SR's variance per element is at most step²/4) plus the 2^-16 bit-quantization bias."""
    draws = 20_000
    x = heavy_tailed(2, 2 * G, seed=8)
    signs = rht_signs(G, 11)
    v = hadamard_transform(x, G, signs).double()
    rows = x.repeat(draws, 1)
    qb = sr_quantize(rows, CFG, signs, generator=torch.Generator().manual_seed(9))
    d = qb.dequantized.double().reshape(draws, 2, 2 * G)
    step = (d.amax(0) - d.amin(0)).clamp(min=1e-30)
    err = (d.mean(0) - v).abs()
    sem = step / (2 * draws**0.5)
    assert (err <= 5 * sem + step * 2**-16).all(), (err / sem).max()
    assert err.max() < 0.02 * v.abs().max()


def test_output_side_signs_do_not_randomize_a_sign_symmetric_quantizer():
    """Why backward signs go on the input side: the published code's H·diag(s) flips the signs of
    the transform's outputs, and Q(v·s) = Q(v)·s exactly (same bits), so its re-randomization
    changed nothing; diag(s)·H mixes the inputs differently and changes the quantized numbers."""
    x = heavy_tailed(8, 2 * G, seed=10)
    s = rht_signs(G, 12)
    v = hadamard_transform(x, G)
    bits = torch.randint(0, 2**16, v.shape, generator=torch.Generator().manual_seed(13), dtype=torch.int32)
    out_side = sr_quantize(v * s.repeat(2), CFG, transform=False, rand_bits=bits).values
    plain = sr_quantize(v, CFG, transform=False, rand_bits=bits).values
    assert torch.equal(out_side, plain * s.repeat(2))
    in_side = sr_quantize(x, CFG, s, rand_bits=bits).values
    assert not torch.equal(in_side.abs(), plain.abs())
    assert torch.equal(rht_matrix(G, 12), torch.from_numpy(np.diag(s.numpy()) @ sylvester(G) / np.sqrt(32.0)).float())


# ---------------------------------------------------------------------------------------------
# quartet_linear


def _inputs(t=48, n_in=64, n_out=96, seed=14):
    x = heavy_tailed(t, n_in, seed=seed).requires_grad_()
    w = (heavy_tailed(n_out, n_in, seed=seed + 1) * 0.1).requires_grad_()
    b = torch.randn(n_out, generator=torch.Generator().manual_seed(seed + 2)).requires_grad_()
    dy = heavy_tailed(t, n_out, seed=seed + 3)
    return x, w, b, dy


def _grads(x, w, b, dy, **kw):
    for p in (x, w, b):
        p.grad = None
    y = quartet_linear(x, w, b, **kw)
    y.backward(dy)
    return y.detach(), x.grad.clone(), w.grad.clone(), b.grad.clone()


@pytest.mark.parametrize("rht", ["random", "fixed"])
@pytest.mark.parametrize("t", [64, 50])
def test_hadamard_transforms_cancel_in_each_gemm(rht, t):
    """quantize=False keeps every transform (forward H on x and W, backward R̃ on both operands of
    Dgrad and Wgrad, the inverse H on the masked gradients): y, dx, dW, db are those of F.linear."""
    x, w, b, dy = _inputs(t=t)
    y, dx, dw, db = _grads(x, w, b, dy, config=QuartetConfig(quantize=False, backward_rht=rht), seed=1)
    x2, w2, b2 = (p.detach().clone().requires_grad_() for p in (x, w, b))
    ref = F.linear(x2, w2, b2)
    ref.backward(dy)
    for got, want in ((y, ref.detach()), (dx, x2.grad), (dw, w2.grad), (db, b2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    r = torch.from_numpy(np.diag(backward_signs(CFG, 5).numpy()) @ sylvester(G) / np.sqrt(32.0))
    torch.testing.assert_close(r @ r.T, torch.eye(G, dtype=torch.float64))


@pytest.mark.parametrize("rht", ["random", "fixed"])
def test_backward_matches_a_reference_written_from_the_definitions(rht):
    """y = X_q W_qᵀ + b; dX = (Q_b(dY R̃) Q_b(W_qᵀ R̃)ᵀ ⊙ M_x) Hᵀ; dW = (Q_b(dYᵀ R̃) Q_b(X_qᵀ R̃)ᵀ
    ⊙ M_w) Hᵀ (tokens zero-padded to 64); db = Σ dY — every rounding decision identical, the
    products compared after float64 (reference) vs float32 (emulation) accumulation."""
    seed = 21
    cfg = QuartetConfig(backward_rht=rht)
    x, w, b, dy = _inputs(t=48)
    y, dx, dw, db = _grads(x, w, b, dy, config=cfg, seed=seed)

    xn, wn, dyn = x.detach().numpy(), w.detach().numpy(), dy.numpy()
    x_q, _, _, m_x = o_quest(o_transform(xn))
    w_q, _, _, m_w = o_quest(o_transform(wn))
    signs = None if rht == "fixed" else rht_signs(G, stream_seed(seed, 4)).numpy().astype(np.float64)

    def qb(a, i):
        return o_sr(o_transform(a, signs), stream_bits(seed, i, a.shape))

    (a0, f0), (a1, f1) = qb(dyn, 0), qb(np.ascontiguousarray(w_q.T), 1)
    g_x = (a0.astype(np.float64) @ a1.T.astype(np.float64)) * (f0 * f1)
    dx_ref = o_transform((g_x * m_x).astype(F32), inverse=True)
    (a2, f2), (a3, f3) = qb(pad_cols(dyn.T), 2), qb(pad_cols(x_q.T), 3)
    g_w = (a2.astype(np.float64) @ a3.T.astype(np.float64)) * (f2 * f3)
    dw_ref = o_transform((g_w * m_w).astype(F32), inverse=True)
    y_ref = x_q.astype(np.float64) @ w_q.T.astype(np.float64) + b.detach().numpy()

    assert (~m_x).any() and (~m_w).any()  # the trust masks are exercised
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, dyn.sum(0))):
        want = torch.from_numpy(np.asarray(want, dtype=np.float64)).float()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_gradients_flow_only_through_unclipped_entries():
    """Transformed back into the forward Hadamard domain, dX and dW vanish exactly where the
    forward clipped (mask False) and carry the GEMM's gradient elsewhere."""
    x, w, b, dy = _inputs(t=64, seed=30)
    with torch.no_grad():
        x[::4, ::32] *= 200  # outliers at each group's first feature: invisible to σ, so they clip
        w[::3, 1::32] *= 300
    _, dx, dw, _ = _grads(x, w, b, dy, seed=2)
    m_x = quest_quantize(x.detach(), CFG).mask
    m_w = quest_quantize(w.detach(), CFG).mask
    assert (~m_x).sum() >= 16 and (~m_w).sum() >= 32
    for grad, mask in ((dx, m_x), (dw, m_w)):
        back = hadamard_transform(grad, G)  # = G ⊙ M up to two float32 roundings
        tol = 1e-6 * back.abs().max()
        assert (back[~mask].abs() <= tol).all()
        assert (back[mask].abs() > tol).float().mean() > 0.95


def test_backward_gemms_are_unbiased_over_seeds():
    """E over SR bits and random signs of dX, dW equals the unquantized-backward gradient of the
    same forward, ((dY W_q) ⊙ M_x) Hᵀ and ((dYᵀ X_q) ⊙ M_w) Hᵀ, within 6 standard errors."""
    x, w, b, dy = _inputs(t=32, n_in=32, n_out=32, seed=40)
    n = 300
    dxs, dws = [], []
    for seed in range(n):
        _, dx, dw, _ = _grads(x, w, b, dy, seed=seed)
        dxs.append(dx.double())
        dws.append(dw.double())
    qx, qw = quest_quantize(x.detach(), CFG), quest_quantize(w.detach(), CFG)
    dx_ref = hadamard_transform((dy @ qw.values) * qx.mask, G, inverse=True).double()
    dw_ref = hadamard_transform((dy.T @ qx.values) * qw.mask, G, inverse=True).double()
    for draws, ref in ((torch.stack(dxs), dx_ref), (torch.stack(dws), dw_ref)):
        sem = draws.std(0) / n**0.5
        z = (draws.mean(0) - ref).abs() / sem.clamp(min=1e-12)
        assert z.max() < 6, z.max()
        assert (draws[0] - ref).norm() > 5 * (draws.mean(0) - ref).norm()  # the noise averages out


def test_seed_fixes_the_backward_and_none_draws_fresh():
    x, w, b, dy = _inputs()
    a = _grads(x, w, b, dy, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, _grads(x, w, b, dy, seed=7)))
    c = _grads(x, w, b, dy, seed=8)
    assert torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1]) and not torch.equal(a[2], c[2])
    torch.manual_seed(0)
    d = _grads(x, w, b, dy)
    e = _grads(x, w, b, dy)
    torch.manual_seed(0)
    f = _grads(x, w, b, dy)
    assert not torch.equal(d[1], e[1]) and torch.equal(d[1], f[1]) and torch.equal(d[2], f[2])


def test_nan_and_inf_propagate_through_quartet_linear():
    """A NaN/Inf input poisons its token's outputs (its block's scale is NaN) and, through Wgrad's
    reduction over tokens, the weight gradient; a NaN output gradient poisons its token's dX row,
    its output's dW row and db entry. Nothing else turns non-finite, nothing non-finite turns finite."""
    x, w, b, dy = _inputs(t=64)
    with torch.no_grad():
        x[5, 40] = float("nan")
        x[9, 3] = float("inf")
    y, dx, dw, db = _grads(x, w, b, dy, seed=3)
    bad = torch.zeros(64, dtype=torch.bool)
    bad[[5, 9]] = True
    assert torch.isnan(y[bad]).all() and torch.isfinite(y[~bad]).all()
    assert torch.isnan(dw).all() and torch.isfinite(dx).all() and torch.isfinite(db).all()

    x, w, b, dy = _inputs(t=64)
    dy[20, 50] = float("nan")
    y, dx, dw, db = _grads(x, w, b, dy, seed=3)
    assert torch.isfinite(y).all()
    assert torch.isnan(dx[20]).all() and torch.isfinite(torch.cat([dx[:20], dx[21:]])).all()
    assert torch.isnan(dw[50]).all() and torch.isfinite(torch.cat([dw[:50], dw[51:]])).all()
    assert torch.isnan(db[50]) and torch.isfinite(torch.cat([db[:50], db[51:]])).all()


def test_shapes_dtypes_and_errors():
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    y = quartet_linear(x, w, seed=0)
    assert y.shape == (2, 5, 32) and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert quartet_linear(x.detach().float(), w.detach()).dtype == torch.float32
    with pytest.raises(ValueError, match="multiple of 32"):
        quartet_linear(torch.randn(4, 48), torch.randn(32, 48))
    with pytest.raises(ValueError, match="multiple of 32"):
        quartet_linear(torch.randn(4, 64), torch.randn(40, 64))
    with pytest.raises(ValueError, match="scale_stat"):
        QuartetConfig(scale_stat="mad")
    with pytest.raises(ValueError, match="backward_rht"):
        QuartetConfig(backward_rht="orthogonal")
    with pytest.raises(ValueError, match="never clips"):
        QuartetConfig(backward_scale=1.0)
