"""Quartet's device-keyed random bits (``fp4train.methods.quartet.randomness``): equal to the
splitmix64 formula computed in Python's unbounded integers (an oracle sharing no tensor code),
fresh with every counter step, uniform, and what ``quartet_linear`` draws under an ``SRStream``."""

import torch

from fp4train.methods.quartet.linear import quartet_linear
from fp4train.methods.quartet.numerics import QuartetConfig, hadamard_transform, quest_quantize
from fp4train.methods.quartet.randomness import counter_bits, counter_signs
from fp4train.quant import SRStream, stream_seed

U64 = (1 << 64) - 1


def _oracle(key: int, sub: int, counter: int, index: int, bits: int) -> int:
    x = (((counter << 40) + index) * 0x9E3779B97F4A7C15 + stream_seed(key, sub)) & U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    x ^= x >> 31
    return x >> (64 - bits)


def test_counter_bits_equal_the_formula_in_unbounded_integers():
    for key, counter in [(0, 0), (12345, 7), (2**63 - 1, 2**23 - 1), (987654321987654321, 1_000_000)]:
        stream = SRStream(key, torch.tensor(counter, dtype=torch.int64))
        got = counter_bits(stream, 3, (4, 9), 16).flatten().tolist()
        assert got == [_oracle(key, 3, counter, i, 16) for i in range(36)], (key, counter)


def test_every_counter_step_and_sub_stream_draws_new_bits():
    counter = torch.zeros((), dtype=torch.int64)
    stream = SRStream(42, counter)
    a = counter_bits(stream, 0, (1024,), 16)
    other_sub = counter_bits(stream, 1, (1024,), 16)
    counter += 1  # in place, as a layer's sr_step advances inside a captured graph
    b = counter_bits(stream, 0, (1024,), 16)
    assert (a == b).float().mean() < 0.01 and (a == other_sub).float().mean() < 0.01


def test_counter_bits_are_uniform():
    bits = counter_bits(SRStream(7, torch.tensor(3, dtype=torch.int64)), 0, (200_000,), 4)
    counts = torch.bincount(bits.flatten(), minlength=16).double()
    expected = bits.numel() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # chi-square, 15 degrees of freedom: p ≈ 1e-5 at 50
    signs = counter_signs(SRStream(7, torch.tensor(3, dtype=torch.int64)), 4, 100_000)
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.02


def _grads(seed):
    torch.manual_seed(0)
    x = torch.randn(64, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    quartet_linear(x, w, seed=seed).backward(torch.randn(64, 32, generator=torch.Generator().manual_seed(1)))
    return x.grad, w.grad


def test_quartet_linear_under_a_stream_is_reproducible_and_advances_with_the_counter():
    counter = torch.zeros((), dtype=torch.int64)
    first = _grads(SRStream(5, counter))
    again = _grads(SRStream(5, counter))
    counter += 1
    later = _grads(SRStream(5, counter))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], later[1]) and not torch.equal(first[0], later[0])


def test_quartet_gradients_under_streams_are_unbiased():
    # the mean of dW over 200 counter steps approaches the unquantized-backward gradient
    counter = torch.zeros((), dtype=torch.int64)
    torch.manual_seed(0)
    x, w = torch.randn(64, 64), torch.randn(32, 64)
    dy = torch.randn(64, 32)
    total = torch.zeros_like(w)
    draws = []
    for _ in range(200):
        wr = w.clone().requires_grad_(True)
        quartet_linear(x, wr, seed=SRStream(9, counter)).backward(dy)
        total += wr.grad
        draws.append(wr.grad)
        counter += 1
    mean = total / 200
    spread = torch.stack(draws).std(0) / 200 ** 0.5
    z = ((mean - _expected_dw(x, w, dy)) / spread.clamp_min(1e-12)).abs()
    assert float(z.max()) < 6.0


def _expected_dw(x, w, dy):
    """E[dW]: the backward GEMM unquantized (SR is unbiased and the transforms cancel), masked by
    the forward's trust mask, on the forward-quantized x (Quartet's Wgrad operand)."""
    cfg = QuartetConfig()
    qx, qw = quest_quantize(x, cfg), quest_quantize(w, cfg)
    g_w = dy.T @ qx.values
    return hadamard_transform(g_w * qw.mask, cfg.group, inverse=True)
