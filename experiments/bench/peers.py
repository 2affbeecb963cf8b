"""Peers' quantizers beside ours (issue 6, part 3d): torchao's NVFP4 and MXFP4 casts, eager and
under ``torch.compile``, on the benchmark's shapes, with how many of their code and scale bytes
equal ``fp4train.quant.quantize``'s.

torchao (``torchao.prototype.mx_formats``) is optional: without it, ``torchao_quantizers``
says why and the benchmark reports that instead of its rows. Its casts and ours are two
implementations of the same formats, so their agreement is measured, not assumed:

* MXFP4, OCP "floor" rule (``MXTensor.to_mx``): the same rule as ours; the CPU tests
  (``tests/quant/test_peer_torchao.py``) find them equal byte for byte on finite inputs.
* NVFP4, two-level (``NVFP4Tensor.to_nvfp4`` with a per-tensor scale from the tensor's amax):
  torchao computes the block scale as ``(amax_b / 6) / (amax / 2688)`` and clamps it at E4M3's
  smallest normal (2^-6); we follow Transformer Engine, ``amax_b · (s_enc · fp32(1/6))`` with
  ``s_enc = 2688 / amax`` and E4M3's subnormal scales kept (NUMERICS.md). Ties and near-ties
  of the block scale then round to different E4M3 values, and blocks far below the tensor's
  amax get different scales.
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
    """torchao's NVFP4 (two-level) and MXFP4 (floor) casts as ``PeerQuantizer``s, or a line
    saying why they are not available (not installed, or its API moved)."""
    try:
        import torchao
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    except ImportError as e:
        return f"torchao not available ({e})"

    def nvfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = per_tensor_amax_to_scale(x.abs().amax().float())
        t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=scale)
        return t.qdata.view(torch.uint8), t.scale.view(torch.uint8)

    def mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = MXTensor.to_mx(x, torch.float4_e2m1fn_x2, 32)
        return t.qdata.view(torch.uint8), t.scale.view(torch.uint8).reshape(x.shape[0], -1)

    v = torchao.__version__
    return [
        PeerQuantizer(f"torchao {v} NVFP4Tensor.to_nvfp4 (per-tensor scale from amax)", QuantSpec("nvfp4"), nvfp4),
        PeerQuantizer(f"torchao {v} MXTensor.to_mx (floor)", QuantSpec("mxfp4", scale_rule="floor"), mxfp4),
    ]


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
