"""Stochastic-rounding streams keyed by an integer and a step counter on the device.

A ``torch.Generator`` is host state: a kernel seeded from it while a CUDA graph is captured
would replay the captured seed at every step. An ``SRStream`` is a fixed integer ``key`` and a
0-dim int64 ``counter`` tensor. On the GPU the quantize kernel reads the counter when it runs,
and draws Philox4x32-10 with key ``key mod (2^31 − 1)`` and counter words ``(element group,
counter, 0, 0)`` (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11, §2 and
§5: distinct counters give independent blocks). An in-place ``counter += 1`` captured in the same graph
therefore gives every replay new bits, and eager and graphed runs draw the same bits.

The torch reference path draws from a generator seeded with ``stream_seed(key, counter)``
(another random stream, as every reference SR stream is to the kernel's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SRStream", "stream_seed"]

_MASK64 = (1 << 64) - 1


def stream_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64's finaliser per part, Steele et al., OOPSLA
    2014): distinct streams per (seed, layer, operand, …), stable across processes and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


@dataclass(frozen=True, eq=False)
class SRStream:
    """SR bits of stream ``key`` at step ``counter`` (module doc). Accepted wherever
    ``quantize`` / ``quantize_pair`` take a generator."""

    key: int  # in [0, 2^63)
    counter: torch.Tensor  # 0-dim int64, on the device of the tensors it quantizes

    def __post_init__(self) -> None:
        if not 0 <= self.key < 2**63:
            raise ValueError(f"SRStream key must be in [0, 2^63), got {self.key}")
        if not isinstance(self.counter, torch.Tensor) or self.counter.dtype != torch.int64 or self.counter.dim() != 0:
            got = f"{self.counter.dtype} of shape {tuple(self.counter.shape)}" if isinstance(self.counter, torch.Tensor) else type(self.counter).__name__
            raise ValueError(f"SRStream counter must be a 0-dim int64 tensor, got {got}")

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator the torch reference path draws from: seeded with
        ``stream_seed(key, counter)``. Reads the counter on the host: for a CUDA counter (an
        operand the kernels do not handle, e.g. a token count that is not a whole number of
        blocks) a device synchronisation per call, and no CUDA graph capture — a captured host
        seed would replay one step's bits forever, so that is refused by name."""
        if self.counter.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "SR on the torch reference path (an operand the kernels do not handle: see "
                "fp4train.kernels.quantize.supports) draws from a host generator, which a CUDA graph "
                "would replay unchanged; train eagerly (trainer.cuda_graph=false) or give the operand "
                "whole blocks"
            )
        return torch.Generator(device=device).manual_seed(stream_seed(self.key, int(self.counter)))
