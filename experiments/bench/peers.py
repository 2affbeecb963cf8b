"""Peers' quantizers beside ours (issue 6, part 3d): torchao's NVFP4 and MXFP4 casts, eager and
under ``torch.compile``, on the benchmark's shapes, with how many of their code and scale bytes
equal ``fp4train.quant.quantize``'s.

torchao (``torchao.prototype.mx_formats``, a prototype API: the dev extras pin 0.18) is
optional: without it, or when a trial cast fails, ``torchao_quantizers`` says why and the
benchmark reports that instead of its rows. Its casts and ours are two implementations of the
same formats, so their agreement is measured, not assumed:

* MXFP4, OCP "floor" rule (``MXTensor.to_mx`` with ``ScaleCalculationMode.FLOOR``): the same
  rule as ours, with one exception: torchao divides by at least 2^-126 (a workaround in its
  code for Inductor's subnormals) while storing the E8M0 scale 2^-127, so in blocks whose amax
  is below 2^-124 its codes are half ours (and decode to half the values they stand for). The
  CPU tests (``tests/quant/test_peer_torchao.py``) find all other bytes equal on the adversarial
  inputs, and that exception where it applies.
* NVFP4, two-level (``NVFP4Tensor.to_nvfp4`` with a per-tensor scale from the tensor's amax):
  torchao computes the block scale as ``(amax_b / 6) / (amax / 2688)`` and clamps it at E4M3's
  smallest normal (2^-6), and the element as ``x · ((1 / (amax / 2688)) / s_b)``; we follow
  Transformer Engine, ``amax_b · (s_enc · fp32(1/6))`` with ``s_enc = 2688 / amax``, E4M3's
  subnormal scales kept (``docs/numerics.md``, NVFP4). So ties and near-ties round differently, of block scales
  and of elements (a product landing on a tie of the E2M1 grid in one order and beside it in the
  other), and blocks more than ~2^15 below the tensor's amax get different scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fp4train.quant import QuantSpec, quantize

__all__ = ["PeerQuantizer", "torchao_quantizers", "agreement"]


@dataclass(frozen=True)
class PeerQuantizer:
    """A peer's cast of a row-major (M, K) tensor to one of our specs: ``cast(x)`` returns its
    packed codes (uint8, (M, K/2), the even element in the low nibble) and block scales (uint8
    bytes, (M, K/block)), the layout of ``QuantizedTensor.data`` / ``.scales``."""

    name: str
    spec: QuantSpec
    cast: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def torchao_quantizers() -> list[PeerQuantizer] | str:
    """torchao's NVFP4 (two-level) and MXFP4 (floor) casts as ``PeerQuantizer``s, each tried once
    on a small CPU tensor, or a line saying why they are not available (not installed, or a
    trial cast failed: its API moved)."""
    try:
        import torchao
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    except ImportError as e:
        return f"torchao not available ({e})"

    def nvfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = per_tensor_amax_to_scale(x.abs().amax().float())
        t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=scale)
        return t.qdata.view(torch.uint8), t.scale.view(torch.uint8)

    def mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32, scaling_mode=ScaleCalculationMode.FLOOR)
        return t.qdata.view(torch.uint8), t.scale.view(torch.uint8).reshape(x.shape[0], -1)

    v = torchao.__version__
    peers = [
        PeerQuantizer(f"torchao {v} NVFP4Tensor.to_nvfp4 (per-tensor scale from amax)", QuantSpec("nvfp4"), nvfp4),
        PeerQuantizer(f"torchao {v} MXTensor.to_mx (floor)", QuantSpec("mxfp4", scale_rule="floor"), mxfp4),
    ]
    trial = torch.linspace(-6, 6, 32 * 64).reshape(32, 64)
    for peer in peers:
        try:  # an API that moved shows here, not at import
            agreement(peer, trial)
        except Exception as e:
            return f"torchao {v}: {peer.name} failed on a trial cast ({type(e).__name__}: {e})"
    return peers


def agreement(peer: PeerQuantizer, x: torch.Tensor) -> dict[str, float]:
    """Fractions of the peer's code bytes and scale bytes that equal ``quantize(x, peer.spec)``'s
    (each byte holds two codes); the shapes must match."""
    ours = quantize(x, peer.spec)
    codes, scales = peer.cast(x)
    if codes.shape != ours.data.shape or scales.shape != ours.scales.shape:
        raise ValueError(
            f"{peer.name}: codes {tuple(codes.shape)} / scales {tuple(scales.shape)} against ours "
            f"{tuple(ours.data.shape)} / {tuple(ours.scales.shape)}"
        )
    return {"codes_equal": (codes == ours.data).float().mean().item(),
            "scales_equal": (scales == ours.scales).float().mean().item()}
