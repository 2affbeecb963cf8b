"""Random Hadamard transform (RHT).

``R = diag(s) · H_d / sqrt(d)`` with ``H_d`` the Sylvester Hadamard matrix of size ``d`` (a
power of two) and ``s`` a ±1 sign vector fixed by a seed. ``R`` is orthogonal, so applying it
to both operands along a GEMM's reduction dimension leaves the exact product unchanged:
``(A R)(B R)ᵀ = A R Rᵀ Bᵀ = A Bᵀ``. It is applied tile-wise: the reduction dimension is cut
into groups of ``d`` and each group is multiplied by ``R``.

Source: "Pretraining LLMs with NVFP4" (arXiv 2509.25149) §4.2 and App. C — 16-point RHT on the
Wgrad inputs, one sign vector for the whole run; the quantization scale is computed on the
transformed values.
"""

from __future__ import annotations

from functools import lru_cache

import scipy.linalg
import torch

__all__ = ["rht_signs", "rht_matrix", "apply_rht"]


def _check_size(d: int) -> None:
    if not isinstance(d, int) or d < 2 or d & (d - 1):
        raise ValueError(f"Hadamard size must be a power of two >= 2, got {d!r}")


@lru_cache(maxsize=None)
def _rht_matrix_cpu(d: int, seed: int) -> torch.Tensor:
    h = torch.from_numpy(scipy.linalg.hadamard(d)).to(torch.float32)
    return (rht_signs(d, seed)[:, None] * h) / d**0.5


def rht_signs(d: int, seed: int) -> torch.Tensor:
    """The ±1 float32 sign vector ``s`` of length ``d`` for ``seed`` (the same on every device)."""
    _check_size(d)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (d,), generator=g).to(torch.float32) * 2 - 1


@lru_cache(maxsize=None)
def _rht_matrix_on(d: int, seed: int, device: torch.device) -> torch.Tensor:
    return _rht_matrix_cpu(d, seed).to(device)


def rht_matrix(d: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``R = diag(s) H_d / sqrt(d)`` as a float32 ``(d, d)`` tensor, made once per device (no
    host-to-device copy per call, none inside a CUDA graph capture); shared: do not modify it."""
    _check_size(d)
    return _rht_matrix_on(d, seed, torch.device(device))


def apply_rht(x: torch.Tensor, d: int, seed: int, inverse: bool = False) -> torch.Tensor:
    """Apply ``R`` (or ``Rᵀ = R⁻¹`` with ``inverse=True``) to each group of ``d`` along the last dim.

    Computed in float32; returns float32. The last dim must be a multiple of ``d``.
    """
    if x.shape[-1] % d:
        raise ValueError(
            f"RHT of size {d} needs the last dimension to be a multiple of {d}; got shape {tuple(x.shape)}"
        )
    r = rht_matrix(d, seed, x.device)
    if inverse:
        r = r.T
    groups = x.to(torch.float32).reshape(*x.shape[:-1], x.shape[-1] // d, d)
    return (groups @ r).reshape(x.shape)
