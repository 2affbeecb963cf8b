"""Our MXFP4 cast against a peer's: torchao's ``MXTensor.to_mx`` (OCP floor rule), an
implementation that shares no code with ours, byte for byte on the oracle suite's adversarial
inputs (finite rows: how a peer encodes NaN/Inf is its own choice), and the one place where
torchao departs from the rule (blocks below 2^-124). NVFP4 is measured, not tested: torchao's
block-scale rule differs from Transformer Engine's, which we follow (``experiments/bench/peers.py``)."""

import sys

import numpy as np
import pytest
import torch

from experiments.bench.peers import PeerQuantizer, agreement, torchao_quantizers
from fp4train.quant import QuantSpec, quantize
from tests.quant.test_block_quantizers import adversarial, extremes

INPUTS = {"adversarial": adversarial, "extremes": extremes}


def _peer(name_part: str) -> PeerQuantizer:
    peers = torchao_quantizers()
    assert not isinstance(peers, str), peers  # torchao is in the dev extras
    found = [p for p in peers if name_part in p.name]
    assert found, f"no torchao cast named like {name_part!r} among {[p.name for p in peers]}"
    return found[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("data", INPUTS)
def test_mxfp4_floor_equals_torchao_byte_for_byte(data, dtype):
    x = torch.from_numpy(np.asarray(INPUTS[data](64, 128))).float()
    x = x[torch.isfinite(x).all(dim=1)].to(dtype).contiguous()
    assert x.shape[0] >= 32  # most rows are finite: the comparison covers the suite's cases
    assert agreement(_peer("to_mx"), x) == {"codes_equal": 1.0, "scales_equal": 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torchao_departs_from_the_floor_rule_only_below_2_to_the_minus_124(dtype):
    """A block whose amax is in [2^-125, 2^-124) has the E8M0 scale 2^-127 (code 0) under the OCP
    rule; torchao stores that code but divides by 2^-126, so its codes differ there. One block
    above the bound (scale 2^-126) and one of ordinary size agree."""
    ramp = torch.linspace(0, 1.5, 32)
    x = torch.stack([ramp * 2.0**-125, ramp * 2.0**-123, ramp]).to(dtype)
    codes, scales = _peer("to_mx").cast(x)
    ours = quantize(x, QuantSpec("mxfp4", scale_rule="floor"))
    assert torch.equal(scales, ours.scales) and ours.scales[0, 0] == 0  # both store 2^-127
    assert not torch.equal(codes[0], ours.data[0])
    assert torch.equal(codes[1:], ours.data[1:])


def test_nvfp4_agreement_is_measured_on_matching_layouts():
    """The NVFP4 peer returns our layout; on plain Gaussian float32 data, where the two
    rules rarely part, nearly every byte agrees (the benchmark reports the rest)."""
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    got = agreement(_peer("to_nvfp4"), x)
    assert got["codes_equal"] > 0.99 and got["scales_equal"] > 0.99, got


def test_missing_torchao_or_a_moved_api_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    assert torchao_quantizers().startswith("torchao not available")
    monkeypatch.undo()
    from torchao.prototype.mx_formats.mx_tensor import MXTensor

    def moved(*args, **kwargs):
        raise TypeError("to_mx() got an unexpected keyword argument 'scaling_mode'")

    monkeypatch.setattr(MXTensor, "to_mx", moved)
    why = torchao_quantizers()
    assert isinstance(why, str) and "MXTensor.to_mx (floor) failed on a trial cast (TypeError" in why


def test_agreement_refuses_a_peer_of_another_layout():
    peer = PeerQuantizer("transposed", QuantSpec("mxfp4"), lambda x: (quantize(x.T.contiguous(), QuantSpec("mxfp4")).data, quantize(x, QuantSpec("mxfp4")).scales))
    with pytest.raises(ValueError, match="transposed: codes"):
        agreement(peer, torch.randn(32, 64))
