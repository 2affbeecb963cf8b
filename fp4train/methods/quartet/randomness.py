"""Random bits for Quartet's backward keyed by an integer and a step counter on the device.

The Quartet backward needs, per call, SR bits for four operands and 32 random signs for ``R̃``.
Drawn from a ``torch.Generator`` seeded on the host, a CUDA graph would replay one step's bits at
every step. Here the bits are a pure function of ``(key, counter, stream, element index)``
computed with integer tensor ops: ``counter`` is the layer's 0-dim int64 step counter
(``fp4train.quant.SRStream``), read by the ops when they run, so a captured graph draws new bits
at every replay and eager and graphed runs draw the same ones.

The function is splitmix64's output mix (Steele, Lea and Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014, §3; the finaliser of ``fp4train.quant.stream_seed``) applied to
``stream_seed(key, stream) + γ·(counter·2^40 + index)``, γ = 0x9E3779B97F4A7C15, the top ``bits`` of
the 64-bit result taken. Distinct (counter, index) pairs give distinct inputs for up to 2^40
elements per call and 2^23 steps per stream before the counter part wraps into the index part.
"""

from __future__ import annotations

import torch

from fp4train.quant import SRStream, stream_seed

__all__ = ["counter_bits", "counter_signs"]

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 with the bits of the unsigned 64-bit ``v``."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 ``x`` (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_bits(stream: SRStream, sub: int, shape: tuple[int, ...], bits: int) -> torch.Tensor:
    """``bits``-bit uniform integers (int32, ``shape``) of sub-stream ``sub`` of ``stream`` at its
    current counter, on the counter's device (module doc)."""
    if not 1 <= bits <= 24:
        raise ValueError(f"bits must be in [1, 24], got {bits}")
    n = 1
    for d in shape:
        n *= d
    if n > 1 << 40:
        raise ValueError(f"counter_bits draws at most 2^40 values per call, got shape {shape}")
    device = stream.counter.device
    index = torch.arange(n, device=device, dtype=torch.int64)
    base = _signed(stream_seed(stream.key, sub))
    x = (stream.counter << 40) + index  # wraps as uint64 arithmetic does, in two's complement
    x = x * _signed(_GAMMA) + base
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    x = x ^ _shr(x, 31)
    return _shr(x, 64 - bits).to(torch.int32).reshape(shape)


def counter_signs(stream: SRStream, sub: int, n: int) -> torch.Tensor:
    """``n`` random signs ±1 (float32) of sub-stream ``sub`` of ``stream`` (``counter_bits``)."""
    return counter_bits(stream, sub, (n,), 1).to(torch.float32) * 2 - 1
